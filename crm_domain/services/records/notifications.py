"""A user's notifications inside one organization."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ...context import Actor
from ...errors import NotFound
from ...models import Notification
from ...pagination import Ordering, Page, PageRequest, paginate


def list_notifications(
    session: Session, actor: Actor, request: PageRequest, *, unread_only: bool = False
) -> Page[Notification]:
    stmt = select(Notification).where(
        Notification.organization_id == actor.organization_id,
        Notification.user_id == actor.user_id,
    )
    if unread_only:
        stmt = stmt.where(Notification.read_at.is_(None))
    return paginate(session, stmt, request, Ordering("id", Notification.id, Notification.id))


def mark_read(session: Session, actor: Actor, notification_id: int) -> Notification:
    """Idempotent: reading twice keeps the first read time. Others' notifications are 404."""
    item = session.scalar(
        select(Notification)
        .where(
            Notification.id == notification_id,
            Notification.organization_id == actor.organization_id,
            Notification.user_id == actor.user_id,
        )
        .with_for_update()
    )
    if item is None:
        raise NotFound("Notification not found", code="NOTIFICATION_NOT_FOUND")
    if item.read_at is None:
        item.read_at = dt.datetime.now(dt.UTC)
    return item


def mark_all_read(session: Session, actor: Actor) -> int:
    result = session.execute(
        update(Notification)
        .where(
            Notification.organization_id == actor.organization_id,
            Notification.user_id == actor.user_id,
            Notification.read_at.is_(None),
        )
        .values(read_at=dt.datetime.now(dt.UTC))
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
