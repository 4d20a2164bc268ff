"""List totals: exact when small, counted once per TTL when large (crm_domain.counting)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import insert, select

from crm_domain.counting import LargeCountCache
from crm_domain.db import Database
from crm_domain.models import Contact

from .api import ApiClient


@pytest.fixture
def small_threshold(db: Database, test_services) -> Iterator[LargeCountCache]:
    """The app's Database with a count cache that calls anything above 5 rows large."""
    client = redis.Redis.from_url(test_services.redis_url)
    cache = LargeCountCache(
        client,
        f"{test_services.database_name}-count",
        identity=db.identity,
        exact_below=5,
        ttl=60,
    )
    previous = db.count_cache
    db.count_cache = cache
    try:
        yield cache
    finally:
        db.count_cache = previous
        for key in client.scan_iter(f"{cache.prefix}:*:count:*"):
            client.delete(key)


def _add_contacts(db: Database, org_id: int, owner_id: int, n: int) -> None:
    with db.transaction() as s:
        s.execute(
            insert(Contact),
            [{"organization_id": org_id, "owner_id": owner_id, "name": f"C{i}"} for i in range(n)],
        )


def test_large_totals_are_cached_small_ones_exact(
    api: ApiClient, db: Database, small_threshold: LargeCountCache
) -> None:
    big, small = api.register(), api.register()
    _add_contacts(db, big.org_id, big.id, 12)
    _add_contacts(db, small.org_id, small.id, 3)

    assert api.get("/contacts", user=big, org=big.org_id).get_json()["total"] == 12
    _add_contacts(db, big.org_id, big.id, 1)
    # Within the TTL a large total comes from the cache ...
    assert api.get("/contacts", user=big, org=big.org_id).get_json()["total"] == 12
    # ... and is counted again once the entry is gone.
    rows = select(Contact.id).where(Contact.organization_id == big.org_id)
    assert small_threshold.client is not None
    assert small_threshold.client.delete(small_threshold.key(rows)) == 1
    assert api.get("/contacts", user=big, org=big.org_id).get_json()["total"] == 13

    # A small total is always exact and never stored.
    assert api.get("/contacts", user=small, org=small.org_id).get_json()["total"] == 3
    _add_contacts(db, small.org_id, small.id, 1)
    assert api.get("/contacts", user=small, org=small.org_id).get_json()["total"] == 4
    small_rows = select(Contact.id).where(Contact.organization_id == small.org_id)
    assert small_threshold.client.get(small_threshold.key(small_rows)) is None


def test_filters_have_their_own_totals(
    api: ApiClient, db: Database, small_threshold: LargeCountCache
) -> None:
    user = api.register()
    _add_contacts(db, user.org_id, user.id, 8)
    for i in range(7):
        api.contact(user, name=f"Zed {i}")
    assert api.get("/contacts", user=user, org=user.org_id).get_json()["total"] == 15
    r = api.get("/contacts", user=user, org=user.org_id, query={"search": "zed"})
    assert r.get_json()["total"] == 7


def test_without_redis_totals_are_exact(db: Database, api: ApiClient) -> None:
    cache = LargeCountCache(
        redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2),
        identity=db.identity,
        exact_below=2,
    )
    user = api.register()
    _add_contacts(db, user.org_id, user.id, 6)
    with db.transaction() as s:
        rows = select(Contact.id).where(Contact.organization_id == user.org_id)
        assert cache.count(s, rows) == 6
        _add_contacts(db, user.org_id, user.id, 1)
    with db.transaction() as s:
        assert cache.count(s, rows) == 7
