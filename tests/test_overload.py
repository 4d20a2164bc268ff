"""Overload: a web worker as the Procfile runs it (gunicorn, crm_api.web_worker), one process
of eight threads, WEB_MAX_QUEUED=3, flooded with more slow writes than it runs and parks.

The writes are held up where real ones could be: a test transaction locks the contact the new
deals refer to, so the first WEB_MAX_RUNNING (threads less one: 7) wait at their foreign key
check inside the application. The next three wait in the worker's queue; every one past that
gets 503 with Retry-After and the unified error body at once, while the lock is still held
(no timeout, no waiting for a thread), and /health still answers meanwhile. Once the lock
goes, the running and the parked writes are answered 201, and every 201 is committed."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crm_domain.db import Database
from crm_domain.embedded import free_port
from scripts.procfile import process_env

from .stack import wait_until
from .test_idempotency_server import (
    DEAL_CREATE,
    Server,
    Tenant,
    contact_locked,
    deals,
    serving,
    tenant,  # noqa: F401 (a fixture, on this module's server)
    waiting,
)

THREADS = 8
RUNNING = THREADS - 1  # WEB_MAX_RUNNING's default
QUEUED = 3
FLOOD = RUNNING + QUEUED + 20


@pytest.fixture(scope="module")
def server(app, test_services, tmp_path_factory) -> Iterator[Server]:
    workdir = Path(tmp_path_factory.mktemp("overload"))
    port = free_port()
    env = process_env(
        {
            "DATABASE_URL": test_services.database_url,
            "REDIS_URL": test_services.redis_url,
            "REDIS_KEY_PREFIX": f"{test_services.database_name}-overload",
            "GUNICORN_BIND": f"127.0.0.1:{port}",
            "WEB_CONCURRENCY": "1",
            "WEB_THREADS": str(THREADS),
            "WEB_MAX_QUEUED": str(QUEUED),
            "RATELIMIT_ENABLED": "false",
            "ACCESS_LOG": "0",
            "METRICS_ROOT": str(workdir / "metrics"),
        }
    )
    for knob in ("WEB_WORKER_CLASS", "WEB_MAX_RUNNING"):
        env.pop(knob, None)  # the defaults are what is under test
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with serving(test_services, env, port, workdir) as server:
        yield server


def _health_seconds(base: str) -> float:
    started = time.monotonic()
    with urllib.request.urlopen(base + "/health", timeout=10) as r:
        assert r.status == 200
    return time.monotonic() - started


def test_past_its_queue_a_worker_answers_503_at_once_and_commits_every_201(
    server: Server,
    tenant: Tenant,  # noqa: F811
    db: Database,
) -> None:
    title = f"Flood {uuid.uuid4().hex[:6]}"
    answers: list[tuple[int, dict[str, str], bytes, float]] = []
    lock = threading.Lock()

    def call() -> None:
        started = time.monotonic()
        body = {"contact_id": tenant.contact, "title": title, "amount": "10.00"}
        status, headers, raw = server.post("/deals", body, tenant.headers, timeout=120)
        with lock:
            answers.append((status, headers, raw, time.monotonic() - started))

    def answered(status: int) -> list[Any]:
        with lock:
            return [a for a in answers if a[0] == status]

    with contact_locked(server, tenant.contact):
        threads = [threading.Thread(target=call) for _ in range(FLOOD)]
        for thread in threads:
            thread.start()
        # the excess is turned away while every admitted write is still held up
        wait_until(lambda: len(answered(503)) == FLOOD - RUNNING - QUEUED, 30, 0.05)
        assert waiting(server, DEAL_CREATE) == RUNNING  # the parked ones wait
        assert len(answers) == FLOOD - RUNNING - QUEUED
        assert _health_seconds(server.base) < 5  # a probe is never queued behind the flood
        for _, headers, raw, seconds in answered(503):
            assert headers["Retry-After"] == "1"
            assert json.loads(raw)["error"]["code"] == "SERVICE_UNAVAILABLE"
            assert seconds < 10, seconds  # not a timeout: the lock is held much longer
    for thread in threads:
        thread.join(60)
    created = answered(201)
    assert len(created) == RUNNING + QUEUED, sorted(a[0] for a in answers)
    assert len(answers) == FLOOD
    ids = sorted(json.loads(raw)["id"] for _, _, raw, _ in created)
    assert sorted(deals(db, tenant.org, title)) == ids  # every 201 is committed, nothing else
    assert _health_seconds(server.base) < 5
