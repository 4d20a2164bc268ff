"""Outbound webhooks (Standard Webhooks): the endpoints and their deliveries as the API
manages them. Endpoints belong to an organization; owners and admins manage them. The signing
secret is `whsec_` + base64 of 32 random bytes, shown once at creation and at each rotation.
A redelivery or a ping asks for the endpoint's sender through the outbox (`webhooks.send`).

The rest of webhooks, one job a module: webhook_fanout (events -> deliveries),
webhook_leases (one sender per endpoint), webhook_attempts (a delivery's state between
attempts) and webhook_policy (when to retry, when to give up on an endpoint)."""

from __future__ import annotations

import base64
import datetime as dt
import secrets
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ... import audit, egress, rules
from ...context import Actor
from ...errors import Conflict, NotFound, ValidationFailed
from ...models import WebhookDelivery, WebhookEndpoint
from ...pagination import Ordering, Page, PageRequest, paginate
from .._common import Precondition, apply_changes, get_in_org
from . import events, outbox
from .webhook_fanout import serialize

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32  # the spec asks for 24 to 64
PREVIOUS_SECRET_GRACE = dt.timedelta(hours=24)
MAX_ENDPOINTS_PER_ORGANIZATION = 20
WEBHOOK_SEND_TOPIC = "webhooks.send"  # {endpoint_id} -> wake that endpoint's sender
PING = "ping"
PENDING, SUCCEEDED, FAILED = "pending", "succeeded", "failed"
DELIVERY_STATUSES = (PENDING, SUCCEEDED, FAILED)
RESPONSE_BODY_LIMIT = 1000  # characters of the receiver's answer kept on the delivery
ERROR_LIMIT = 500

ENDPOINT_ORDERING = Ordering("id", WebhookEndpoint.id, WebhookEndpoint.id, descending=True)
DELIVERY_ORDERING = Ordering("id", WebhookDelivery.id, WebhookDelivery.id, descending=True)


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def normalize_event_types(event_types: Sequence[str] | None) -> list[str]:
    """Known types, each once, in the catalogue's order; empty means every type."""
    wanted = set(event_types or ())
    unknown = sorted(wanted - set(events.EVENT_TYPES))
    if unknown:
        raise ValidationFailed(
            "Unknown event types",
            code="WEBHOOK_EVENT_TYPE_UNKNOWN",
            details={"unknown": unknown, "allowed": list(events.EVENT_TYPES)},
        )
    return [t for t in events.EVENT_TYPES if t in wanted]


# --- endpoints ---------------------------------------------------------------------------------


def list_endpoints(session: Session, actor: Actor, request: PageRequest) -> Page[WebhookEndpoint]:
    rules.ensure_can_manage_webhooks(actor.role)
    stmt = select(WebhookEndpoint).where(WebhookEndpoint.organization_id == actor.organization_id)
    return paginate(session, stmt, request, ENDPOINT_ORDERING)


def get_endpoint(
    session: Session, actor: Actor, endpoint_id: int, *, for_update: bool = False
) -> WebhookEndpoint:
    """404 (another organization's id, as everywhere), then 403 below owner/admin."""
    endpoint = get_in_org(
        session,
        WebhookEndpoint,
        actor.organization_id,
        endpoint_id,
        name="webhook",
        for_update=for_update,
    )
    rules.ensure_can_manage_webhooks(actor.role)
    return endpoint


def create_endpoint(
    session: Session,
    actor: Actor,
    *,
    url: str,
    event_types: Sequence[str] | None = None,
    description: str | None = None,
    enabled: bool = True,
    allow_private: bool = False,
) -> WebhookEndpoint:
    """A new endpoint with a fresh secret (the caller shows it once)."""
    rules.ensure_can_manage_webhooks(actor.role)
    egress.check_url(url, allow_private=allow_private)
    types = normalize_event_types(event_types)
    count = session.scalar(
        select(func.count()).where(WebhookEndpoint.organization_id == actor.organization_id)
    )
    if (count or 0) >= MAX_ENDPOINTS_PER_ORGANIZATION:
        raise Conflict(
            f"An organization has at most {MAX_ENDPOINTS_PER_ORGANIZATION} webhook endpoints",
            code="WEBHOOK_LIMIT_REACHED",
        )
    endpoint = WebhookEndpoint(
        organization_id=actor.organization_id,
        url=url,
        event_types=types,
        description=description,
        enabled=enabled,
        secret=new_secret(),
    )
    if not enabled:
        endpoint.disabled_reason = "Disabled through the API"
        endpoint.disabled_at = dt.datetime.now(dt.UTC)
    session.add(endpoint)
    session.flush()
    audit_endpoint(
        session, endpoint, "created", {f: (None, getattr(endpoint, f)) for f in AUDITED_FIELDS}
    )
    return endpoint


# What an endpoint's audit entries show (never its secrets).
AUDITED_FIELDS = ("url", "description", "event_types", "enabled")


def audit_endpoint(
    session: Session, endpoint: WebhookEndpoint, what: str, changes: audit.Changes
) -> None:
    audit.record(
        session,
        endpoint.organization_id,
        f"webhook_endpoint.{what}",
        "webhook_endpoint",
        endpoint.id,
        changes,
    )


def update_endpoint(
    session: Session,
    actor: Actor,
    endpoint_id: int,
    changes: dict[str, Any],
    precondition: Precondition | None = None,
    *,
    allow_private: bool = False,
) -> WebhookEndpoint:
    endpoint = get_endpoint(session, actor, endpoint_id, for_update=True)
    if precondition:
        precondition(endpoint)
    changes = dict(changes)
    if "url" in changes and changes["url"] != endpoint.url:
        egress.check_url(changes["url"], allow_private=allow_private)
    if "event_types" in changes:
        changes["event_types"] = normalize_event_types(changes["event_types"])
    changed = apply_changes(endpoint, changes)
    if "enabled" in changed:
        set_enabled(endpoint, endpoint.enabled, "Disabled through the API")
    if changed:
        session.flush()
        audit_endpoint(session, endpoint, "updated", changed)
    return endpoint


def set_enabled(endpoint: WebhookEndpoint, enabled: bool, reason: str) -> None:
    """Disabling keeps the reason; enabling again starts a clean failure record."""
    endpoint.enabled = enabled
    endpoint.failing_since = None
    endpoint.failed_events = 0
    if enabled:
        endpoint.disabled_reason = None
        endpoint.disabled_at = None
    else:
        endpoint.disabled_reason = reason
        endpoint.disabled_at = dt.datetime.now(dt.UTC)


def delete_endpoint(
    session: Session, actor: Actor, endpoint_id: int, precondition: Precondition | None = None
) -> None:
    """The endpoint and its deliveries (pending ones are never sent)."""
    endpoint = get_endpoint(session, actor, endpoint_id, for_update=True)
    if precondition:
        precondition(endpoint)
    audit_endpoint(
        session, endpoint, "deleted", {f: (getattr(endpoint, f), None) for f in AUDITED_FIELDS}
    )
    session.delete(endpoint)
    session.flush()


def rotate_secret(session: Session, actor: Actor, endpoint_id: int) -> WebhookEndpoint:
    """A new secret; the old one goes on signing too (a second signature) for 24 hours, so
    receivers can switch without rejecting deliveries in flight."""
    endpoint = get_endpoint(session, actor, endpoint_id, for_update=True)
    endpoint.previous_secret = endpoint.secret
    endpoint.previous_secret_expires_at = dt.datetime.now(dt.UTC) + PREVIOUS_SECRET_GRACE
    endpoint.secret = new_secret()
    session.flush()
    audit_endpoint(session, endpoint, "secret_rotated", {})
    return endpoint


# --- deliveries seen through the API --------------------------------------------------------


def list_deliveries(
    session: Session,
    actor: Actor,
    endpoint_id: int,
    request: PageRequest,
    *,
    status: str | None = None,
) -> Page[WebhookDelivery]:
    """Newest first, optionally only one status."""
    endpoint = get_endpoint(session, actor, endpoint_id)
    stmt = select(WebhookDelivery).where(
        WebhookDelivery.endpoint_id == endpoint.id,
        WebhookDelivery.organization_id == actor.organization_id,
    )
    if status is not None:
        stmt = stmt.where(WebhookDelivery.status == status)
    return paginate(session, stmt, request, DELIVERY_ORDERING)


def _ensure_enabled(endpoint: WebhookEndpoint) -> None:
    if not endpoint.enabled:
        raise Conflict(
            "The endpoint is disabled; enable it first",
            code="WEBHOOK_ENDPOINT_DISABLED",
            details={"disabled_reason": endpoint.disabled_reason},
        )


def redeliver(
    session: Session, actor: Actor, endpoint_id: int, delivery_id: int
) -> WebhookDelivery:
    """Send a delivery again now (same `webhook-id`, same body), with a fresh set of
    attempts: `attempts` starts again from 0. Check order: 404, 403, 409 (disabled)."""
    found = session.execute(
        select(WebhookDelivery, WebhookEndpoint)
        .join(
            WebhookEndpoint,
            (WebhookEndpoint.id == WebhookDelivery.endpoint_id)
            & (WebhookEndpoint.organization_id == WebhookDelivery.organization_id),
        )
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.endpoint_id == endpoint_id,
            WebhookDelivery.organization_id == actor.organization_id,
        )
        .with_for_update(of=WebhookDelivery)
    ).first()
    if found is None:
        raise NotFound("Delivery not found", code="WEBHOOK_DELIVERY_NOT_FOUND")
    delivery, endpoint = found
    rules.ensure_can_manage_webhooks(actor.role)
    _ensure_enabled(endpoint)
    delivery.status = PENDING
    delivery.attempts = 0
    delivery.next_attempt_at = dt.datetime.now(dt.UTC)
    delivery.delivered_at = None
    session.flush()
    _wake_sender(session, endpoint)
    return delivery


def send_ping(session: Session, actor: Actor, endpoint_id: int) -> WebhookDelivery:
    """Queue a `ping` event for this endpoint alone (whatever its event filter)."""
    endpoint = get_endpoint(session, actor, endpoint_id)
    _ensure_enabled(endpoint)
    event_id = uuid.uuid4()
    body = {
        "type": PING,
        "timestamp": dt.datetime.now(dt.UTC).isoformat(),
        "organization_id": endpoint.organization_id,
        "data": {"endpoint_id": endpoint.id},
    }
    delivery = WebhookDelivery(
        organization_id=endpoint.organization_id,
        endpoint_id=endpoint.id,
        event_id=event_id,
        event_type=PING,
        body=serialize(body),
        status=PENDING,
    )
    session.add(delivery)
    session.flush()
    _wake_sender(session, endpoint)
    return delivery


def _wake_sender(session: Session, endpoint: WebhookEndpoint) -> None:
    """Through the outbox, so the sender is asked only once this change is committed."""
    outbox.record(
        session, endpoint.organization_id, WEBHOOK_SEND_TOPIC, {"endpoint_id": endpoint.id}
    )
