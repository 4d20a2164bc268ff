"""Database outages seen from one process (issue 22), on a private PostgreSQL cluster that the
tests stop, restart and freeze (tests/pgcluster.py; never the machine's shared server):
- the first use of the pool after a restart succeeds (no false 503);
- every 503 carries Retry-After, /ready included;
- /ready answers within its deadline, naming the dependency, even with the server frozen;
- an unreachable database is logged as an outage, a changed one as a change of identity;
- an analytics refresh asked for stays marked stale until one succeeds.
The whole stack through the same outages: tests/test_db_outage_stack.py."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from crm_api import create_app
from crm_api.errors import RETRY_AFTER_SECONDS
from crm_api.health import READY_TIMEOUT_SECONDS
from crm_domain import identity as identity_module
from crm_domain import installation
from crm_domain.db import Database
from crm_domain.services.reporting.analytics_cache import AnalyticsCache, DerivedDataUnavailable
from crm_domain.settings import Settings

from .api import ApiClient, User
from .pgcluster import PrivatePostgres, back_up, private_cluster
from .stack import wait_until


@pytest.fixture(scope="module")
def private(test_services) -> Iterator[tuple[PrivatePostgres, str]]:
    yield from private_cluster()


@pytest.fixture
def cluster(private) -> Iterator[PrivatePostgres]:
    yield private[0]
    back_up(private[0])


@pytest.fixture(scope="module")
def outage_app(private, test_services) -> Iterator[Flask]:
    """An API process on the private cluster (the run's Redis, a key prefix of its own)."""
    settings = Settings(
        database_url=private[1],
        redis_url=test_services.redis_url,
        secret_key=os.environ["SECRET_KEY"],
        bcrypt_rounds=4,
        db_pool_size=2,
        redis_key_prefix=f"{test_services.database_name}-outage",
    )
    app = create_app(settings, OUTBOX_DISPATCH="inline", TESTING=True, RATELIMIT_ENABLED=False)
    yield app
    app.extensions["crm_db"].engine.dispose()


@pytest.fixture
def api(outage_app) -> ApiClient:
    return ApiClient(outage_app.test_client())


@pytest.fixture
def user(api: ApiClient) -> User:
    return api.register()


def _both_pooled(api: ApiClient, user: User) -> None:
    """Both of the pool's connections opened and back in the pool, idle (two requests at
    once each hold one)."""
    barrier = threading.Barrier(2)
    db: Database = api.client.application.extensions["crm_db"]

    def hold() -> None:
        with db.transaction() as session:
            session.execute(text("SELECT 1"))
            barrier.wait(10)

    threads = [threading.Thread(target=hold) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert db.engine.pool.checkedin() == 2  # type: ignore[attr-defined]
    assert api.get("/organizations/me", user=user).status_code == 200


# --- 2. no false 503 after a restart --------------------------------------------------------


def test_first_requests_after_a_restart_succeed(
    api: ApiClient, user: User, cluster: PrivatePostgres
) -> None:
    """Both pooled connections died with the server; each is replaced at checkout."""
    _both_pooled(api, user)
    cluster.restart()
    for _ in range(4):  # more than the pool holds: every dead connection is met
        r = api.get("/organizations/me", user=user)
        assert r.status_code == 200, r.get_json()


def test_a_workers_database_survives_a_restart(private, cluster: PrivatePostgres) -> None:
    """What a Celery task does with its process's Database (crm_worker.app.database)."""
    db = Database(private[1], pool_size=2)
    try:
        with db.transaction() as session:
            before = session.scalar(text("SELECT pg_backend_pid()"))
        cluster.restart()
        with db.transaction() as session:
            after = session.scalar(text("SELECT pg_backend_pid()"))
        assert after != before
    finally:
        db.engine.dispose()


# --- 3. Retry-After on every 503 -------------------------------------------------------------


def test_every_503_says_when_to_retry(api: ApiClient, user: User, cluster: PrivatePostgres) -> None:
    _both_pooled(api, user)
    cluster.stop()
    r = api.get("/organizations/me", user=user)
    assert r.status_code == 503
    assert r.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
    assert r.get_json()["error"]["code"] == "SERVICE_UNAVAILABLE"
    r = api.post("/contacts", user=user, org=user.org_id, json={"name": "Nobody"})
    assert r.status_code == 503 and r.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)

    ready = api.get("/ready")
    assert ready.status_code == 503
    assert ready.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
    assert ready.get_json()["checks"]["database"].startswith("error: ")
    assert ready.get_json()["checks"]["redis"] == "ok"

    cluster.start()
    wait_until(lambda: api.get("/ready").status_code == 200, 30)
    assert "Retry-After" not in api.get("/ready").headers


# --- 4. /ready within its deadline -----------------------------------------------------------


def _ready_in_thread(api: ApiClient) -> tuple[threading.Thread, dict[str, Any]]:
    answer: dict[str, Any] = {}

    def probe() -> None:
        r = api.get("/ready")
        answer.update(status=r.status_code, body=r.get_json(), headers=dict(r.headers))

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    return thread, answer


def _ready_checks() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "ready-check"]


def test_ready_answers_in_time_while_the_database_is_frozen(
    api: ApiClient, user: User, cluster: PrivatePostgres
) -> None:
    """SIGSTOP: the kernel still accepts connections, nothing answers on them. Each probe
    answers 503 naming the database ("timeout" at its deadline, or the connection's own
    timeout error once libpq gave up), and the stuck checks never pile up."""
    _both_pooled(api, user)  # a probe on the pool would take one and wait forever
    cluster.freeze()
    for attempt in range(3):
        thread, answer = _ready_in_thread(api)
        thread.join(10 * READY_TIMEOUT_SECONDS)
        assert not thread.is_alive(), "/ready gave no answer while the database was frozen"
        assert answer["status"] == 503
        checks = answer["body"]["checks"]
        assert checks["redis"] == "ok"
        if attempt == 0:  # at the deadline, before libpq's own connect timeout (2 s)
            assert checks["database"] == "timeout"
        else:
            assert checks["database"] == "timeout" or checks["database"].startswith("error: ")
        assert answer["headers"]["Retry-After"] == str(RETRY_AFTER_SECONDS)
        assert len(_ready_checks()) <= 1  # a probe waits on a stuck check, never adds one
    cluster.thaw()
    wait_until(lambda: api.get("/ready").status_code == 200, 30)
    wait_until(lambda: not _ready_checks(), 30)


# --- 5. an honest log ------------------------------------------------------------------------


def test_an_outage_is_logged_as_an_outage_and_a_new_identity_as_a_change(
    private, cluster: PrivatePostgres, caplog: pytest.LogCaptureFixture
) -> None:
    db = Database(private[1], pool_size=1)
    identity = db.identity
    caplog.set_level(logging.INFO, logger=identity_module.__name__)

    def fresh() -> str | None:
        identity.invalidate()  # read now, not after the cache's interval
        return identity.epoch()

    def said(words: str) -> list[str]:
        return [r.getMessage() for r in caplog.records if words in r.getMessage()]

    try:
        first = fresh()
        assert first is not None
        cluster.stop()
        assert fresh() is None
        assert fresh() is None
        assert len(said("database unavailable")) == 1  # once per outage, not per read
        assert said("identity changed") == []
        cluster.start()
        assert fresh() == first  # the same database back: no change to report
        assert said("identity changed") == []
        assert len(said("database available again")) == 1

        # A real change is still reported, also when it happened during an outage.
        with db.engine.begin() as conn:
            rotated = installation.rotate(conn)
        assert fresh() == rotated
        changes = said("identity changed")
        assert len(changes) == 1 and f"({first} -> {rotated})" in changes[0]
        cluster.stop()
        assert fresh() is None
        cluster.start()
        with db.engine.begin() as conn:
            again = installation.rotate(conn)
        assert fresh() == again
        assert f"({rotated} -> {again})" in said("identity changed")[-1]
        assert not [m for m in said("identity changed") if "None" in m]
    finally:
        db.engine.dispose()


# --- 1. a refresh asked for is not forgotten -------------------------------------------------


@pytest.fixture
def cache(outage_app) -> AnalyticsCache:
    return outage_app.extensions["crm_analytics"]


def _marked(cache: AnalyticsCache, org: int, key: str | None = None) -> bool:
    assert cache.client is not None
    return cache.client.zscore(key or cache.stale_key(), str(org)) is not None


def test_a_refresh_that_fails_leaves_the_organization_marked_stale(
    cache: AnalyticsCache, user: User, cluster: PrivatePostgres
) -> None:
    org = user.org_id
    cache.release_refresh(org)
    assert cache.claim_refresh(org) is not None  # asked for: marked
    assert _marked(cache, org)
    assert org in cache.stale_organizations(0)
    assert org not in cache.stale_organizations(60)  # asked for just now
    key = cache.stale_key()
    cluster.stop()
    cache.db.identity.invalidate()
    with pytest.raises((DerivedDataUnavailable, OperationalError)):
        cache.refresh(org)
    assert _marked(cache, org, key)
    cluster.start()
    cache.db.identity.invalidate()  # not a second later: the failed read is remembered that long
    assert cache.refresh(org) is True
    assert not _marked(cache, org)


def test_a_change_asked_for_during_a_refresh_keeps_the_mark(
    cache: AnalyticsCache, user: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refresh may have read the data before that change: only the next one clears."""
    org = user.org_id
    cache.release_refresh(org)
    cache.claim_refresh(org)
    compute = cache.compute_many

    def meanwhile(*args: Any, **kwargs: Any) -> Any:
        cache.release_refresh(org)
        cache.claim_refresh(org)  # another change, asked for while this one computes
        return compute(*args, **kwargs)

    monkeypatch.setattr(cache, "compute_many", meanwhile)
    assert cache.refresh(org) is True
    assert _marked(cache, org)
    monkeypatch.undo()
    assert cache.refresh(org) is True
    assert not _marked(cache, org)
    cache.release_refresh(org)
