"""Worker behaviour on a real stack: gunicorn + Celery worker + beat on a private Redis.

The timeline must lose nothing and double nothing when the worker is killed mid-stream or
Redis goes away during writes; the API keeps accepting writes while Redis is down."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import itertools
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import func, select, text, update

from crm_api import create_app
from crm_domain.db import Database
from crm_domain.embedded import free_port
from crm_domain.models import Activity, OutboxEvent
from crm_domain.services.delivery import events, outbox
from crm_domain.settings import Settings
from scripts.procfile import Process

from .stack import Stack, running_stack, wait_until

pytestmark = pytest.mark.worker

DELIVERY_TIMEOUT = 120  # generous: reconnect back-off after a broker outage can take a while


@pytest.fixture(scope="module")
def stack(app, test_services, tmp_path_factory) -> Iterator[Stack]:
    with running_stack(test_services, tmp_path_factory.mktemp("stack"), "stack") as s:
        yield s


@pytest.fixture
def tenant(stack: Stack) -> dict[str, Any]:
    """A fresh organization with one contact and one deal, created through the running API."""
    return stack.tenant()


def undelivered(db: Database, org: int) -> int:
    with db.transaction() as s:
        return (
            s.scalar(
                select(func.count()).where(
                    OutboxEvent.organization_id == org, OutboxEvent.delivered_at.is_(None)
                )
            )
            or 0
        )


def activity_counts(db: Database, deal_id: int) -> dict[str, int]:
    with db.transaction() as s:
        rows = s.execute(
            select(Activity.type, func.count())
            .where(Activity.deal_id == deal_id)
            .group_by(Activity.type)
        ).all()
    return {t.value: n for t, n in rows}


def timeline_matches_outbox(db: Database, org: int) -> None:
    """Every timeline event of the org was delivered into exactly one activity."""
    with db.transaction() as s:
        keys = s.scalars(
            select(OutboxEvent.event_key).where(
                OutboxEvent.organization_id == org, OutboxEvent.topic == "timeline.activity"
            )
        ).all()
        delivered = s.scalars(select(Activity.event_key).where(Activity.event_key.in_(keys))).all()
    assert sorted(map(str, delivered)) == sorted(map(str, keys))


def patch_status(stack: Stack, tenant: dict[str, Any], status: str) -> None:
    code, body = stack.http(
        "PATCH", f"/deals/{tenant['deal']}", {"status": status}, tenant["token"], tenant["org"]
    )
    assert code == 200, body


def test_timeline_entry_arrives_through_the_worker(stack: Stack, db: Database, tenant) -> None:
    patch_status(stack, tenant, "in_progress")

    def entries() -> list[dict[str, Any]]:
        code, body = stack.http(
            "GET", f"/deals/{tenant['deal']}/activities", None, tenant["token"], tenant["org"]
        )
        assert code == 200, body
        return [a for a in body["items"] if a["type"] == "status_changed"]

    found = wait_until(entries, 30)
    assert [a["payload"] for a in found] == [{"old_status": "new", "new_status": "in_progress"}]
    wait_until(lambda: undelivered(db, tenant["org"]) == 0, 30)
    assert activity_counts(db, tenant["deal"]) == {"status_changed": 1}


def test_analytics_are_precomputed_after_a_write(stack: Stack, tenant) -> None:
    token, org = tenant["token"], tenant["org"]
    code, before = stack.http("GET", "/analytics/deals/summary", None, token, org)
    assert code == 200 and before["by_status"]["won"]["count"] == 0
    patch_status(stack, tenant, "won")

    def refreshed() -> dict[str, Any] | None:
        _, body = stack.http("GET", "/analytics/deals/summary", None, token, org)
        return body if body["by_status"]["won"]["count"] == 1 else None

    after = wait_until(refreshed, 30)
    assert after["by_status"]["won"]["total_amount"] == "10.00"
    assert dt.datetime.fromisoformat(after["as_of"]) > dt.datetime.fromisoformat(before["as_of"])
    _, funnel = stack.http("GET", "/analytics/deals/funnel", None, token, org)
    assert funnel["stages"][0]["by_status"]["won"] == 1


def test_on_demand_report_is_built_by_the_worker(stack: Stack, tenant) -> None:
    token, org = tenant["token"], tenant["org"]
    code, report = stack.http("POST", "/reports", None, token, org)
    assert code == 202 and report["status"] == "pending", report

    def ready() -> dict[str, Any] | None:
        _, body = stack.http("GET", f"/reports/{report['id']}", None, token, org)
        return body if body["status"] == "ready" else None

    built = wait_until(ready, 30)
    assert built["data"]["summary"]["total_deals"] == 1
    assert next(s["stage"] for s in built["data"]["funnel"]["stages"]) == "qualification"


def test_worker_killed_mid_stream_loses_and_doubles_nothing(
    stack: Stack, db: Database, tenant
) -> None:
    statuses = itertools.cycle(["in_progress", "new"])
    writes = 45
    try:
        for i in range(writes):
            if i == 15:
                stack.worker.kill()  # SIGKILL: tasks in flight are neither finished nor acked
            if i == 30:
                stack.worker.start()
            patch_status(stack, tenant, next(statuses))
        wait_until(lambda: undelivered(db, tenant["org"]) == 0, DELIVERY_TIMEOUT, 0.5)
    except TimeoutError:
        pytest.fail(f"events left undelivered\n{stack.logs()}")
    finally:
        if stack.worker.proc is None or stack.worker.proc.poll() is not None:
            stack.worker.start()
    assert activity_counts(db, tenant["deal"]) == {"status_changed": writes}
    timeline_matches_outbox(db, tenant["org"])


def test_worker_killed_while_a_batch_is_in_flight_loses_and_doubles_nothing(
    stack: Stack, db: Database, tenant
) -> None:
    """The kill lands while a drain holds its claimed batch open: the test blocks the
    batch's timeline insert with a table lock, waits until the worker's backend is seen
    waiting on it, then SIGKILLs the worker. Only a redelivery (beat's re-dispatch, or the
    broker giving the unacknowledged task back) can deliver those events afterwards."""
    writes = 3
    blocker = db.engine.connect()
    try:
        blocker.begin()
        blocker.exec_driver_sql("LOCK TABLE activities IN SHARE MODE")
        for status in itertools.islice(itertools.cycle(["in_progress", "new"]), writes):
            patch_status(stack, tenant, status)

        def drain_blocked() -> bool:
            # Inside a transaction pg_stat_activity is a snapshot: take a new one each time.
            blocker.exec_driver_sql("SELECT pg_stat_clear_snapshot()")
            return bool(
                blocker.exec_driver_sql(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query ILIKE 'INSERT INTO activities%%' AND pid <> pg_backend_pid()"
                ).scalar()
            )

        wait_until(drain_blocked, 30, 0.05)
        stack.worker.kill()  # SIGKILL mid-batch: nothing committed, nothing acknowledged
    finally:
        blocker.rollback()
        blocker.close()
    assert undelivered(db, tenant["org"]) >= writes  # the batch was really cut off
    stack.worker.start()
    try:
        wait_until(lambda: undelivered(db, tenant["org"]) == 0, DELIVERY_TIMEOUT, 0.5)
    except TimeoutError:
        pytest.fail(f"events left undelivered\n{stack.logs()}")
    assert activity_counts(db, tenant["deal"]) == {"status_changed": writes}
    timeline_matches_outbox(db, tenant["org"])


def test_redis_down_during_writes(stack: Stack, db: Database, tenant) -> None:
    token, org, deal = tenant["token"], tenant["org"], tenant["deal"]
    stack.redis.kill()
    try:
        statuses = itertools.cycle(["in_progress", "new"])
        writes = 20
        for _ in range(writes):
            patch_status(stack, tenant, next(statuses))
        tomorrow = (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)).isoformat()
        code, task = stack.http(
            "POST", "/tasks", {"deal_id": deal, "title": "Call", "due_date": tomorrow}, token, org
        )
        assert code == 201, task
        code, comment = stack.http(
            "POST",
            f"/deals/{deal}/activities",
            {"type": "comment", "payload": {"text": "hi"}},
            token,
            org,
        )
        assert code == 201, comment

        code, ready = stack.http("GET", "/ready")
        assert code == 503 and ready["checks"]["redis"] != "ok"
        assert ready["checks"]["database"] == "ok"
        # Analytics still answer, from the database.
        code, summary = stack.http("GET", "/analytics/deals/summary", None, token, org)
        assert code == 200 and summary["total_deals"] == 1
    finally:
        stack.redis.start()
    try:
        wait_until(lambda: undelivered(db, org) == 0, DELIVERY_TIMEOUT, 0.5)
    except TimeoutError:
        pytest.fail(f"events left undelivered after Redis came back\n{stack.logs()}")
    assert activity_counts(db, deal) == {"status_changed": writes, "task_created": 1, "comment": 1}
    timeline_matches_outbox(db, org)
    assert stack.http("GET", "/ready")[0] == 200


def test_flower_requires_basic_auth(stack: Stack) -> None:
    port = free_port()
    flower = Process(
        "flower",
        {
            **stack.env,
            "FLOWER_BASIC_AUTH": "ops:s3cret-pass",
            "FLOWER_PORT": str(port),
            "FLOWER_ADDRESS": "127.0.0.1",
        },
        log_path=stack.workdir / "flower.log",
    )
    flower.start()
    base = f"http://127.0.0.1:{port}"

    def status(auth: str | None) -> int:
        headers = (
            {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
        )
        try:
            with urllib.request.urlopen(
                urllib.request.Request(base + "/workers", headers=headers), timeout=5
            ) as r:
                return r.status
        except urllib.error.HTTPError as error:
            return error.code
        except (urllib.error.URLError, ConnectionError):
            return 0

    try:
        wait_until(lambda: status(None) != 0, 30, 0.2)
        assert status(None) == 401
        assert status("ops:wrong") == 401
        assert status("ops:s3cret-pass") == 200
    finally:
        flower.stop()


def test_in_process_worker_delivers_and_reminds(app, db: Database) -> None:
    """celery.contrib.testing's worker (in a thread) on the test Redis, fed by an API that
    publishes through Celery (OUTBOX_WAKE=publish) instead of delivering inline."""
    from celery.contrib.testing.worker import start_worker

    from crm_worker.app import celery_app

    from .api import ApiClient

    # OUTBOX_WAKE=publish: this process asks for the drain (beat's listener is not running)
    settings = dataclasses.replace(Settings.from_env(), outbox_wake="publish")
    celery_api = create_app(settings, OUTBOX_DISPATCH="celery", TESTING=True)
    api = ApiClient(celery_api.test_client())
    owner = api.register()
    deal = api.deal(owner)
    today = dt.datetime.now(dt.UTC).date().isoformat()
    task = api.task(owner, deal["id"], due_date=today)
    queues = ["outbox", "analytics", "crm", "bulk"]
    with start_worker(
        celery_app, pool="solo", perform_ping_check=False, shutdown_timeout=30, queues=queues
    ):
        r = api.patch(
            f"/deals/{deal['id']}", user=owner, org=owner.org_id, json={"stage": "proposal"}
        )
        assert r.status_code == 200

        def delivered() -> bool:
            counts = activity_counts(db, deal["id"])
            return counts.get("stage_changed") == 1 and counts.get("task_created") == 1

        wait_until(delivered, 30)
        celery_app.send_task("crm.reminders.send_due")

        def reminded() -> list[dict[str, Any]]:
            r = api.get("/notifications", user=owner, org=owner.org_id)
            return [n for n in r.get_json()["items"] if n["payload"]["task_id"] == task["id"]]

        notes = wait_until(reminded, 30)
    assert [n["type"] for n in notes] == ["task_due"]
    assert activity_counts(db, deal["id"]).get("task_reminder") == 1


def test_a_flood_of_bulk_work_does_not_delay_the_timeline_or_analytics(
    stack: Stack, db: Database, tenant
) -> None:
    """Report-like work fills the bulk queue: tasks that hold the bulk worker until the test
    lets them go, thirty of them. The timeline and analytics, on their own queues and
    worker, arrive while all of that work is still held (had they queued behind it, they
    would not arrive at all before the flood is released)."""
    from .slow_tasks import HOLD_TASK

    key = f"{stack.env['REDIS_KEY_PREFIX']}:flood:{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(stack.redis.url)

    def counted(what: str) -> int:
        return int(client.get(f"{key}:{what}") or 0)

    flood = stack.celery_client()
    try:
        for _ in range(30):
            flood.send_task(HOLD_TASK, args=[key, 300], queue="bulk")
        flood.close()
        wait_until(lambda: counted("started") >= 1, 30)  # the bulk worker is held
        token, org = tenant["token"], tenant["org"]
        patch_status(stack, tenant, "won")
        wait_until(lambda: activity_counts(db, tenant["deal"]).get("status_changed") == 1, 60)

        def won() -> bool:
            _, body = stack.http("GET", "/analytics/deals/summary", None, token, org)
            return body["by_status"]["won"]["count"] == 1

        wait_until(won, 60)
        assert counted("finished") == 0  # the whole flood was held all along
    finally:
        client.set(f"{key}:open", "1", ex=600)
        stack.purge("bulk")  # what the flood left queued
        client.close()


def test_idle_housekeeping_leaves_the_worker_log_quiet(
    stack: Stack, db: Database, quiet_db: Database, tenant
) -> None:
    """Beat runs the outbox safety net every second here; with nothing pending the worker
    logs nothing about it, and when it acts, it says so. The quiet stretch is bounded by
    positive signals rather than a sleep: beat has sent several idle runs, then an event left
    pending (nobody asked for its drain) makes a later run act and log; the lines of runs
    that acted are the only ones about it in the log."""
    wait_until(lambda: undelivered_anywhere(db) == 0, 30)
    worker_log, beat_log = stack.worker.log_path, stack.beat.log_path
    assert worker_log is not None and beat_log is not None
    worker_from, beat_from = worker_log.stat().st_size, beat_log.stat().st_size

    def since(path: Path, offset: int) -> str:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def idle_runs_sent() -> int:
        return since(beat_log, beat_from).count("Sending due task outbox-redispatch")

    wait_until(lambda: idle_runs_sent() >= 3, 30)
    with quiet_db.transaction() as s:  # committed without a wake-up...
        # (no publisher, and no NOTIFY either: triggers are off in this transaction)
        s.execute(text("SET LOCAL session_replication_role = replica"))
        outbox.record(s, tenant["org"], events.DEAL_CHANGED_TOPIC, {})
    with quiet_db.transaction() as s:  # ...and pending for a minute already
        s.execute(
            update(OutboxEvent)
            .where(OutboxEvent.organization_id == tenant["org"], OutboxEvent.delivered_at.is_(None))
            .values(created_at=func.now() - dt.timedelta(minutes=1))
        )
    wait_until(lambda: "asking for a drain" in since(worker_log, worker_from), 30)
    wait_until(lambda: undelivered(db, tenant["org"]) == 0, 30)
    lines = [
        line
        for line in since(worker_log, worker_from).splitlines()
        if "crm.outbox.redispatch" in line
    ]
    acted = [line for line in lines if "asking for a drain" in line or line.endswith(": True")]
    assert acted and lines == acted, lines


def undelivered_anywhere(db: Database) -> int:
    with db.transaction() as s:
        return s.scalar(select(func.count()).where(OutboxEvent.delivered_at.is_(None))) or 0
