"""Transactional outbox: events written with the change, delivered by workers.

`record()` adds an event to the caller's transaction. After that transaction commits, the
session's publisher (see `Database.publisher`; the API's enqueues a Celery task) is told the
new ids; if publishing fails the event stays pending and the periodic re-dispatch picks it up.
`deliver()` is idempotent: the consumer inserts with the event's unique key."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from ..enums import ActivityType
from ..models import Activity, Deal, OutboxEvent

log = logging.getLogger(__name__)

TIMELINE_TOPIC = "timeline.activity"  # {deal_id, author_id, type, payload} -> an activity
DEAL_CHANGED_TOPIC = "deal.changed"  # {deal_id} -> refresh the organization's analytics
REPORT_TOPIC = "report.requested"  # {report_id} -> build the report
_PENDING_KEY = "crm_outbox_new"

# A handler applies one event inside the delivering transaction.
Handler = Callable[[Session, OutboxEvent], None]


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
    publisher = session.info.get("outbox_publisher")
    if not events or publisher is None:
        return
    ids = [e.id for e in events if e.id is not None]
    try:
        publisher(ids)
    except Exception:  # the broker may be down: the periodic re-dispatch delivers later
        log.warning("could not publish outbox events %s; left for re-dispatch", ids, exc_info=True)


@event.listens_for(Session, "after_soft_rollback")
def _forget_after_rollback(session: Session, previous_transaction: Any) -> None:
    session.info.pop(_PENDING_KEY, None)


def record_deal_changed(session: Session, *, organization_id: int, deal_id: int) -> OutboxEvent:
    return record(session, organization_id, DEAL_CHANGED_TOPIC, {"deal_id": deal_id})


def deliver(
    session: Session, event_id: int, handlers: Mapping[str, Handler] | None = None
) -> OutboxEvent | None:
    """Deliver one event inside the caller's transaction and mark it delivered.

    Returns the event if it was delivered now; None if it was already delivered, is being
    delivered by someone else, or does not exist. `handlers` add to (or override) the
    database-only handlers of this package, by topic."""
    ev = session.scalar(
        select(OutboxEvent)
        .where(OutboxEvent.id == event_id, OutboxEvent.delivered_at.is_(None))
        .with_for_update(skip_locked=True)
    )
    if ev is None:
        return None
    handler = {**_database_handlers(), **(handlers or {})}.get(ev.topic)
    if handler is None:
        log.error("outbox event %s has unknown topic %r; marking delivered", ev.id, ev.topic)
        ev.last_error = f"unknown topic {ev.topic}"
    else:
        handler(session, ev)
    ev.attempts += 1
    ev.delivered_at = dt.datetime.now(dt.UTC)
    return ev


def _database_handlers() -> dict[str, Handler]:
    from . import reports

    return {
        TIMELINE_TOPIC: apply_activity,
        DEAL_CHANGED_TOPIC: lambda _session, _ev: None,  # nothing to write; see crm_worker
        REPORT_TOPIC: lambda session, ev: reports.build(session, ev.payload["report_id"]),
    }


def apply_activity(session: Session, ev: OutboxEvent) -> None:
    """Write the timeline entry; the event key makes a second delivery write nothing."""
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
