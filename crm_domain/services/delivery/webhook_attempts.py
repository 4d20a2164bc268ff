"""The state of a webhook delivery between attempts, as the sender (crm_worker.webhook_sender)
moves it: `claim_next` takes the endpoint's oldest due delivery (FOR UPDATE SKIP LOCKED),
counts the attempt and pushes its due time out by the lease, so a sender killed mid-request
leaves it due again once the lease ends; `record_result` then stores the outcome and the next
due time (webhook_policy), or `succeeded` / `failed`, and keeps the endpoint's failure
record, disabling it on its own (with the reason in `disabled_reason`) when it answers 410
Gone, has failed without a single success for `disable_after`, or when
`disable_after_failed_events` deliveries in a row ran out of attempts."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import exists, func, select, update
from sqlalchemy.orm import Session

from ...models import WebhookDelivery, WebhookEndpoint
from .webhook_leases import lease_until
from .webhook_policy import RetryPolicy
from .webhooks import (
    ERROR_LIMIT,
    FAILED,
    PENDING,
    RESPONSE_BODY_LIMIT,
    SUCCEEDED,
    audit_endpoint,
    set_enabled,
)


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
    delivery.next_attempt_at = lease_until(lease_seconds)
    session.execute(
        update(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id)
        .values(
            sender_lease_until=lease_until(lease_seconds), updated_at=WebhookEndpoint.updated_at
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
        set_enabled(endpoint, False, reason)
        disabled = {"enabled": (True, False), "disabled_reason": (None, reason)}
        audit_endpoint(session, endpoint, "disabled", disabled)
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
