"""Outbound webhooks (Standard Webhooks): endpoints, the fan-out of events to deliveries, and
the state of each delivery between attempts.

- Endpoints belong to an organization; owners and admins manage them. The signing secret is
  `whsec_` + base64 of 32 random bytes, shown once at creation and at each rotation.
- Fan-out (`fan_out`, an outbox handler): one query per outbox batch finds the enabled
  endpoints of the batch's organizations; every (endpoint, event) pair that the endpoint's
  filter accepts becomes a delivery row, inserted in one statement with ON CONFLICT DO
  NOTHING on (endpoint_id, event_id). An organization without endpoints costs that query only.
- Sending is done by crm_worker.webhook_sender, one endpoint at a time per sender (a lease on
  the endpoint row): `claim_next` takes the endpoint's oldest due delivery (FOR UPDATE SKIP
  LOCKED), counts the attempt and pushes its due time out by the lease, so a sender killed
  mid-request leaves it due again once the lease ends; `record_result` then stores the
  outcome and the next due time (`RetryPolicy`), or `succeeded` / `failed`.
- An endpoint is disabled on its own (with the reason in `disabled_reason`) when it answers
  410 Gone, has failed without a single success for `disable_after`, or when
  `disable_after_failed_events` deliveries in a row ran out of attempts."""

from __future__ import annotations

import base64
import datetime as dt
import json
import random
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import exists, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from ... import egress, representation, rules
from ...context import Actor
from ...errors import Conflict, NotFound, ValidationFailed
from ...models import OutboxEvent, WebhookDelivery, WebhookEndpoint
from ...pagination import Ordering, Page, PageRequest, paginate
from .._common import Precondition, apply_changes, get_in_org
from . import events, outbox

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
    return endpoint


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
        _set_enabled(endpoint, endpoint.enabled, "Disabled through the API")
    if changed:
        session.flush()
    return endpoint


def _set_enabled(endpoint: WebhookEndpoint, enabled: bool, reason: str) -> None:
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


# --- fan-out (outbox handler) ------------------------------------------------------------------


def serialize(body: dict[str, Any]) -> str:
    """The text that is signed and sent, byte for byte, on every attempt."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def webhook_body(event: OutboxEvent) -> str:
    return serialize(
        {
            "type": event.topic,
            "timestamp": event.created_at.astimezone(dt.UTC).isoformat(),
            "organization_id": event.organization_id,
            "data": _in_api_order(event.topic, event.payload),
        }
    )


def _in_api_order(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    """The resource's fields in the API's order (JSONB, where the outbox keeps the payload,
    reorders keys), then `changes`."""
    names = representation.FIELDS_BY_KIND.get(event_type.split(".", 1)[0], ())
    ordered = {name: data[name] for name in names if name in data}
    return {**ordered, **{k: v for k, v in data.items() if k not in ordered}}


def subscribed_organizations(session: Session, org_ids: set[int], event_type: str) -> set[int]:
    """Which of `org_ids` have an enabled endpoint that wants `event_type` (one query)."""
    if not org_ids:
        return set()
    return set(
        session.scalars(
            select(WebhookEndpoint.organization_id)
            .where(
                WebhookEndpoint.organization_id.in_(sorted(org_ids)),
                WebhookEndpoint.enabled.is_(True),
                (func.cardinality(WebhookEndpoint.event_types) == 0)
                | WebhookEndpoint.event_types.contains([event_type]),
            )
            .distinct()
        )
    )


def fan_out_endpoints(session: Session, batch: Sequence[OutboxEvent]) -> set[int]:
    """Write a delivery for every (enabled endpoint, event it subscribes to) of the batch;
    returns the endpoints that got deliveries. One SELECT, and one INSERT if anything
    matched."""
    org_ids = {ev.organization_id for ev in batch}
    if not org_ids:
        return set()
    endpoints = session.execute(
        select(
            WebhookEndpoint.id, WebhookEndpoint.organization_id, WebhookEndpoint.event_types
        ).where(
            WebhookEndpoint.organization_id.in_(sorted(org_ids)),
            WebhookEndpoint.enabled.is_(True),
        )
    ).all()
    if not endpoints:
        return set()
    by_org: dict[int, list[tuple[int, frozenset[str]]]] = {}
    for endpoint_id, org_id, types in endpoints:
        by_org.setdefault(org_id, []).append((endpoint_id, frozenset(types)))
    rows: list[dict[str, Any]] = []
    for ev in batch:
        targets = [
            endpoint_id
            for endpoint_id, types in by_org.get(ev.organization_id, ())
            if not types or ev.topic in types
        ]
        if not targets:
            continue
        body = webhook_body(ev)
        rows.extend(
            {
                "organization_id": ev.organization_id,
                "endpoint_id": endpoint_id,
                "event_id": ev.event_key,
                "event_type": ev.topic,
                "body": body,
            }
            for endpoint_id in targets
        )
    if rows:
        session.execute(
            insert(WebhookDelivery).on_conflict_do_nothing(
                index_elements=[WebhookDelivery.endpoint_id, WebhookDelivery.event_id]
            ),
            rows,
        )
    return {row["endpoint_id"] for row in rows}


def fan_out(session: Session, batch: Sequence[OutboxEvent]) -> None:
    fan_out_endpoints(session, batch)


# --- sending: leases, claims, outcomes -------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """When to try again and when to give up on an endpoint."""

    schedule: tuple[float, ...]  # seconds before retry 1, 2, ...
    disable_after: dt.timedelta = dt.timedelta(days=5)
    disable_after_failed_events: int = 50  # 0: never for this reason
    jitter: float = 0.2  # each delay is scaled by a random factor in [1 - jitter, 1 + jitter]

    @property
    def max_attempts(self) -> int:
        return 1 + len(self.schedule)

    def delay(self, attempts_made: int, retry_after: float | None = None) -> dt.timedelta:
        """The wait before the next attempt after `attempts_made` (>= 1) attempts. A
        receiver's Retry-After is honored up to the schedule's longest step."""
        base = self.schedule[min(attempts_made, len(self.schedule)) - 1]
        seconds = base * random.uniform(1 - self.jitter, 1 + self.jitter)
        if retry_after is not None:
            seconds = max(seconds, min(retry_after, max(self.schedule)))
        return dt.timedelta(seconds=seconds)


@dataclass(frozen=True)
class Attempt:
    """One claimed delivery, with what the sender needs (read in the claiming transaction)."""

    delivery_id: int
    endpoint_id: int
    url: str
    secrets: tuple[str, ...]  # current secret first; the previous one during its grace period
    event_id: str
    event_type: str
    body: str
    number: int  # 1 for the first attempt


@dataclass(frozen=True)
class AttemptResult:
    status_code: int | None = None
    response_body: str | None = None
    error: str | None = None  # no answer (timeout, refused, blocked) or a non-2xx reason
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.status_code is not None and self.status_code < 300


def _lease_until(seconds: float) -> Any:
    return func.now() + dt.timedelta(seconds=seconds)


def acquire(session: Session, endpoint_id: int, lease_seconds: float) -> bool:
    """Become the endpoint's only sender for `lease_seconds` (False if another holds it or
    the endpoint is disabled or gone)."""
    got = session.scalar(
        update(WebhookEndpoint)
        .where(
            WebhookEndpoint.id == endpoint_id,
            WebhookEndpoint.enabled.is_(True),
            or_(
                WebhookEndpoint.sender_lease_until.is_(None),
                WebhookEndpoint.sender_lease_until < func.now(),
            ),
        )
        .values(
            sender_lease_until=_lease_until(lease_seconds),
            updated_at=WebhookEndpoint.updated_at,  # bookkeeping, not a change of the endpoint
        )
        .returning(WebhookEndpoint.id)
    )
    return got is not None


def release(session: Session, endpoint_id: int) -> None:
    session.execute(
        update(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id)
        .values(sender_lease_until=None, updated_at=WebhookEndpoint.updated_at)
    )


def claim_next(session: Session, endpoint_id: int, lease_seconds: float) -> Attempt | None:
    """Claim the endpoint's oldest due delivery (if the endpoint is still enabled): count the
    attempt, and make it due again after the lease in case this sender dies. Renews the
    endpoint lease."""
    row = session.execute(
        select(WebhookDelivery, WebhookEndpoint)
        .join(
            WebhookEndpoint,
            (WebhookEndpoint.id == WebhookDelivery.endpoint_id)
            & (WebhookEndpoint.organization_id == WebhookDelivery.organization_id),
        )
        .where(
            WebhookDelivery.endpoint_id == endpoint_id,
            WebhookDelivery.status == PENDING,
            WebhookDelivery.next_attempt_at <= func.now(),
            WebhookEndpoint.enabled.is_(True),
        )
        .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
        .limit(1)
        .with_for_update(of=WebhookDelivery, skip_locked=True)
    ).first()
    if row is None:
        return None
    delivery, endpoint = row
    delivery.attempts += 1
    delivery.last_attempt_at = func.now()
    delivery.next_attempt_at = _lease_until(lease_seconds)
    session.execute(
        update(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id)
        .values(
            sender_lease_until=_lease_until(lease_seconds), updated_at=WebhookEndpoint.updated_at
        )
    )
    keys: tuple[str, ...] = (endpoint.secret,)
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_secret and expires and expires > dt.datetime.now(dt.UTC):
        keys += (endpoint.previous_secret,)
    session.flush()
    return Attempt(
        delivery_id=delivery.id,
        endpoint_id=endpoint.id,
        url=endpoint.url,
        secrets=keys,
        event_id=str(delivery.event_id),
        event_type=delivery.event_type,
        body=delivery.body,
        number=delivery.attempts,
    )


def record_result(
    session: Session,
    attempt: Attempt,
    result: AttemptResult,
    policy: RetryPolicy,
    *,
    now: dt.datetime | None = None,
) -> WebhookDelivery | None:
    """Store an attempt's outcome; schedule the next one or close the delivery; keep the
    endpoint's failure record and disable it when it has failed for too long."""
    now = now or dt.datetime.now(dt.UTC)
    delivery = session.scalar(
        select(WebhookDelivery).where(WebhookDelivery.id == attempt.delivery_id).with_for_update()
    )
    if delivery is None or delivery.status != PENDING:
        return delivery  # the endpoint was deleted, or the delivery settled meanwhile
    endpoint = session.scalar(
        select(WebhookEndpoint).where(WebhookEndpoint.id == delivery.endpoint_id).with_for_update()
    )
    assert endpoint is not None  # deliveries go with their endpoint
    delivery.last_status_code = result.status_code
    delivery.last_response_body = _clip(result.response_body, RESPONSE_BODY_LIMIT)
    delivery.last_error = _clip(result.error, ERROR_LIMIT)
    if result.ok:
        delivery.status = SUCCEEDED
        delivery.delivered_at = now
        delivery.next_attempt_at = None
        if endpoint.failing_since is not None or endpoint.failed_events:
            endpoint.failing_since = None
            endpoint.failed_events = 0
        return delivery
    if delivery.attempts >= policy.max_attempts:
        delivery.status = FAILED
        delivery.next_attempt_at = None
        endpoint.failed_events += 1
    else:
        delivery.next_attempt_at = now + policy.delay(delivery.attempts, result.retry_after)
    if endpoint.failing_since is None:
        endpoint.failing_since = now
    reason = _disable_reason(endpoint, result, policy, now)
    if reason is not None and endpoint.enabled:
        _set_enabled(endpoint, False, reason)
    return delivery


def _disable_reason(
    endpoint: WebhookEndpoint, result: AttemptResult, policy: RetryPolicy, now: dt.datetime
) -> str | None:
    last = result.error or f"HTTP {result.status_code}"
    if result.status_code == 410:
        return "Disabled automatically: the receiver answered 410 Gone"
    since = endpoint.failing_since
    if since is not None and now - since >= policy.disable_after:
        return (
            f"Disabled automatically: every delivery failed since {since.isoformat()} "
            f"({policy.disable_after.total_seconds() / 3600:g} hours or more); last error: {last}"
        )
    limit = policy.disable_after_failed_events
    if limit and endpoint.failed_events >= limit:
        return (
            f"Disabled automatically: {endpoint.failed_events} deliveries in a row failed "
            f"every attempt; last error: {last}"
        )
    return None


def _clip(text: str | None, limit: int) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + "…"


def due_endpoints(session: Session, limit: int = 1000) -> list[int]:
    """Enabled endpoints with a due delivery and no sender holding them (beat's sweep)."""
    due = exists().where(
        WebhookDelivery.endpoint_id == WebhookEndpoint.id,
        WebhookDelivery.status == PENDING,
        WebhookDelivery.next_attempt_at <= func.now(),
    )
    return list(
        session.scalars(
            select(WebhookEndpoint.id)
            .where(
                WebhookEndpoint.enabled.is_(True),
                or_(
                    WebhookEndpoint.sender_lease_until.is_(None),
                    WebhookEndpoint.sender_lease_until < func.now(),
                ),
                due,
            )
            .order_by(WebhookEndpoint.id)
            .limit(limit)
        )
    )


def has_due(session: Session, endpoint_id: int) -> bool:
    return bool(
        session.scalar(
            select(
                exists().where(
                    WebhookDelivery.endpoint_id == endpoint_id,
                    WebhookDelivery.status == PENDING,
                    WebhookDelivery.next_attempt_at <= func.now(),
                )
            )
        )
    )
