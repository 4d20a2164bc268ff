"""Transactional outbox: events written with the change, delivered by workers in batches.

`record()` queues an event on the caller's session; right before that transaction commits,
every queued event is inserted in one statement with the transaction's audit entries
(crm_domain.commit_inserts), so the events exist exactly when the change does. A savepoint
(`begin_nested`) that is rolled back takes the events queued inside it with it, and only
those. After the commit the session's publisher (see `Database.publisher`)
is told that there is something to deliver: a wake-up, not a message per event.

Delivery claims pending events in batches (`FOR UPDATE SKIP LOCKED`, so concurrent
deliverers share the work), applies each topic's handler to all of its events at once and
marks the batch delivered, all in one transaction. It is idempotent twice over: only
undelivered events are claimed, and every consumer writes with the event's unique key
(`ON CONFLICT DO NOTHING`), so a batch delivered again writes nothing new.

One event stream, several consumers: a topic may have several handlers, and a handler that
serves several topics is called once per batch with all of their events (the webhook fan-out
looks the batch's endpoints up in one query whatever the mix of event types). The outbox
names none of them: each consumer registers its handler for its topics in a `Registry`, at
the process's composition root (crm_worker.consumers.install, run by the worker's start-up
and the app factory), so a new consumer is one `on()` call there and no change here.

Each event keeps the request id of the request that recorded it, and a `DeliveryObserver`
hears of every event once its batch committed (one log line per event with that request
id; crm_worker counts them too), so one request can be followed from the API's logs to the
worker line that applied its event."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import event, func, select, update
from sqlalchemy.orm import Session

from ... import commit_inserts, request_id
from ...models import OutboxEvent

if TYPE_CHECKING:
    from ...db import Database

log = logging.getLogger(__name__)

BATCH_SIZE = 200
# An event whose delivery failed this often is left for an operator (see `stuck_count`)
# instead of being retried with every batch.
MAX_ATTEMPTS = 10

# A batch handler applies its events (of one or more topics) inside the delivering transaction.
BatchHandler = Callable[[Session, Sequence[OutboxEvent]], None]


class Registry:
    """Which handlers consume which topics, in the order they registered. A topic may be
    known with no handler here (`declare`): its consumers run in a worker (they need Celery
    or Redis) and join the registry of each delivery run (crm_worker.dispatch.Dispatcher)."""

    def __init__(self) -> None:
        self._handlers: dict[str, list[BatchHandler]] = {}

    def on(self, topics: str | Iterable[str], handler: BatchHandler) -> None:
        """`handler` consumes `topics` (registering the same handler again changes nothing)."""
        for topic in (topics,) if isinstance(topics, str) else topics:
            handlers = self._handlers.setdefault(topic, [])
            if handler not in handlers:
                handlers.append(handler)

    def declare(self, topics: str | Iterable[str]) -> None:
        """Topics with nothing to do in the database: delivered without an "unknown topic"."""
        for topic in (topics,) if isinstance(topics, str) else topics:
            self._handlers.setdefault(topic, [])

    def replace(self, old: BatchHandler, new: BatchHandler) -> None:
        """`new` consumes every topic `old` did, in its place (a worker doing that work
        another way: a report built on the bulk queue instead of in the delivery)."""
        found = False
        for handlers in self._handlers.values():
            if old in handlers:
                handlers[handlers.index(old)] = new
                found = True
        if not found:
            raise LookupError(f"{old!r} is not registered")

    def copy(self) -> Registry:
        registry = Registry()
        registry._handlers = {topic: list(handlers) for topic, handlers in self._handlers.items()}
        return registry

    def handlers(self, topic: str) -> Sequence[BatchHandler] | None:
        """The topic's handlers, or None for a topic nobody registered or declared."""
        return self._handlers.get(topic)


# The process's consumers, registered at its start-up (crm_worker.consumers.install).
registry = Registry()


def record(session: Session, organization_id: int, topic: str, payload: dict[str, Any]) -> None:
    """Queue an event; it is inserted with the transaction's other changes at commit."""
    row = {
        "event_key": uuid.uuid4(),  # here: a multi-row VALUES does not run column defaults
        "organization_id": organization_id,
        "topic": topic,
        "payload": payload,
        "request_id": request_id.current(),
    }
    commit_inserts.add(session, OutboxEvent, row)


def queued(session: Session) -> int:
    """How many events the session's transaction has recorded so far (not yet inserted)."""
    return commit_inserts.queued(session, OutboxEvent)


@event.listens_for(Session, "after_commit")
def _publish_after_commit(session: Session) -> None:
    count = commit_inserts.committed(session).get(OutboxEvent.__tablename__, 0)
    publisher = session.info.get("outbox_publisher")
    if not count or publisher is None:
        return
    try:
        publisher()
    except Exception:  # the broker may be down: the periodic re-dispatch delivers later
        log.warning("could not announce %d outbox events; left for re-dispatch", count)


# --- delivery -----------------------------------------------------------------------------


class DeliveryObserver:
    """Told about events after the fact: `delivered` once their batch committed, `failed`
    once a failed attempt was recorded. This one logs a line per event with the request id
    of the request that recorded it; crm_worker's also counts them."""

    def delivered(self, events: Sequence[OutboxEvent]) -> None:
        for ev in events:
            log.info(
                "outbox event %s delivered (%s)",
                ev.id,
                ev.topic,
                extra=_log_fields(ev.id, ev.topic, ev.organization_id, ev.request_id),
            )

    def failed(
        self, event_id: int, topic: str | None, request_id: str | None, error: BaseException
    ) -> None:
        log.error(
            "outbox event %s failed (%s)",
            event_id,
            topic,
            exc_info=error,
            extra=_log_fields(event_id, topic, None, request_id),
        )


def _log_fields(
    event_id: int, topic: str | None, organization_id: int | None, request_id: str | None
) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "topic": topic,
        "organization_id": organization_id,
        "request_id": request_id,
    }


def claim(
    session: Session, limit: int = BATCH_SIZE, *, skip: Collection[int] = ()
) -> list[OutboxEvent]:
    """Lock up to `limit` undelivered events, oldest first, skipping those another
    deliverer holds, those that failed MAX_ATTEMPTS times and those in `skip`."""
    stmt = select(OutboxEvent).where(
        OutboxEvent.delivered_at.is_(None), OutboxEvent.attempts < MAX_ATTEMPTS
    )
    if skip:
        stmt = stmt.where(OutboxEvent.id.not_in(sorted(skip)))
    return list(
        session.scalars(
            stmt.order_by(OutboxEvent.id).limit(limit).with_for_update(skip_locked=True)
        )
    )


def apply(
    session: Session,
    events: Sequence[OutboxEvent],
    handlers: Registry | None = None,
) -> None:
    """Apply and mark delivered `events` (already locked by `claim`) in the caller's
    transaction, with the handlers of `handlers` (the process's `registry` unless given).
    Each distinct handler is called once, with all the events of the topics it serves, in
    claim order."""
    table = registry if handlers is None else handlers
    calls: dict[BatchHandler, list[OutboxEvent]] = {}
    unknown: dict[str, int] = {}
    for ev in events:
        entry = table.handlers(ev.topic)
        if entry is None:
            unknown[ev.topic] = unknown.get(ev.topic, 0) + 1
            ev.last_error = f"unknown topic {ev.topic}"
            continue
        for handler in entry:
            calls.setdefault(handler, []).append(ev)
    for topic, count in unknown.items():
        log.error("outbox topic %r has no handler; marking %d events", topic, count)
    for handler, group in calls.items():
        handler(session, group)
    now = dt.datetime.now(dt.UTC)
    for ev in events:
        ev.attempts += 1
        ev.delivered_at = now


def deliver_pending(
    db: Database,
    handlers: Registry | None = None,
    *,
    batch_size: int = BATCH_SIZE,
    max_batches: int = 50,
    transient: tuple[type[BaseException], ...] = (),
    observer: DeliveryObserver | None = None,
) -> int:
    """Deliver undelivered events batch by batch until none is left (or `max_batches`);
    returns how many were delivered. A batch that fails is retried event by event, so one
    bad event cannot hold back the others; the bad one keeps its error and attempt count
    (parked after MAX_ATTEMPTS), and the next batches of this call leave it out.
    `handlers`: the process's `registry` unless given (a worker's run adds its own).
    `transient` errors (a database or Redis outage) are raised instead: they are nobody's
    fault and cost no attempt; the caller retries later. Events that handlers record (a
    timeline entry's `activity.created`, a built report's `report.ready`) are delivered by
    the next round of the same call."""
    observer = observer or DeliveryObserver()
    delivered = 0
    failed: set[int] = set()  # failed during this call: not claimed again by it
    for _ in range(max_batches):
        more = False
        try:
            with db.transaction() as session:
                batch = claim(session, batch_size, skip=failed)
                apply(session, batch, handlers)
                more = len(batch) == batch_size or bool(queued(session))
            delivered += len(batch)
            observer.delivered(batch)  # after the commit: only what really was delivered
        except transient:
            raise
        except Exception:
            log.warning("outbox batch failed; delivering its events one by one", exc_info=True)
            done, bad = _deliver_one_by_one(db, handlers, batch_size, transient, observer, failed)
            delivered += done
            failed |= bad
            # Go on with the events behind them (and what they recorded) unless none could
            # be delivered: then the fault is not one event's, and the next drain tries again.
            more = done > 0
        if not more:
            break
    return delivered


def _deliver_one_by_one(
    db: Database,
    handlers: Registry | None,
    limit: int,
    transient: tuple[type[BaseException], ...],
    observer: DeliveryObserver,
    skip: Collection[int],
) -> tuple[int, set[int]]:
    """Deliver the next `limit` events one per transaction; returns how many were delivered
    and the ids of those that failed (each failure costs its event an attempt)."""
    with db.transaction() as session:
        ids = [ev.id for ev in claim(session, limit, skip=skip)]
    delivered = 0
    failed: set[int] = set()
    for event_id in ids:
        try:
            with db.transaction() as session:
                ev = session.scalar(
                    select(OutboxEvent)
                    .where(OutboxEvent.id == event_id, OutboxEvent.delivered_at.is_(None))
                    .with_for_update(skip_locked=True)
                )
                if ev is not None:
                    apply(session, [ev], handlers)
            if ev is not None:
                delivered += 1
                observer.delivered([ev])
        except transient:
            raise
        except Exception as exc:
            failed.add(event_id)
            with db.transaction() as session:
                row = session.execute(
                    update(OutboxEvent)
                    .where(OutboxEvent.id == event_id)
                    .values(attempts=OutboxEvent.attempts + 1, last_error=repr(exc)[:1000])
                    .returning(OutboxEvent.topic, OutboxEvent.request_id, OutboxEvent.attempts)
                ).first()
            topic, rid, attempts = row if row is not None else (None, None, 0)
            observer.failed(event_id, topic, rid, exc)
            if attempts >= MAX_ATTEMPTS:
                log.error(
                    "outbox event %s (%s) parked after %d failed attempts (see its last_error)",
                    event_id,
                    topic,
                    attempts,
                    extra=_log_fields(event_id, topic, None, rid),
                )
    return delivered, failed


@dataclass(frozen=True)
class Backlog:
    pending: int  # undelivered events that will still be tried
    oldest_pending_age: dt.timedelta | None  # how long the oldest of them has waited
    stuck: int  # events that failed MAX_ATTEMPTS times and wait for an operator


def backlog(session: Session) -> Backlog:
    """One query over the undelivered events (the partial index `ix_outbox_events_pending`
    holds only those, so its cost follows the backlog, not the table)."""
    deliverable = OutboxEvent.attempts < MAX_ATTEMPTS
    pending, oldest, stuck = session.execute(
        select(
            func.count().filter(deliverable),
            func.min(OutboxEvent.created_at).filter(deliverable),
            func.count().filter(~deliverable),
        ).where(OutboxEvent.delivered_at.is_(None))
    ).one()
    age = None if oldest is None else dt.datetime.now(dt.UTC) - oldest
    return Backlog(pending=pending, oldest_pending_age=age, stuck=stuck)


def oldest_pending_age(session: Session) -> dt.timedelta | None:
    """How long the oldest deliverable event has waited (None when nothing waits)."""
    return backlog(session).oldest_pending_age


def stuck_count(session: Session) -> int:
    """Events that failed MAX_ATTEMPTS times and wait for an operator."""
    return backlog(session).stuck
