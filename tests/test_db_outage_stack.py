"""Database outages on a whole running stack (issue 22): the Procfile's gunicorn (two workers),
Celery workers and beat on a private Redis (tests/stack.py) and a private PostgreSQL cluster
that the tests stop, restart and freeze (tests/pgcluster.py; never the machine's server).

- an analytics refresh caught by an outage longer than the old retry budget (5 retries, at
  most 31 s) keeps retrying and is right within seconds of the database's return; one whose
  task is gone is asked again by beat's sweep;
- after a restart while nothing runs, every gunicorn worker's next request succeeds and no
  periodic task fails;
- meanwhile every 503 carries Retry-After, /ready answers in time naming the dependency
  (database or Redis frozen), and the logs call the outage an outage.

The fast worker here consumes `outbox` and `crm` only; `analytics` has a worker of its own,
so a test can leave a refresh waiting until the database is gone."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import func, select, text

from crm_api.errors import RETRY_AFTER_SECONDS
from crm_domain.db import Database
from crm_domain.models import OutboxEvent
from crm_domain.services.reporting.analytics_cache import AnalyticsCache
from scripts.procfile import Process

from .pgcluster import PrivatePostgres, back_up, private_cluster
from .stack import Stack, wait_until

pytestmark = pytest.mark.worker

WEB_WORKERS = 2
OLD_RETRY_BUDGET_SECONDS = 31  # 1 + 2 + 4 + 8 + 16: the longest the old refresh retried
OLD_MAX_RETRIES = 5


@pytest.fixture(scope="module")
def private(test_services) -> Iterator[tuple[PrivatePostgres, str]]:
    yield from private_cluster()


@pytest.fixture(scope="module")
def stack(private, test_services, tmp_path_factory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("outage-stack")
    s = Stack(
        private[1],
        workdir,
        key_prefix=f"{test_services.database_name}-outage-stack",
        broker=test_services.broker,
        web_workers=WEB_WORKERS,
        extra_env={
            "LOG_FORMAT": "json",  # the access lines name the gunicorn worker (pid)
            "ANALYTICS_REFRESH_SECONDS": "3600",  # nothing but the fix repairs the figures
            # every Celery worker runs a periodic database task every second or so
            "WEBHOOK_DISPATCH_SECONDS": "1",
            "EMAIL_SWEEP_SECONDS": "1",
            "IMPORT_STALL_SECONDS": "2",
        },
    )
    s.worker = Process(
        "worker", s.env, extra_args=["--queues=outbox,crm"], log_path=workdir / "worker.log"
    )
    s.added.append(
        Process(
            "worker",
            s.env,
            extra_args=["-n", "analytics@%h", "--queues=analytics"],
            log_path=workdir / "analytics.log",
        )
    )
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def cluster(private, stack) -> Iterator[PrivatePostgres]:
    yield private[0]
    back_up(private[0])
    if not analytics_worker(stack).alive:
        analytics_worker(stack).start()
    if stack.redis.proc is not None:
        os.kill(stack.redis.proc.pid, signal.SIGCONT)


@pytest.fixture(scope="module")
def db(private) -> Iterator[Database]:
    database = Database(private[1], pool_size=2)
    yield database
    database.engine.dispose()


@pytest.fixture(scope="module")
def cache(stack, db) -> AnalyticsCache:
    """The stack's analytics keys, read from the test."""
    return AnalyticsCache(redis.Redis.from_url(stack.redis.url), db, stack.env["REDIS_KEY_PREFIX"])


def analytics_worker(stack: Stack) -> Process:
    return stack.added[0]


def call(
    stack: Stack, method: str, path: str, *, body: Any = None, token: str = "", org: int = 0
) -> tuple[int, dict[str, str], Any]:
    """One request: status, headers and JSON body (0 when no answer in 30 s)."""
    headers = {"Content-Type": "application/json", "X-Request-ID": uuid.uuid4().hex}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if org:
        headers["X-Organization-Id"] = str(org)
    url = stack.base + (path if path in ("/health", "/ready") else "/api/v1" + path)
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            raw = r.read()
            return r.status, dict(r.headers), json.loads(raw) if raw else None
    except urllib.error.HTTPError as error:
        raw = error.read()
        return error.code, dict(error.headers), json.loads(raw) if raw else None


def json_lines(path: Path, start: int = 0) -> list[dict[str, Any]]:
    """The JSON log lines of a process's log from byte `start` on."""
    with path.open("rb") as f:
        f.seek(start)
        raw = f.read().decode(errors="replace")
    lines = []
    for line in raw.splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return lines


def log_sizes(stack: Stack) -> dict[Path, int]:
    return {p.log_path: p.log_path.stat().st_size for p in stack.processes if p.log_path}


def summary(stack: Stack, tenant: dict[str, Any]) -> dict[str, Any]:
    status, _, body = call(
        stack, "GET", "/analytics/deals/summary", token=tenant["token"], org=tenant["org"]
    )
    assert status == 200, body
    return dict(body)


def won(stack: Stack, tenant: dict[str, Any]) -> int:
    return int(summary(stack, tenant)["by_status"]["won"]["count"])


def set_status(stack: Stack, tenant: dict[str, Any], status: str) -> None:
    code, _, body = call(
        stack,
        "PATCH",
        f"/deals/{tenant['deal']}",
        body={"status": status},
        token=tenant["token"],
        org=tenant["org"],
    )
    assert code == 200, body


def undelivered(db: Database, org: int) -> int:
    with db.transaction() as s:
        return int(
            s.scalar(
                select(func.count()).where(
                    OutboxEvent.organization_id == org, OutboxEvent.delivered_at.is_(None)
                )
            )
            or 0
        )


def every_worker_answers(stack: Stack, tenant: dict[str, Any]) -> dict[int, int]:
    """Authenticated requests, eight at a time, until each gunicorn worker answered one:
    {pid: status of the first request it answered}."""
    lock = threading.Lock()
    sent: dict[str, int] = {}

    def one() -> None:
        request_id = uuid.uuid4().hex
        headers = {
            "Authorization": f"Bearer {tenant['token']}",
            "X-Organization-Id": str(tenant["org"]),
            "X-Request-ID": request_id,
        }
        url = f"{stack.base}/api/v1/deals/{tenant['deal']}"
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30):
                status = 200
        except urllib.error.HTTPError as error:
            status = error.code
        with lock:
            sent[request_id] = status

    start = stack.web.log_path.stat().st_size  # type: ignore[union-attr]
    first: dict[int, int] = {}
    for _ in range(30):
        threads = [threading.Thread(target=one) for _ in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        # (an access line is written after its response: a late one is read next round)
        for line in json_lines(stack.web.log_path, start):  # type: ignore[arg-type]
            if line.get("logger") == "gunicorn.access" and line.get("request_id") in sent:
                first.setdefault(int(line["pid"]), sent[line["request_id"]])
        if len(first) >= WEB_WORKERS:
            return first
    raise AssertionError(f"not every gunicorn worker answered: {first}")


def refreshes_finished(worker: Process) -> bool:
    """Every refresh task the worker received has succeeded (by its log)."""
    assert worker.log_path is not None
    received, succeeded = set(), set()
    for line in json_lines(worker.log_path):
        message = line.get("message", "")
        if message.startswith("Task crm.analytics.refresh["):
            task = message.split("[", 1)[1].split("]", 1)[0]
            if message.endswith("received"):
                received.add(task)
            elif "] succeeded in " in message:
                succeeded.add(task)
    return received <= succeeded


# --- 1. an analytics refresh outlives an outage ----------------------------------------------


def test_a_refresh_caught_by_a_long_outage_is_right_soon_after_it(
    stack: Stack, cluster: PrivatePostgres, db: Database, cache: AnalyticsCache
) -> None:
    tenant = stack.tenant()
    assert won(stack, tenant) == 0  # stored: served from Redis from now on
    epoch = cache.epoch()
    epoch_key = cache.stale_key(epoch)
    # The refresh the deal's creation asked for is over, task included (stopped while it
    # finishes, it would be given back and run again): one refresh will be in play below.
    wait_until(lambda: undelivered(db, tenant["org"]) == 0, 60)
    wait_until(lambda: cache.client.zscore(epoch_key, str(tenant["org"])) is None, 30)  # type: ignore[union-attr]
    wait_until(lambda: refreshes_finished(analytics_worker(stack)), 30)
    analytics_worker(stack).stop()
    set_status(stack, tenant, "won")
    # Delivered: the refresh is asked for (and waits on its queue), the organization marked.
    wait_until(lambda: undelivered(db, tenant["org"]) == 0, 60)
    assert cache.client.zscore(epoch_key, str(tenant["org"])) is not None  # type: ignore[union-attr]

    sizes = log_sizes(stack)
    cluster.stop()
    down_at = time.monotonic()
    analytics_worker(stack).start()  # the refresh runs now, and fails

    # What a client sees meanwhile: 503 with Retry-After; /ready names the database.
    status, headers, body = call(
        stack, "GET", f"/deals/{tenant['deal']}", token=tenant["token"], org=tenant["org"]
    )
    assert status == 503 and body["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
    status, headers, body = call(stack, "GET", "/ready")
    assert status == 503 and headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
    assert body["checks"]["database"] != "ok" and body["checks"]["redis"] == "ok"

    analytics_log = analytics_worker(stack).log_path
    assert analytics_log is not None

    def retries_by_task() -> dict[str, int]:
        counts: dict[str, int] = {}
        for line in json_lines(analytics_log, sizes[analytics_log]):
            message = line.get("message", "")
            if message.startswith("Task crm.analytics.refresh[") and "] retry:" in message:
                task = message.split("[", 1)[1].split("]", 1)[0]
                counts[task] = counts.get(task, 0) + 1
        return counts

    # Down for longer than the old policy's whole budget, and the refresh retried more often
    # than it allowed.
    wait_until(
        lambda: (
            time.monotonic() - down_at > OLD_RETRY_BUDGET_SECONDS + 5
            and max(retries_by_task().values(), default=0) > OLD_MAX_RETRIES
        ),
        180,
        0.5,
    )
    counts = retries_by_task()
    assert len(counts) == 1, counts  # the one refresh the change asked for
    (task_id,) = counts
    stored = cache.client.hget(cache.org_key(tenant["org"], epoch), "summary:30")  # type: ignore[union-attr]
    assert stored is not None
    assert json.loads(stored)["by_status"]["won"]["count"] == 0  # not refreshed yet

    cluster.start()
    wait_until(lambda: won(stack, tenant) == 1, 30, 0.2)
    # ... by the very refresh that retried through the outage (not beat's sweep).
    succeeded = [
        line
        for line in json_lines(analytics_log, sizes[analytics_log])
        if f"crm.analytics.refresh[{task_id}] succeeded" in line.get("message", "")
    ]
    assert succeeded, analytics_worker(stack).log_tail()
    assert summary(stack, tenant)["by_status"]["won"]["total_amount"] == "10.00"
    wait_until(lambda: cache.client.zscore(epoch_key, str(tenant["org"])) is None, 10)  # type: ignore[union-attr]

    # 5. The logs called it an outage, never a change of the database's identity.
    lines = [
        line.get("message", "") for path, start in sizes.items() for line in json_lines(path, start)
    ]
    assert any(m.startswith("database unavailable") for m in lines)
    assert not [m for m in lines if "identity changed" in m]


def test_a_refresh_whose_task_is_gone_is_asked_again_by_the_sweep(
    stack: Stack, cluster: PrivatePostgres, db: Database, cache: AnalyticsCache
) -> None:
    """The deal is won in the database behind the API's back (no event, no refresh), and
    the organization carries a stale mark from two minutes ago that no task works on: only
    beat's sweep brings the figures up to date."""
    tenant = stack.tenant()
    assert won(stack, tenant) == 0
    assert cache.client is not None
    # The refresh its creation asked for is over (no task left that could repair anything).
    wait_until(lambda: undelivered(db, tenant["org"]) == 0, 60)
    wait_until(lambda: cache.client.zscore(cache.stale_key(), str(tenant["org"])) is None, 30)  # type: ignore[union-attr]
    with db.transaction() as session:
        session.execute(
            text("UPDATE deals SET status = 'won' WHERE id = :id"), {"id": tenant["deal"]}
        )
    two_minutes_ago = (dt.datetime.now(dt.UTC).timestamp() - 120) * 1000
    cache.client.zadd(cache.stale_key(), {str(tenant["org"]): int(two_minutes_ago)})
    wait_until(lambda: won(stack, tenant) == 1, 60, 0.5)
    wait_until(lambda: cache.client.zscore(cache.stale_key(), str(tenant["org"])) is None, 10)  # type: ignore[union-attr]


# --- 2. no false 503 after a restart ---------------------------------------------------------


def test_after_a_restart_every_process_succeeds_at_once(
    stack: Stack, cluster: PrivatePostgres
) -> None:
    """Every gunicorn worker has pooled connections, and so has every Celery worker (their
    periodic tasks run every second); the database restarts while nothing else happens.
    Each gunicorn worker's first request after it succeeds, and no task fails."""
    tenant = stack.tenant()
    assert set(every_worker_answers(stack, tenant).values()) == {200}
    sizes = log_sizes(stack)
    cluster.restart()
    back_at = dt.datetime.now(dt.UTC)
    first = every_worker_answers(stack, tenant)
    assert len(first) == WEB_WORKERS
    assert first == {pid: 200 for pid in first}

    beat_log = stack.beat.log_path
    assert beat_log is not None
    periodic = ("outbox-redispatch", "webhooks-sweep", "email-sweep", "imports-requeue-stalled")

    def sent_twice() -> bool:
        sent = [line.get("message", "") for line in json_lines(beat_log, sizes[beat_log])]
        return all(sum(name in m for m in sent) >= 2 for name in periodic)

    wait_until(sent_twice, 60, 0.5)
    # The fast worker answered since: a change made now reaches its timeline.
    set_status(stack, tenant, "in_progress")

    def timeline() -> bool:
        _, _, page = call(
            stack,
            "GET",
            f"/deals/{tenant['deal']}/activities",
            token=tenant["token"],
            org=tenant["org"],
        )
        return any(a["type"] == "status_changed" for a in page["items"])

    wait_until(timeline, 30, 0.2)
    failures = [
        (path.name, line.get("message", "")[:200])
        for path, start in sizes.items()
        for line in json_lines(path, start)
        if dt.datetime.fromisoformat(line["time"]) >= back_at  # not while it was down
        and (
            line.get("level") in ("ERROR", "CRITICAL")
            or "OperationalError" in line.get("message", "")
        )
    ]
    assert failures == []


# --- 4. /ready within its deadline -----------------------------------------------------------


def test_ready_names_the_frozen_dependency_in_time(stack: Stack, cluster: PrivatePostgres) -> None:
    """SIGSTOP of the database, then of Redis: the probe answers 503 within its deadline
    (a client waiting 10 s gets an answer) and says which one."""
    tenant = stack.tenant()
    every_worker_answers(stack, tenant)  # pooled connections that a frozen server never answers

    def ready_answers() -> tuple[int, dict[str, str], Any]:
        answer: list[tuple[int, dict[str, str], Any]] = []
        thread = threading.Thread(target=lambda: answer.append(call(stack, "GET", "/ready")))
        thread.start()
        thread.join(10)
        assert answer, "/ready gave no answer within 10 s"
        return answer[0]

    cluster.freeze()
    try:
        for _ in range(2 * WEB_WORKERS):
            status, headers, body = ready_answers()
            assert status == 503 and headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
            assert body["checks"]["database"] != "ok"
            assert body["checks"]["redis"] == "ok"
    finally:
        cluster.thaw()
    wait_until(lambda: call(stack, "GET", "/ready")[0] == 200, 30, 0.2)

    assert stack.redis.proc is not None
    os.kill(stack.redis.proc.pid, signal.SIGSTOP)
    try:
        for _ in range(2 * WEB_WORKERS):
            status, headers, body = ready_answers()
            assert status == 503 and headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
            assert body["checks"] == {"database": "ok", "redis": body["checks"]["redis"]}
            assert body["checks"]["redis"] != "ok"
    finally:
        os.kill(stack.redis.proc.pid, signal.SIGCONT)
    wait_until(lambda: call(stack, "GET", "/ready")[0] == 200, 30, 0.2)
