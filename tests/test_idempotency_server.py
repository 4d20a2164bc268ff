"""Idempotency-Key under real parallelism: gunicorn as deployed (two gthread workers, eight
threads each) on the test database and a private Redis.

- 20 parallel POST /deals with one key create exactly one deal; after the 409s (if any) are
  retried, all 20 callers hold the same answer, and exactly one of them was not a replay;
- a client that times out and retries gets the original answer (its retry waits for the
  first request and replays it);
- a retry that waits longer than IDEMPOTENCY_WAIT_SECONDS gets 409 with Retry-After, and
  the replay once the first request is done.

The first request is held up where a real one could be: a test transaction locks the
contact the new deal refers to (the deal's foreign key check waits for it)."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from crm_domain.db import Database
from crm_domain.embedded import free_port
from crm_domain.models import Deal
from scripts.procfile import Process, process_env

from .stack import PrivateRedis, wait_until

WAIT_SECONDS = 3.0  # IDEMPOTENCY_WAIT_SECONDS of the server under test


@dataclass
class Server:
    base: str
    database_url: str  # for psycopg (the test's own locks)

    def post(
        self, path: str, body: Any, headers: dict[str, str], timeout: float = 30
    ) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(
            f"{self.base}/api/v1{path}",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json", **headers},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()


@pytest.fixture(scope="module")
def server(app, test_services, tmp_path_factory) -> Iterator[Server]:
    workdir = Path(tmp_path_factory.mktemp("idempotency"))
    redis = PrivateRedis(workdir)  # the drain wake-ups go here, and die with it
    redis.start()
    port = free_port()
    env = process_env(
        {
            "DATABASE_URL": test_services.database_url,
            "REDIS_URL": redis.url,
            "CELERY_BROKER_URL": redis.url,
            "REDIS_KEY_PREFIX": f"{test_services.database_name}-idem",
            "GUNICORN_BIND": f"127.0.0.1:{port}",
            "WEB_CONCURRENCY": "2",
            "WEB_THREADS": "8",
            "RATELIMIT_ENABLED": "false",
            "IDEMPOTENCY_WAIT_SECONDS": str(WAIT_SECONDS),
            "ACCESS_LOG": "0",
            "METRICS_ROOT": str(workdir / "metrics"),
        }
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    try:
        with serving(test_services, env, port, workdir) as server:
            yield server
    finally:
        redis.kill()


@contextmanager
def serving(test_services: Any, env: dict[str, str], port: int, workdir: Path) -> Iterator[Server]:
    """The Procfile's web with `env` (listening on `port`), once /health answers."""
    web = Process("web", env, log_path=workdir / "web.log")
    web.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _up(base), 30, 0.2)
        url = make_url(test_services.database_url).set(drivername="postgresql")
        yield Server(base, url.render_as_string(hide_password=False))
    finally:
        web.stop()


def _up(base: str) -> bool:
    try:
        with urllib.request.urlopen(base + "/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@dataclass
class Tenant:
    headers: dict[str, str]
    org: int
    contact: int


@pytest.fixture
def tenant(server: Server) -> Tenant:
    status, _, raw = server.post(
        "/auth/register",
        {
            "email": f"idem-{uuid.uuid4().hex[:10]}@example.com",
            "password": "StrongPassword123",
            "name": "Idem",
            "organization_name": "Idem Inc",
        },
        {},
    )
    assert status == 201, raw
    body = json.loads(raw)
    headers = {
        "Authorization": f"Bearer {body['access_token']}",
        "X-Organization-Id": str(body["organization"]["id"]),
    }
    status, _, raw = server.post("/contacts", {"name": "Buyer"}, headers)
    assert status == 201, raw
    return Tenant(headers, body["organization"]["id"], json.loads(raw)["id"])


# A new deal locks its contact first (crm_domain.services.records.deals.create_deal): where a
# create waits while `contact_locked` holds the row.
DEAL_CREATE = "SELECT contacts.%FOR UPDATE"


@contextmanager
def contact_locked(server: Server, contact_id: int) -> Iterator[None]:
    """Hold the contact's row lock: a new deal for it waits at its lock of the contact."""
    with psycopg.connect(server.database_url) as conn:
        conn.execute("SELECT 1 FROM contacts WHERE id = %s FOR UPDATE", (contact_id,))
        yield
        conn.rollback()


def waiting(server: Server, statement: str) -> int:
    """How many server connections wait on a lock in a statement starting with this (a LIKE
    pattern)."""
    with psycopg.connect(server.database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND query LIKE %s",
            (statement + "%",),
        ).fetchone()
        return int(row[0]) if row else 0


def deals(db: Database, org: int, title: str) -> list[int]:
    with db.transaction() as s:
        found = s.scalars(select(Deal.id).where(Deal.organization_id == org, Deal.title == title))
        return list(found)


def in_background(call: Any) -> tuple[threading.Thread, list[Any]]:
    """Start `call()` in a thread: (the thread, the list its answer will be in)."""
    answers: list[Any] = []
    thread = threading.Thread(target=lambda: answers.append(call()))
    thread.start()
    return thread, answers


def _post_deal(server: Server, tenant: Tenant, key: str, title: str, **kw: Any) -> Any:
    body = {"contact_id": tenant.contact, "title": title, "amount": "10.00"}
    return server.post("/deals", body, {**tenant.headers, "Idempotency-Key": key}, **kw)


def test_twenty_parallel_posts_with_one_key_make_one_deal(
    server: Server, tenant: Tenant, db: Database
) -> None:
    key, title = str(uuid.uuid4()), f"Parallel {uuid.uuid4().hex[:6]}"
    start = threading.Barrier(20)
    answers: list[tuple[int, dict[str, str], bytes]] = []
    lock = threading.Lock()

    def call() -> None:
        start.wait()
        answer = _post_deal(server, tenant, key, title)
        # The first one is still running (409), or the worker is full (503, crm_api.web_worker
        # turns away what it can neither run nor park): retry, as a client would.
        while answer[0] in (409, 503):
            assert json.loads(answer[2])["error"]["code"] in (
                "IDEMPOTENCY_KEY_IN_USE",
                "SERVICE_UNAVAILABLE",
            )
            time.sleep(float(answer[1].get("Retry-After", "1")) / 4)
            answer = _post_deal(server, tenant, key, title)
        with lock:
            answers.append(answer)

    with contact_locked(server, tenant.contact):  # all 20 arrive while the first is held up
        threads = [threading.Thread(target=call) for _ in range(20)]
        for thread in threads:
            thread.start()
        wait_until(lambda: waiting(server, DEAL_CREATE) == 1, 20, 0.05)
        # the others queue behind the first one's key (as many as the server's threads allow)
        wait_until(lambda: waiting(server, "INSERT INTO idempotency_keys") >= 8, 20, 0.05)
    for thread in threads:
        thread.join(60)
    assert len(answers) == 20
    assert {status for status, _, _ in answers} == {201}
    assert len({body for _, _, body in answers}) == 1
    originals = [a for a in answers if a[1].get("Idempotent-Replayed") != "true"]
    assert len(originals) == 1
    assert deals(db, tenant.org, title) == [json.loads(answers[0][2])["id"]]


def test_a_client_that_timed_out_and_retries_gets_the_original_answer(
    server: Server, tenant: Tenant, db: Database
) -> None:
    key, title = str(uuid.uuid4()), f"Timed out {uuid.uuid4().hex[:6]}"
    with contact_locked(server, tenant.contact):
        with pytest.raises((TimeoutError, urllib.error.URLError)):
            _post_deal(server, tenant, key, title, timeout=0.5)  # the client gives up
        assert waiting(server, DEAL_CREATE) == 1  # the server goes on
        retry, retried = in_background(lambda: _post_deal(server, tenant, key, title))
        wait_until(lambda: waiting(server, "INSERT INTO idempotency_keys") == 1, 10, 0.02)
    retry.join(30)
    status, headers, raw = retried[0]
    assert status == 201, raw
    assert headers.get("Idempotent-Replayed") == "true"
    assert deals(db, tenant.org, title) == [json.loads(raw)["id"]]


def test_a_retry_that_waits_too_long_gets_409_then_the_replay(
    server: Server, tenant: Tenant, db: Database
) -> None:
    key, title = str(uuid.uuid4()), f"Slow {uuid.uuid4().hex[:6]}"
    with contact_locked(server, tenant.contact):
        runner, first = in_background(lambda: _post_deal(server, tenant, key, title))
        wait_until(lambda: waiting(server, DEAL_CREATE) == 1, 10, 0.02)
        began = time.monotonic()
        status, headers, raw = _post_deal(server, tenant, key, title)
        waited = time.monotonic() - began
        assert status == 409, raw
        assert json.loads(raw)["error"]["code"] == "IDEMPOTENCY_KEY_IN_USE"
        assert headers["Retry-After"] == "1"
        assert waited >= WAIT_SECONDS * 0.9  # it waited for the first one before giving up
    runner.join(30)
    assert first[0][0] == 201 and "Idempotent-Replayed" not in first[0][1]
    status, headers, raw = _post_deal(server, tenant, key, title)
    assert status == 201 and headers.get("Idempotent-Replayed") == "true"
    assert raw == first[0][2]
    assert deals(db, tenant.org, title) == [json.loads(raw)["id"]]
