"""Transactional outbox: events written with the change, delivered by workers.

`record()` adds an event to the caller's transaction. After that transaction commits, the
registered publisher (the API installs one that enqueues a Celery task) is told the new ids;
if publishing fails the event stays pending and the periodic re-dispatch picks it up.
`deliver()` is idempotent: the consumer inserts with the event's unique key."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import event, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from ..enums import ActivityType
from ..models import Activity, Deal, OutboxEvent

log = logging.getLogger(__name__)

TIMELINE_TOPIC = "timeline.activity"
_PENDING_KEY = "crm_outbox_new"

Publisher = Callable[[Sequence[int]], None]
_publisher: Publisher | None = None


def set_publisher(publisher: Publisher | None) -> None:
    """Install the callable that hands committed event ids to the delivery workers."""
    global _publisher
    _publisher = publisher


def record(
    session: Session, organization_id: int, topic: str, payload: dict[str, Any]
) -> OutboxEvent:
    ev = OutboxEvent(organization_id=organization_id, topic=topic, payload=payload)
    session.add(ev)
    session.info.setdefault(_PENDING_KEY, []).append(ev)
    return ev


def record_activity(
    session: Session,
    *,
    organization_id: int,
    deal_id: int,
    author_id: int | None,
    type: ActivityType,
    payload: dict[str, Any],
) -> OutboxEvent:
    return record(
        session,
        organization_id,
        TIMELINE_TOPIC,
        {"deal_id": deal_id, "author_id": author_id, "type": type.value, "payload": payload},
    )


@event.listens_for(Session, "after_commit")
def _publish_after_commit(session: Session) -> None:
    events: list[OutboxEvent] = session.info.pop(_PENDING_KEY, [])
    if not events or _publisher is None:
        return
    ids = [e.id for e in events if e.id is not None]
    try:
        _publisher(ids)
    except Exception:  # the broker may be down: the periodic re-dispatch delivers later
        log.warning("could not publish outbox events %s; left for re-dispatch", ids, exc_info=True)


@event.listens_for(Session, "after_soft_rollback")
def _forget_after_rollback(session: Session, previous_transaction: Any) -> None:
    session.info.pop(_PENDING_KEY, None)


def deliver(session: Session, event_id: int) -> bool:
    """Deliver one event inside the caller's transaction. Returns True if it was delivered now,
    False if it was already delivered, is being delivered by someone else, or does not exist."""
    ev = session.scalar(
        select(OutboxEvent)
        .where(OutboxEvent.id == event_id, OutboxEvent.delivered_at.is_(None))
        .with_for_update(skip_locked=True)
    )
    if ev is None:
        return False
    if ev.topic == TIMELINE_TOPIC:
        _deliver_activity(session, ev)
    else:
        log.error("outbox event %s has unknown topic %r; marking delivered", ev.id, ev.topic)
        ev.last_error = f"unknown topic {ev.topic}"
    ev.attempts += 1
    ev.delivered_at = dt.datetime.now(dt.UTC)
    return True


def _deliver_activity(session: Session, ev: OutboxEvent) -> None:
    data = ev.payload
    deal_exists = session.scalar(
        select(Deal.id).where(
            Deal.id == data["deal_id"], Deal.organization_id == ev.organization_id
        )
    )
    if deal_exists is None:  # the deal was deleted before delivery: nothing to attach to
        ev.last_error = "deal no longer exists"
        return
    session.execute(
        insert(Activity)
        .values(
            organization_id=ev.organization_id,
            deal_id=data["deal_id"],
            author_id=data.get("author_id"),
            type=ActivityType(data["type"]),
            payload=data.get("payload", {}),
            event_key=ev.event_key,
            created_at=ev.created_at,
        )
        .on_conflict_do_nothing(index_elements=[Activity.event_key])
    )


def note_failure(session: Session, event_id: int, error: str) -> None:
    session.execute(
        update(OutboxEvent)
        .where(OutboxEvent.id == event_id)
        .values(attempts=OutboxEvent.attempts + 1, last_error=error[:2000])
    )


def pending_ids(session: Session, *, older_than: dt.timedelta, limit: int = 500) -> list[int]:
    """Undelivered events older than `older_than` (the normal path had its chance)."""
    cutoff = dt.datetime.now(dt.UTC) - older_than
    return list(
        session.scalars(
            select(OutboxEvent.id)
            .where(OutboxEvent.delivered_at.is_(None), OutboxEvent.created_at <= cutoff)
            .order_by(OutboxEvent.id)
            .limit(limit)
        )
    )
