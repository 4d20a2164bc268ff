"""The database identity (crm_domain.identity; commands in crm_domain.installation): one row
made by migration 0005, read once per process per interval (not per request), again after a
new pool connection, changed by `rotate`; without it nothing derived is cached."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
import redis
from sqlalchemy import text, update
from sqlalchemy.exc import IntegrityError

from crm_domain import identity, installation
from crm_domain.db import Database
from crm_domain.models import Deal
from crm_domain.services.reporting.analytics_cache import AnalyticsCache

from .api import ApiClient
from .scratch import ScratchDatabase
from .sql import Executed, executed


@pytest.fixture
def identity_reads(db: Database) -> Iterator[list[Executed]]:
    """The identity queries the app's engine runs while the test does."""
    with executed(db.engine, "FROM installation") as seen:
        yield seen


def test_migration_makes_exactly_one_installation_row(db: Database) -> None:
    with db.autocommit() as conn:
        rows = conn.execute(text("SELECT id, created_at FROM installation")).all()
    assert len(rows) == 1
    assert isinstance(rows[0].id, uuid.UUID)
    with pytest.raises(IntegrityError), db.transaction() as session:
        session.execute(text("INSERT INTO installation DEFAULT VALUES"))
    with pytest.raises(IntegrityError), db.transaction() as session:
        session.execute(text("INSERT INTO installation (singleton) VALUES (false)"))


def test_epoch_is_read_once_per_interval_not_per_request(
    api: ApiClient, db: Database, identity_reads: list[Executed], monkeypatch: pytest.MonkeyPatch
) -> None:
    user = api.register()
    api.deal(user, amount="10.00")
    monkeypatch.setattr(db.identity, "check_seconds", 60.0)

    def summary() -> None:
        r = api.get("/analytics/deals/summary", user=user, org=user.org_id)
        assert r.status_code == 200
        assert r.get_json()["total_deals"] == 1

    summary()  # cached in Redis from here on
    identity_reads.clear()
    for _ in range(20):
        summary()
    assert identity_reads == []  # served from Redis: no identity query per request

    db.identity.check_seconds = 0.2
    db.identity.invalidate()
    summary()
    assert len(identity_reads) == 1
    time.sleep(0.3)
    summary()
    assert len(identity_reads) == 2  # one read per interval


def test_a_new_pool_connection_makes_the_identity_be_read_again(
    db: Database, identity_reads: list[Executed], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db.identity, "check_seconds", 60.0)
    epoch = db.identity.epoch()
    identity_reads.clear()
    assert db.identity.epoch() == epoch
    assert identity_reads == []

    db.engine.dispose()  # the next checkout opens a new connection
    with db.autocommit() as conn:
        conn.execute(text("SELECT 1"))
    assert db.identity.epoch() == epoch
    assert len(identity_reads) == 1


def test_rotate_gives_a_new_epoch_that_running_processes_follow(
    scratch: ScratchDatabase, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    scratch.create()
    app = scratch.app(check_seconds=0.3)
    db: Database = app.extensions["crm_db"]
    cache = app.extensions["crm_analytics"]
    api = ApiClient(app.test_client())
    user = api.register()
    deal = api.deal(user, amount="100.00")

    def new_amount() -> str:
        r = api.get("/analytics/deals/summary", user=user, org=user.org_id)
        assert r.status_code == 200
        return str(r.get_json()["by_status"]["new"]["total_amount"])

    assert new_amount() == "100.00"
    old_key = cache.org_key(user.org_id)
    # A change Redis does not know about (no outbox event): the cache keeps answering 100.
    with db.transaction() as session:
        session.execute(update(Deal).where(Deal.id == deal["id"]).values(amount=Decimal("555")))
    assert new_amount() == "100.00"

    monkeypatch.setenv("DATABASE_URL", scratch.url)
    monkeypatch.setenv("REDIS_KEY_PREFIX", scratch.prefix)
    assert installation.main(["show"]) == 0
    before = json.loads(capsys.readouterr().out)
    assert before["epoch"] == db.identity.epoch()
    assert installation.main(["rotate"]) == 0
    capsys.readouterr()
    assert installation.main(["show"]) == 0
    after = json.loads(capsys.readouterr().out)
    assert after["installation_id"] != before["installation_id"]
    assert after["epoch"] != before["epoch"]

    time.sleep(0.4)  # this process re-reads the identity within INSTALLATION_CHECK_SECONDS
    assert new_amount() == "555.00"
    assert db.identity.epoch() == after["epoch"]
    assert cache.org_key(user.org_id) != old_key
    assert cache.client.exists(old_key) == 1  # left to expire (or to purge-redis)


def test_results_computed_after_the_identity_changed_are_never_filed_under_the_old_one(
    scratch: ScratchDatabase,
) -> None:
    """The identity changes (a restore, a rotation) while a refresh, or a reader's miss,
    computes: what it read belongs to the new database, so nothing of it is stored under the
    epoch the computation started with (this process still believes in that one)."""
    scratch.create()
    app = scratch.app(check_seconds=60.0)
    db: Database = app.extensions["crm_db"]
    shared: AnalyticsCache = app.extensions["crm_analytics"]
    api = ApiClient(app.test_client())
    user = api.register()
    deal = api.deal(user, amount="100.00")  # stored under the first epoch by the inline refresh
    with db.transaction() as session:  # a change Redis knows nothing about
        session.execute(update(Deal).where(Deal.id == deal["id"]).values(amount=Decimal("555")))
    epochs = [db.identity.epoch()]

    class RotatedMidCompute(AnalyticsCache):
        """The identity changes once, just before the computation reads the database."""

        rotate = True

        def compute_many(self, organization_id: int, fields: list[str], **kw: Any) -> Any:
            if self.rotate:
                self.rotate = False
                with db.engine.begin() as conn:
                    epochs.append(installation.rotate(conn))
            return super().compute_many(organization_id, fields, **kw)

    def stored(epoch: str | None) -> dict[str, Any]:
        raw = shared.client.hgetall(shared.org_key(user.org_id, epoch))
        return {k.decode(): json.loads(v) for k, v in raw.items() if k != b"gen"}

    def new_total(result: dict[str, Any]) -> str:
        return str(result["by_status"]["new"]["total_amount"])

    def refreshed_at(epoch: str | None) -> float | None:
        return shared.client.zscore(shared.refreshed_key_of(epoch), str(user.org_id))

    before = stored(epochs[0]), refreshed_at(epochs[0])
    cache = RotatedMidCompute(shared.client, db, shared.prefix)
    assert cache.refresh(user.org_id) is True
    first, second = epochs
    assert first != second and db.identity.epoch() == second
    assert (stored(first), refreshed_at(first)) == before  # untouched
    assert new_total(before[0]["summary:30"]) == "100.00"
    assert new_total(stored(second)["summary:30"]) == "555.00"
    assert refreshed_at(second) is not None

    cache.rotate = True  # a reader's miss, with the identity changing under it again
    assert new_total(cache.get(user.org_id, "summary:14")) == "555.00"
    third = epochs[-1]
    assert third != second
    assert "summary:14" not in stored(second)
    assert set(stored(second)) == {"summary:30", "funnel"}


def test_purge_redis_deletes_derived_keys_of_other_epochs_only(
    db: Database, test_services, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = f"{test_services.database_name}-purge"
    monkeypatch.setenv("REDIS_KEY_PREFIX", prefix)
    client = redis.Redis.from_url(test_services.redis_url)
    current = db.identity.epoch()
    assert current is not None
    other = "0123456789abcdef"
    keep = [
        f"{prefix}:{current}:analytics:org:1",
        f"{prefix}:{current}:analytics:org:1:scheduled",
        f"{prefix}:{current}:count:abc",
        f"{prefix}:outbox:drain",
    ]
    drop = [
        f"{prefix}:{other}:analytics:org:1",
        f"{prefix}:{other}:analytics:org:2:scheduled",
        f"{prefix}:{other}:count:abc",
        f"{prefix}:analytics:org:1",  # the layout before epochs
        f"{prefix}:count:abc",
    ]
    try:
        for key in keep + drop:
            client.set(key, "1", ex=60)
        assert installation.main(["purge-redis"]) == 0
        left = sorted(k.decode() for k in client.scan_iter(match=f"{prefix}:*"))
        assert left == sorted(keep)
    finally:
        for key in keep + drop:
            client.delete(key)


def test_without_an_identity_nothing_is_cached_and_answers_still_come(
    scratch: ScratchDatabase,
) -> None:
    # As if the code were deployed before migration 0005 ran: no installation table (it is
    # set aside, and put back below as the migration would create it; later migrations add
    # columns the code needs, so the database cannot simply stop at 0005's parent).
    scratch.create()
    with psycopg.connect(scratch.url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute("ALTER TABLE installation RENAME TO installation_set_aside")
    app = scratch.app()
    db: Database = app.extensions["crm_db"]
    db.count_cache.exact_below = 2
    cache = app.extensions["crm_analytics"]
    api = ApiClient(app.test_client())
    user = api.register()
    for amount in ("1.00", "2.00", "3.00"):
        api.deal(user, amount=amount)  # the inline refresh is skipped; the write succeeds
    r = api.get("/analytics/deals/summary", user=user, org=user.org_id, query={"days": 7})
    assert r.status_code == 200
    assert r.get_json()["by_status"]["new"] == {"count": 3, "total_amount": "6.00"}
    assert api.get("/contacts", user=user, org=user.org_id).get_json()["total"] == 3
    assert list(cache.client.scan_iter(match=f"{scratch.prefix}:*")) == []

    with psycopg.connect(scratch.url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute("ALTER TABLE installation_set_aside RENAME TO installation")
    time.sleep(identity.RETRY_SECONDS + 0.1)
    r = api.get("/analytics/deals/summary", user=user, org=user.org_id)
    assert r.get_json()["total_deals"] == 3
    epoch = db.identity.epoch()
    assert epoch is not None
    keys = [k.decode() for k in cache.client.scan_iter(match=f"{scratch.prefix}:*")]
    assert keys and all(re.match(rf"{re.escape(scratch.prefix)}:{epoch}:", k) for k in keys)
