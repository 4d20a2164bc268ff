"""One sender per endpoint: a sender holds a lease on the endpoint row (`acquire`, renewed
by each claim, `release`) while it sends the endpoint's deliveries in order; a sender killed
mid-run loses it when the lease ends. Beat's sweep asks for a sender for every endpoint with
a due delivery and no lease (`due_endpoints`)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import exists, func, or_, select, update
from sqlalchemy.orm import Session

from ...models import WebhookDelivery, WebhookEndpoint
from .webhooks import PENDING


def lease_until(seconds: float) -> Any:
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
            sender_lease_until=lease_until(lease_seconds),
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
