"""The outbox delivery path without a worker: batches, both duplicate guards, failures,
concurrent deliverers, and the debounced wake-up of the drain task.

Each duplicate guard is tested with the other one out of the way: `apply_activities` called
twice on the same events bypasses the "not yet delivered" filter (only the event key's
`ON CONFLICT DO NOTHING` can stop the second entry), and an entry whose event key was cleared
no longer conflicts (only the filter can stop a second delivery)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import redis
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from crm_domain.db import Database
from crm_domain.enums import ActivityType
from crm_domain.models import Activity, OutboxEvent
from crm_domain.services.delivery import events, outbox
from crm_domain.services.records import timeline
from crm_worker.dispatch import DrainFlag, DrainWaker

from .api import ApiClient
from .delivery import timeline_handled_by
from .stack import wait_until


@pytest.fixture
def deal(api: ApiClient) -> dict[str, Any]:
    user = api.register()
    return api.deal(user)


def record_status_changes(db: Database, deal: dict[str, Any], n: int) -> list[int]:
    """Record n timeline events for the deal (nothing delivers them); returns their ids."""
    with db.transaction() as s:
        for i in range(n):
            timeline.record_activity(
                s,
                organization_id=deal["organization_id"],
                deal_id=deal["id"],
                author_id=deal["owner_id"],
                type=ActivityType.STATUS_CHANGED,
                payload={"old_status": "new", "new_status": "in_progress", "i": i},
            )
    with db.transaction() as s:
        return list(
            s.scalars(
                select(OutboxEvent.id)
                .where(
                    OutboxEvent.organization_id == deal["organization_id"],
                    OutboxEvent.delivered_at.is_(None),
                )
                .order_by(OutboxEvent.id)
            )
        )


def entries(db: Database, deal_id: int) -> int:
    with db.transaction() as s:
        return (
            s.scalar(
                select(func.count()).where(
                    Activity.deal_id == deal_id, Activity.type == ActivityType.STATUS_CHANGED
                )
            )
            or 0
        )


def pending(db: Database, ids: Sequence[int]) -> list[OutboxEvent]:
    with db.transaction() as s:
        return list(s.scalars(select(OutboxEvent).where(OutboxEvent.id.in_(ids))))


def test_events_are_inserted_at_commit_and_not_on_rollback(quiet_db: Database, deal) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom), quiet_db.transaction() as s:
        outbox.record(
            s, deal["organization_id"], events.DEAL_CHANGED_TOPIC, {"deal_id": deal["id"]}
        )
        raise Boom
    assert record_status_changes(quiet_db, deal, 0) == []
    assert len(record_status_changes(quiet_db, deal, 3)) == 3


class _Undo(Exception):
    """Rolls a test's savepoint back."""


def _queue(session: Session, deal: dict[str, Any], tag: str) -> None:
    payload = {"deal_id": deal["id"], "tag": tag}
    outbox.record(session, deal["organization_id"], events.DEAL_CHANGED_TOPIC, payload)


def _queued_tags(db: Database, deal: dict[str, Any]) -> list[str]:
    """The tags of the deal's `deal.changed` events in the outbox, in the order queued."""
    with db.transaction() as s:
        payloads = s.scalars(
            select(OutboxEvent.payload)
            .where(
                OutboxEvent.organization_id == deal["organization_id"],
                OutboxEvent.topic == events.DEAL_CHANGED_TOPIC,
            )
            .order_by(OutboxEvent.id)
        )
        return [p["tag"] for p in payloads if p.get("deal_id") == deal["id"] and "tag" in p]


def test_a_rolled_back_savepoint_drops_only_the_events_queued_inside_it(
    quiet_db: Database, deal
) -> None:
    with quiet_db.transaction() as s:
        _queue(s, deal, "before")
        with pytest.raises(_Undo), s.begin_nested():
            _queue(s, deal, "in the savepoint")
            raise _Undo
        _queue(s, deal, "after")
    assert _queued_tags(quiet_db, deal) == ["before", "after"]


def test_savepoints_inside_savepoints_keep_exactly_the_events_of_what_was_kept(
    quiet_db: Database, deal
) -> None:
    """Released savepoints hand their events to the enclosing transaction; a rolled back one
    drops its own and those of every savepoint released inside it, never those before it."""
    with quiet_db.transaction() as s:
        _queue(s, deal, "a")
        with s.begin_nested():  # released
            _queue(s, deal, "b")
            with pytest.raises(_Undo), s.begin_nested():
                _queue(s, deal, "dropped: inner rolled back")
                raise _Undo
            _queue(s, deal, "c")
        _queue(s, deal, "d")
        with pytest.raises(_Undo), s.begin_nested():
            _queue(s, deal, "dropped: outer rolled back")
            with s.begin_nested():  # released into the savepoint rolled back next
                _queue(s, deal, "dropped: released into a rolled back one")
            raise _Undo
        _queue(s, deal, "e")
    assert _queued_tags(quiet_db, deal) == ["a", "b", "c", "d", "e"]


def test_the_publisher_hears_of_events_once_they_are_committed_not_at_a_savepoint(
    test_services, deal
) -> None:
    """Releasing a savepoint commits nothing: the wake-up waits for the transaction's commit,
    when a deliverer can see the events."""
    seen: list[list[str]] = []
    db = Database(test_services.database_url, pool_size=2)
    db.publisher = lambda: seen.append(_queued_tags(db, deal))
    try:
        with db.transaction() as s:
            _queue(s, deal, "before")
            with s.begin_nested():
                _queue(s, deal, "in the savepoint")
            assert seen == []
        assert seen == [["before", "in the savepoint"]]
    finally:
        db.engine.dispose()


def test_a_batch_is_delivered_once_into_one_entry_each(quiet_db: Database, deal) -> None:
    ids = record_status_changes(quiet_db, deal, 5)
    assert outbox.deliver_pending(quiet_db) >= 5
    assert entries(quiet_db, deal["id"]) == 5
    assert all(ev.delivered_at is not None and ev.attempts == 1 for ev in pending(quiet_db, ids))
    assert outbox.deliver_pending(quiet_db) == 0  # nothing left to deliver
    assert entries(quiet_db, deal["id"]) == 5


def test_event_key_guard_alone_stops_a_second_entry(quiet_db: Database, deal) -> None:
    """The same events applied twice, and twice within one batch: the filter is not involved."""
    ids = record_status_changes(quiet_db, deal, 3)
    with quiet_db.transaction() as s:
        events = list(s.scalars(select(OutboxEvent).where(OutboxEvent.id.in_(ids))))
        timeline.apply_activities(s, events + events)
    with quiet_db.transaction() as s:
        events = list(s.scalars(select(OutboxEvent).where(OutboxEvent.id.in_(ids))))
        timeline.apply_activities(s, events)
    assert entries(quiet_db, deal["id"]) == 3


def test_a_redelivered_batch_writes_nothing_twice(quiet_db: Database, deal) -> None:
    """A batch delivered, then found undelivered again (as after a crash between the write
    and the mark elsewhere): the second delivery claims it and must add nothing."""
    ids = record_status_changes(quiet_db, deal, 4)
    outbox.deliver_pending(quiet_db)
    with quiet_db.transaction() as s:
        s.execute(update(OutboxEvent).where(OutboxEvent.id.in_(ids)).values(delivered_at=None))
    assert outbox.deliver_pending(quiet_db) >= 4
    assert entries(quiet_db, deal["id"]) == 4


def test_delivered_filter_alone_stops_a_second_delivery(quiet_db: Database, deal) -> None:
    """With the entries' event keys cleared, ON CONFLICT cannot catch a second insert: only
    claiming undelivered events keeps the timeline from doubling."""
    record_status_changes(quiet_db, deal, 3)
    outbox.deliver_pending(quiet_db)
    with quiet_db.transaction() as s:
        s.execute(update(Activity).where(Activity.deal_id == deal["id"]).values(event_key=None))
    outbox.deliver_pending(quiet_db)
    assert entries(quiet_db, deal["id"]) == 3


def test_one_bad_event_does_not_hold_back_the_batch(quiet_db: Database, deal) -> None:
    ids = record_status_changes(quiet_db, deal, 4)
    bad = ids[1]

    def picky(session: Session, events: Sequence[OutboxEvent]) -> None:
        if any(ev.id == bad for ev in events):
            raise ValueError("cannot deliver this one")
        timeline.apply_activities(session, events)

    outbox.deliver_pending(quiet_db, timeline_handled_by(picky))
    assert entries(quiet_db, deal["id"]) == 3
    state = {ev.id: ev for ev in pending(quiet_db, ids)}
    assert state[bad].delivered_at is None and state[bad].attempts == 1
    assert "cannot deliver this one" in (state[bad].last_error or "")
    assert all(state[i].delivered_at is not None for i in ids if i != bad)
    # A later delivery (the handler fixed) picks the bad event up again.
    outbox.deliver_pending(quiet_db)
    assert entries(quiet_db, deal["id"]) == 4


def test_an_event_failing_every_time_is_parked_after_max_attempts(quiet_db: Database, deal) -> None:
    (event_id,) = record_status_changes(quiet_db, deal, 1)

    def broken(_s: Session, _events: Sequence[OutboxEvent]) -> None:
        raise ValueError("always")

    for _ in range(outbox.MAX_ATTEMPTS + 2):
        outbox.deliver_pending(quiet_db, timeline_handled_by(broken))
    (ev,) = pending(quiet_db, [event_id])
    assert ev.attempts == outbox.MAX_ATTEMPTS and ev.delivered_at is None
    with quiet_db.transaction() as s:
        assert outbox.stuck_count(s) >= 1
        s.execute(delete(OutboxEvent).where(OutboxEvent.id == event_id))  # keep others clean


def test_a_malformed_event_is_parked_and_the_events_behind_it_flow_on(
    quiet_db: Database, deal, caplog: pytest.LogCaptureFixture
) -> None:
    """An event no handler can apply (written by an older version: no deal id), first in line
    before more than a batch of good ones: one delivery call delivers every good one, the bad
    one costs one attempt per call and is parked after MAX_ATTEMPTS, with its reason."""
    with quiet_db.transaction() as s:
        payload = {"author_id": None, "type": "comment", "payload": {"text": "old"}}
        outbox.record(s, deal["organization_id"], timeline.TIMELINE_TOPIC, payload)
    (bad,) = record_status_changes(quiet_db, deal, 0)
    ids = record_status_changes(quiet_db, deal, outbox.BATCH_SIZE + 50)
    assert ids[0] == bad and len(ids) == outbox.BATCH_SIZE + 51

    with caplog.at_level(logging.WARNING, logger="crm_domain.services.delivery.outbox"):
        assert outbox.deliver_pending(quiet_db) >= outbox.BATCH_SIZE + 50
    # the batches behind the bad event leave it out: it fails one batch, not every one
    assert sum("outbox batch failed" in r.getMessage() for r in caplog.records) == 1
    caplog.clear()
    assert entries(quiet_db, deal["id"]) == outbox.BATCH_SIZE + 50
    state = {ev.id: ev for ev in pending(quiet_db, ids)}
    assert all(state[i].delivered_at is not None for i in ids[1:])
    assert (state[bad].attempts, state[bad].delivered_at) == (1, None)
    assert "deal_id" in (state[bad].last_error or "")

    with caplog.at_level(logging.ERROR, logger="crm_domain.services.delivery.outbox"):
        for _ in range(outbox.MAX_ATTEMPTS - 1):
            outbox.deliver_pending(quiet_db)
    (ev,) = pending(quiet_db, [bad])
    assert (ev.attempts, ev.delivered_at) == (outbox.MAX_ATTEMPTS, None)
    assert "deal_id" in (ev.last_error or "")
    assert [
        r
        for r in caplog.records
        if f"outbox event {bad} " in r.getMessage() and "parked" in r.getMessage()
    ]
    with quiet_db.transaction() as s:
        assert outbox.stuck_count(s) >= 1  # crm_outbox_stuck_events
        assert bad not in [e.id for e in outbox.claim(s)]
        s.execute(delete(OutboxEvent).where(OutboxEvent.id == bad))  # keep others clean


def test_an_outage_costs_no_attempt_and_is_raised(quiet_db: Database, deal) -> None:
    (event_id,) = record_status_changes(quiet_db, deal, 1)

    def database_away(_s: Session, _events: Sequence[OutboxEvent]) -> None:
        raise OperationalError("SELECT 1", {}, Exception("server closed the connection"))

    with pytest.raises(OperationalError):
        outbox.deliver_pending(
            quiet_db, timeline_handled_by(database_away), transient=(OperationalError,)
        )
    (ev,) = pending(quiet_db, [event_id])
    assert ev.attempts == 0 and ev.delivered_at is None
    outbox.deliver_pending(quiet_db)
    assert entries(quiet_db, deal["id"]) == 1


def test_concurrent_deliverers_share_the_work_without_doubles(quiet_db: Database, deal) -> None:
    ids = record_status_changes(quiet_db, deal, 300)
    counts: list[int] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            counts.append(outbox.deliver_pending(quiet_db, batch_size=25))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert entries(quiet_db, deal["id"]) == 300
    assert all(ev.attempts == 1 for ev in pending(quiet_db, ids))


def test_a_deleted_deal_s_events_are_delivered_without_an_entry(
    quiet_db: Database, api: ApiClient
) -> None:
    user = api.register()
    doomed = api.deal(user)
    assert api.delete(f"/deals/{doomed['id']}", user=user, org=user.org_id).status_code == 204
    # In the trash its timeline goes on (tests/test_trash.py); purged, it is gone.
    r = api.delete(f"/trash/deal/{doomed['id']}", user=user, org=user.org_id)
    assert r.status_code == 204
    (event_id,) = record_status_changes(quiet_db, doomed, 1)
    outbox.deliver_pending(quiet_db)
    (ev,) = pending(quiet_db, [event_id])
    assert ev.delivered_at is not None and ev.last_error == "deal no longer exists"


# --- the wake-up ------------------------------------------------------------------------------


@pytest.fixture
def flag(test_services) -> Iterator[DrainFlag]:
    client = redis.Redis.from_url(test_services.redis_url)
    f = DrainFlag(client, f"{test_services.database_name}-wake")
    f.clear()
    yield f
    f.clear()
    client.close()


def test_wake_ups_are_debounced_until_the_drain_clears_the_flag(flag: DrainFlag) -> None:
    sent: list[int] = []
    waker = DrainWaker(flag, lambda: sent.append(1))
    assert waker.wake() is True
    assert waker.wake() is False  # a drain is due: it will see this commit's events
    assert sent == [1]
    flag.clear()  # the drain task starts
    assert waker.wake() is True
    assert sent == [1, 1]
    assert 0 < flag.client.pttl(flag.key) <= 5000  # a lost task cannot silence wake-ups


def test_a_failed_send_leaves_the_next_commit_free_to_try(flag: DrainFlag) -> None:
    def broker_down() -> None:
        raise ConnectionError("broker away")

    with pytest.raises(ConnectionError):
        DrainWaker(flag, broker_down).wake()
    sent: list[int] = []
    assert DrainWaker(flag, lambda: sent.append(1)).wake() is True
    assert sent == [1]


def test_the_background_waker_merges_wake_ups(flag: DrainFlag) -> None:
    sent = threading.Semaphore(0)
    waker = DrainWaker(flag, sent.release)
    for _ in range(20):
        waker()
    assert sent.acquire(timeout=5)
    assert not sent.acquire(timeout=0.3)  # one drain for all twenty commits


def test_the_background_waker_spaces_drains_under_a_stream_of_commits(flag: DrainFlag) -> None:
    """Commits that keep coming share a drain per `spacing`: the one after a drain started
    waits for the rest of it (its events are delivered by the next drain, not lost)."""
    sent: list[float] = []
    spacing = 0.5
    waker = DrainWaker(flag, lambda: sent.append(time.monotonic()), gather=0.01, spacing=spacing)
    waker()
    wait_until(lambda: len(sent) == 1, 5, 0.01)
    flag.clear()  # the drain task starts
    waker()  # a commit during the drain
    wait_until(lambda: len(sent) == 2, 5, 0.01)
    assert sent[1] - sent[0] >= spacing


def test_an_event_committed_during_a_drain_asks_for_a_drain_of_its_own(
    quiet_db: Database, deal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The drain task clears the flag before it claims anything: a change that commits while
    the drain delivers (after its last claim) finds the flag clear and asks for another
    drain, instead of waiting for whichever comes next."""
    from crm_worker.app import drain_flag
    from crm_worker.tasks import outbox as outbox_tasks

    flag = drain_flag()  # the key the deployment's API and drain task share
    flag.clear()
    asked: list[str] = []
    quiet_db.publisher = DrainWaker(flag, lambda: asked.append("drain")).wake
    first = record_status_changes(quiet_db, deal, 1)  # its commit asks for the drain below
    assert asked == ["drain"]
    dispatcher = outbox_tasks.dispatcher
    real_deliver = dispatcher.deliver
    late: list[int] = []

    def deliver_then_a_commit(*args: Any, **kwargs: Any) -> int:
        delivered = real_deliver(*args, **kwargs)  # every batch claimed and delivered
        late.extend(set(record_status_changes(quiet_db, deal, 1)) - set(first))
        return delivered

    monkeypatch.setattr(dispatcher, "deliver", deliver_then_a_commit)
    outbox_tasks.drain()  # the task, run in this process
    assert len(late) == 1 and pending(quiet_db, late)[0].delivered_at is None
    assert asked == ["drain", "drain"]  # the late commit asked for a drain
    monkeypatch.setattr(dispatcher, "deliver", real_deliver)
    outbox_tasks.drain()  # ...which delivers it
    assert all(ev.delivered_at is not None for ev in pending(quiet_db, first + late))
    assert entries(quiet_db, deal["id"]) == 2


def test_timeline_entries_record_activity_created_only_where_an_endpoint_wants_it(
    quiet_db: Database, api: ApiClient
) -> None:
    """`activity.created` is for webhooks: an organization without an endpoint gets none (and
    so no second delivery pass); one with an endpoint subscribed to it gets one per entry."""
    plain, hooked = api.register(), api.register()
    r = api.post(
        "/webhooks",
        user=hooked,
        org=hooked.org_id,
        json={"url": "http://127.0.0.1:9/hook", "event_types": ["activity.created"]},
    )
    assert r.status_code == 201, r.get_json()
    deals = {user.org_id: api.deal(user) for user in (plain, hooked)}
    for deal in deals.values():
        record_status_changes(quiet_db, deal, 2)
    outbox.deliver_pending(quiet_db)
    with quiet_db.transaction() as s:
        counts = dict(
            s.execute(
                select(OutboxEvent.organization_id, func.count())
                .where(OutboxEvent.topic == "activity.created")
                .where(OutboxEvent.organization_id.in_(list(deals)))
                .group_by(OutboxEvent.organization_id)
            ).all()
        )
    assert counts == {hooked.org_id: 2}
