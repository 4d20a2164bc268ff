"""Issue 11: derived data never outlives the database it came from.

The database is recreated or restored while Redis keeps its data; whatever Redis holds from
before (analytics hashes, cached list totals) is a miss, never an answer, both for a process
started afterwards and for one that kept running across the change."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import pytest
import redis
from flask import Flask

from crm_domain.db import Database
from crm_domain.services.reporting import analytics
from crm_domain.services.reporting.analytics_cache import AnalyticsCache

from .api import ApiClient, User
from .scratch import ScratchDatabase, wait_ready, without_as_of

ZERO_STATUSES = {
    s: {"count": 0, "total_amount": "0.00"} for s in ("new", "in_progress", "won", "lost")
}


def _get(api: ApiClient, path: str, user: User, **query: Any) -> dict[str, Any]:
    r = api.get(path, user=user, org=user.org_id, query=query or None)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def _summary(api: ApiClient, user: User, days: int = 30) -> dict[str, Any]:
    return _get(api, "/analytics/deals/summary", user, days=days)


def _funnel(api: ApiClient, user: User) -> dict[str, Any]:
    return _get(api, "/analytics/deals/funnel", user)


def _parts(app: Flask) -> tuple[AnalyticsCache, Database, redis.Redis]:
    cache: AnalyticsCache = app.extensions["crm_analytics"]
    assert cache.client is not None
    return cache, app.extensions["crm_db"], cache.client


def _assert_empty(api: ApiClient, user: User) -> None:
    for days in (30, 7):
        body = _summary(api, user, days)
        assert body["total_deals"] == 0, body
        assert body["by_status"] == ZERO_STATUSES
        assert body["by_currency"] == {}
        assert body["avg_won_amount"] is None
        assert body["new_deals_last_n_days"] == 0
    assert [s["count"] for s in _funnel(api, user)["stages"]] == [0, 0, 0, 0]


def _expected(db: Database, org_id: int) -> dict[str, Any]:
    """The analytics of the rows the database holds now, computed directly."""
    with db.transaction() as session:
        return {
            "summary:30": analytics.summary(session, org_id, days=30),
            "summary:7": analytics.summary(session, org_id, days=7),
            "funnel": analytics.funnel(session, org_id),
        }


def _served(api: ApiClient, user: User) -> dict[str, Any]:
    return {
        "summary:30": without_as_of(_summary(api, user)),
        "summary:7": without_as_of(_summary(api, user, 7)),
        "funnel": without_as_of(_funnel(api, user)),
    }


# --- the report: a recreated database, Redis kept --------------------------------------------


def _previous_tenant(scratch: ScratchDatabase, app: Flask) -> tuple[User, str]:
    """Organization 1 of the first database, with deals, contacts and cached analytics."""
    api = ApiClient(app.test_client())
    alice = api.register(org_name="Previous tenant")
    assert alice.org_id == 1
    for _ in range(3):
        api.deal(alice, amount="5000.00")
    summary = _summary(api, alice)
    assert summary["total_deals"] == 3
    _summary(api, alice, 7)
    _funnel(api, alice)
    cache, _db, client = _parts(app)
    old_key = cache.org_key(alice.org_id)
    assert client.hexists(old_key, "summary:30") and client.hexists(old_key, "summary:7")
    return alice, old_key


def test_recreated_database_serves_a_new_process_nothing_of_the_previous_tenant(
    scratch: ScratchDatabase,
) -> None:
    scratch.create()
    _alice, old_key = _previous_tenant(scratch, scratch.app())

    scratch.recreate()
    fresh = scratch.app()  # e.g. the API restarted after the operator rebuilt the database
    api = ApiClient(fresh.test_client())
    bob = api.register(org_name="New tenant")
    assert bob.org_id == 1  # the id is reused...
    cache, _db, client = _parts(fresh)
    assert client.exists(old_key) == 1  # ...and Redis still has the previous org 1's figures

    _assert_empty(api, bob)  # the report: the previous tenant's figures until the first write
    assert cache.org_key(bob.org_id) != old_key
    api.deal(bob, amount="7.00")
    summary = _summary(api, bob)
    assert summary["total_deals"] == 1
    assert summary["by_status"]["new"] == {"count": 1, "total_amount": "7.00"}


def test_recreated_database_is_noticed_by_a_process_that_kept_running(
    scratch: ScratchDatabase,
) -> None:
    scratch.create()
    # An identity re-read interval far longer than the test: the process notices through the
    # new connections its pool must open (the old ones died with the database).
    app = scratch.app(check_seconds=3600)
    db = app.extensions["crm_db"]
    db.count_cache.exact_below = 2  # totals above 2 rows are "large": cached in Redis
    alice, old_key = _previous_tenant(scratch, app)
    api = ApiClient(app.test_client())
    assert _get(api, "/contacts", alice)["total"] == 3  # cached as a large total
    old_epoch = db.identity.epoch()

    scratch.recreate()
    wait_ready(api)
    bob = api.register(org_name="New tenant")
    assert bob.org_id == alice.org_id
    _, _, client = _parts(app)
    assert client.exists(old_key) == 1

    _assert_empty(api, bob)
    assert db.identity.epoch() != old_epoch
    for i in range(4):
        api.contact(bob, name=f"Bob's contact {i}")
    # This process knows the org-1 contact list as large, so it looks in Redis first: the
    # previous tenant's total (3) is still there under the old identity.
    assert _get(api, "/contacts", bob)["total"] == 4
    assert _get(api, "/deals", bob)["total"] == 0


# --- restore to an earlier state of the same database ----------------------------------------


@pytest.mark.parametrize("method", ["pg_restore", "template"])
def test_restore_to_an_earlier_state_serves_the_restored_rows(
    scratch: ScratchDatabase, method: str
) -> None:
    """pg_restore --clean of an older dump into the live database (same database, same
    installation id), or the database replaced by an older copy (CREATE DATABASE ...
    TEMPLATE): the analytics served afterwards are those of the restored rows."""
    scratch.create()
    check_seconds = 0.3
    app = scratch.app(check_seconds=check_seconds)
    _cache, db, _client = _parts(app)
    api = ApiClient(app.test_client())
    alice = api.register()
    first = api.deal(alice, amount="100.00")
    second = api.deal(alice, amount="200.00", currency="USD")
    r = api.patch(f"/deals/{second['id']}", user=alice, org=alice.org_id, json={"status": "won"})
    assert r.status_code == 200, r.get_json()
    restored_state = _served(api, alice)
    assert restored_state["summary:30"]["total_deals"] == 2
    with db.autocommit() as conn:
        installation_id = conn.exec_driver_sql("SELECT id FROM installation").scalar()

    copy = scratch.snapshot(method)

    # Writes after the snapshot, all reflected in Redis.
    api.deal(alice, amount="300.00")
    api.deal(alice, amount="400.00")
    r = api.patch(
        f"/deals/{first['id']}",
        user=alice,
        org=alice.org_id,
        json={"amount": "999.00", "stage": "proposal"},
    )
    assert r.status_code == 200, r.get_json()
    assert api.delete(f"/deals/{second['id']}", user=alice, org=alice.org_id).status_code == 204
    later = _served(api, alice)
    assert later["summary:30"]["total_deals"] == 3
    assert later["summary:30"]["by_status"]["won"]["count"] == 0

    scratch.restore(method, copy)
    if method == "template":
        wait_ready(api)  # the old database's connections were closed by the drop
    else:
        time.sleep(check_seconds + 0.1)  # the running process re-reads the identity
    with db.autocommit() as conn:  # the same database as far as its own id goes
        assert conn.exec_driver_sql("SELECT id FROM installation").scalar() == installation_id

    expected = _expected(db, alice.org_id)
    assert expected["summary:30"]["total_deals"] == 2
    assert expected["summary:30"]["by_status"]["won"] == {"count": 1, "total_amount": "200.00"}
    assert _served(api, alice) == expected == restored_state  # the process that kept running
    assert _served(ApiClient(scratch.app().test_client()), alice) == expected  # a new one

    # Writes after the restore build on the restored rows.
    api.deal(alice, amount="1.00", currency="USD")
    summary = _summary(api, alice)
    assert summary["total_deals"] == 3
    assert summary["by_currency"]["USD"]["won"] == {"count": 1, "total_amount": "200.00"}
    assert summary["by_currency"]["USD"]["new"] == {"count": 1, "total_amount": "1.00"}
    assert Decimal(summary["by_status"]["new"]["total_amount"]) == Decimal("101.00")
