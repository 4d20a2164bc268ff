"""The per-organization analytics cache in Redis: `as_of`, inline refresh after deal writes,
serving from the cache, `days` variants, key layout, the generation check, Redis outages and
the refresh debounce."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from decimal import Decimal
from typing import Any

import pytest
import redis
from sqlalchemy import delete, insert, update

from crm_domain.models import Deal
from crm_domain.services.reporting import analytics_cache
from crm_domain.services.reporting.analytics_cache import AnalyticsCache
from crm_worker.consumers import inline_publisher

from .api import ApiClient, User, error_code


def _cache(app) -> AnalyticsCache:
    return app.extensions["crm_analytics"]


def _aware(value: str) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, value
    assert parsed.utcoffset() == dt.timedelta(0), value
    return parsed


def _summary(api: ApiClient, user: User, days: int | None = None) -> dict[str, Any]:
    query = {"days": days} if days is not None else None
    r = api.get("/analytics/deals/summary", user=user, org=user.org_id, query=query)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def _funnel(api: ApiClient, user: User) -> dict[str, Any]:
    r = api.get("/analytics/deals/funnel", user=user, org=user.org_id)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def _status(body: dict[str, Any], status: str) -> tuple[int, Decimal]:
    entry = body["by_status"][status]
    return entry["count"], Decimal(entry["total_amount"])


def _stage_counts(funnel: dict[str, Any]) -> dict[str, int]:
    return {s["stage"]: s["count"] for s in funnel["stages"]}


def _hash(cache: AnalyticsCache, org_id: int) -> dict[str, str]:
    raw = cache.client.hgetall(cache.org_key(org_id))
    return {k.decode(): v.decode() for k, v in raw.items()}


# --- as_of and the HTTP contract ----------------------------------------------------------------


def test_summary_and_funnel_carry_timezone_aware_as_of(api: ApiClient) -> None:
    user = api.register()
    before = dt.datetime.now(dt.UTC)
    summary = _summary(api, user)
    funnel = _funnel(api, user)
    after = dt.datetime.now(dt.UTC)
    for body in (summary, funnel):
        as_of = _aware(body["as_of"])
        assert before - dt.timedelta(seconds=1) <= as_of <= after + dt.timedelta(seconds=1)
    assert summary["days"] == 30
    assert summary["total_deals"] == 0
    assert [s["stage"] for s in funnel["stages"]] == [
        "qualification",
        "proposal",
        "negotiation",
        "closed",
    ]


@pytest.mark.parametrize("days", ["0", "366", "abc"])
def test_summary_days_out_of_range_is_400(api: ApiClient, days: str) -> None:
    user = api.register()
    r = api.get("/analytics/deals/summary", user=user, org=user.org_id, query={"days": days})
    assert r.status_code == 400
    assert error_code(r) == "VALIDATION_ERROR"


def test_analytics_requires_membership(api: ApiClient) -> None:
    user = api.register()
    other = api.register()
    r = api.get("/analytics/deals/summary", user=user, org=other.org_id)
    assert r.status_code == 403
    assert error_code(r) == "NOT_ORGANIZATION_MEMBER"
    r = api.get("/analytics/deals/funnel", user=user)
    assert r.status_code == 400
    assert error_code(r) == "ORGANIZATION_HEADER_REQUIRED"


# --- served from the cache --------------------------------------------------------------------


def test_second_get_without_writes_is_identical(api: ApiClient) -> None:
    user = api.register()
    api.deal(user, amount="150.00")
    first_summary, first_funnel = _summary(api, user), _funnel(api, user)
    assert _summary(api, user) == first_summary
    assert _funnel(api, user) == first_funnel


def test_reads_come_from_the_cache_not_the_database(api: ApiClient, app, db) -> None:
    user = api.register()
    deal = api.deal(user, amount="100.00")
    before = _summary(api, user)
    assert _status(before, "new") == (1, Decimal("100.00"))
    # A change that bypasses the service (no outbox event, no refresh) is not seen...
    with db.transaction() as session:
        session.execute(update(Deal).where(Deal.id == deal["id"]).values(amount=Decimal("999")))
    assert _summary(api, user) == before
    # ...until the organization is refreshed.
    assert _cache(app).refresh(user.org_id) is True
    after = _summary(api, user)
    assert _status(after, "new") == (1, Decimal("999.00"))
    assert _aware(after["as_of"]) > _aware(before["as_of"])


# --- inline refresh after writes ---------------------------------------------------------------


def test_every_deal_write_is_reflected_in_the_next_get(api: ApiClient) -> None:
    user = api.register()
    org = user.org_id
    first = _summary(api, user)
    assert first["total_deals"] == 0

    deal = api.deal(user, amount="100.00")
    s1 = _summary(api, user)
    assert s1["total_deals"] == 1
    assert s1["new_deals_last_n_days"] == 1
    assert _status(s1, "new") == (1, Decimal("100.00"))
    assert _aware(s1["as_of"]) > _aware(first["as_of"])
    f1 = _funnel(api, user)
    assert _stage_counts(f1)["qualification"] == 1

    r = api.patch(f"/deals/{deal['id']}", user=user, org=org, json={"amount": "250.50"})
    assert r.status_code == 200, r.get_json()
    s2 = _summary(api, user)
    assert _status(s2, "new") == (1, Decimal("250.50"))
    assert _aware(s2["as_of"]) > _aware(s1["as_of"])

    r = api.patch(f"/deals/{deal['id']}", user=user, org=org, json={"status": "won"})
    assert r.status_code == 200, r.get_json()
    s3 = _summary(api, user)
    assert _status(s3, "new") == (0, Decimal("0"))
    assert _status(s3, "won") == (1, Decimal("250.50"))
    assert Decimal(s3["avg_won_amount"]) == Decimal("250.50")

    r = api.patch(f"/deals/{deal['id']}", user=user, org=org, json={"stage": "negotiation"})
    assert r.status_code == 200, r.get_json()
    f2 = _funnel(api, user)
    assert _stage_counts(f2) == {
        "qualification": 0,
        "proposal": 0,
        "negotiation": 1,
        "closed": 0,
    }
    assert _aware(f2["as_of"]) > _aware(f1["as_of"])

    r = api.delete(f"/deals/{deal['id']}", user=user, org=org)
    assert r.status_code == 204
    s4 = _summary(api, user)
    assert s4["total_deals"] == 0
    assert _status(s4, "won") == (0, Decimal("0"))
    assert s4["avg_won_amount"] is None
    assert sum(s["count"] for s in _funnel(api, user)["stages"]) == 0


def test_rejected_write_does_not_refresh(api: ApiClient) -> None:
    user = api.register()
    deal = api.deal(user, amount="0.00")
    before = _summary(api, user)
    r = api.patch(f"/deals/{deal['id']}", user=user, org=user.org_id, json={"status": "won"})
    assert r.status_code == 400
    assert error_code(r) == "WON_REQUIRES_POSITIVE_AMOUNT"
    assert _summary(api, user) == before


def test_write_in_one_org_leaves_the_other_orgs_cache_alone(api: ApiClient) -> None:
    a, b = api.register(), api.register()
    api.deal(b, amount="77.00")
    b_before = _summary(api, b)
    api.deal(a, amount="11.00")
    assert _summary(api, b) == b_before
    assert _status(_summary(api, a), "new") == (1, Decimal("11.00"))


# --- days variants ------------------------------------------------------------------------------


def test_days_variant_cached_on_miss_and_dropped_by_refresh(api: ApiClient, app) -> None:
    cache = _cache(app)
    user = api.register()
    api.deal(user, amount="40.00")
    assert "summary:7" not in _hash(cache, user.org_id)

    week = _summary(api, user, days=7)
    assert week["days"] == 7
    assert week["new_deals_last_n_days"] == 1
    _aware(week["as_of"])
    stored = _hash(cache, user.org_id)
    assert json.loads(stored["summary:7"]) == week
    assert _summary(api, user, days=7) == week  # served from the cache
    assert _summary(api, user)["days"] == 30  # the default is a different entry

    api.deal(user, amount="60.00")  # refresh: recompute the defaults, drop the variants
    stored = _hash(cache, user.org_id)
    assert set(stored) == {"gen", "summary:30", "funnel"}
    assert json.loads(stored["summary:30"])["total_deals"] == 2

    week2 = _summary(api, user, days=7)
    assert week2["new_deals_last_n_days"] == 2
    assert _status(week2, "new") == (2, Decimal("100.00"))
    assert _aware(week2["as_of"]) > _aware(week["as_of"])
    assert json.loads(_hash(cache, user.org_id)["summary:7"]) == week2


def test_a_days_window_is_one_snapshot_even_when_the_stored_summary_lags(
    api: ApiClient, app, db
) -> None:
    """Issue 8: right after a write (its refresh not yet run) `?days=7` answered
    total_deals 3 with new_deals_last_n_days 4: the stored summary plus a live count."""
    cache = _cache(app)
    user = api.register()
    deals = [api.deal(user, amount=amount) for amount in ("10.00", "20.00", "30.00")]
    assert _summary(api, user)["total_deals"] == 3
    # A committed write whose refresh has not happened yet (as when the worker is behind).
    with db.transaction() as session:
        session.execute(
            insert(Deal).values(
                organization_id=user.org_id,
                contact_id=deals[0]["contact_id"],
                owner_id=user.id,
                title="Late",
                amount=Decimal("40.00"),
            )
        )
    assert json.loads(_hash(cache, user.org_id)["summary:30"])["total_deals"] == 3

    week = _summary(api, user, days=7)
    assert week["total_deals"] == 4
    assert week["new_deals_last_n_days"] == 4
    assert sum(v["count"] for v in week["by_status"].values()) == 4
    assert _status(week, "new") == (4, Decimal("100.00"))
    # The defaults were computed in the same scan and stored with it: one state, one as_of.
    stored = _hash(cache, user.org_id)
    default, funnel = json.loads(stored["summary:30"]), json.loads(stored["funnel"])
    assert default["as_of"] == funnel["as_of"] == week["as_of"]
    assert default["total_deals"] == 4
    assert _stage_counts(funnel)["qualification"] == 4

    # Rows gone without a refresh: the next window is consistent with the data too.
    with db.transaction() as session:
        session.execute(delete(Deal).where(Deal.id.in_([deals[1]["id"], deals[2]["id"]])))
    fortnight = _summary(api, user, days=14)
    assert fortnight["total_deals"] == fortnight["new_deals_last_n_days"] == 2
    assert _status(fortnight, "new") == (2, Decimal("50.00"))


# --- key layout ---------------------------------------------------------------------------------


def test_keys_are_per_org_and_namespaced_by_prefix_and_database(api: ApiClient, app, db) -> None:
    cache = _cache(app)
    assert cache.prefix == os.environ["REDIS_KEY_PREFIX"]
    epoch = db.identity.epoch()
    assert epoch is not None and re.fullmatch(r"[0-9a-f]{16}", epoch)
    a, b = api.register(), api.register()
    api.deal(a, amount="1234.56")
    api.deal(b, amount="6543.21")
    for user in (a, b):
        _summary(api, user)
        _summary(api, user, days=3)
        _funnel(api, user)
    assert cache.claim_refresh(a.org_id) is not None  # makes a :scheduled key exist too
    cache.release_refresh(b.org_id)  # and b's refresh started: a :started key
    try:
        pattern = re.compile(
            rf"^{re.escape(cache.prefix)}:{epoch}:analytics:"
            rf"(org:\d+(:scheduled|:started)?|refreshed|stale)$"
        )
        keys = [k.decode() for k in cache.client.scan_iter(match=f"{cache.prefix}:*")]
        assert cache.org_key(a.org_id) in keys
        assert cache.org_key(b.org_id) in keys
        assert cache.schedule_key(a.org_id) in keys
        assert cache.started_key(b.org_id) in keys
        assert cache.refreshed_key in keys  # refresh times, for /metrics
        assert cache.stale_key() in keys  # refreshes asked for and not done yet
        assert [k for k in keys if not pattern.match(k)] == []
    finally:
        cache.release_refresh(a.org_id)

    assert cache.org_key(a.org_id) == f"{cache.prefix}:{epoch}:analytics:org:{a.org_id}"
    assert cache.schedule_key(a.org_id) == f"{cache.org_key(a.org_id)}:scheduled"
    a_hash, b_hash = _hash(cache, a.org_id), _hash(cache, b.org_id)
    assert set(a_hash) == {"gen", "summary:30", "summary:3", "funnel"}
    a_text, b_text = json.dumps(a_hash), json.dumps(b_hash)
    assert "1234.56" in a_text and "6543.21" not in a_text
    assert "6543.21" in b_text and "1234.56" not in b_text
    assert 0 < cache.client.ttl(cache.org_key(a.org_id)) <= analytics_cache.KEY_TTL_SECONDS


# --- generation check ---------------------------------------------------------------------------


def test_store_with_a_stale_generation_is_rejected(api: ApiClient, app) -> None:
    cache = _cache(app)
    user = api.register()
    org = user.org_id
    api.deal(user, amount="10.00")
    assert cache.refresh(org) is True
    key = cache.org_key(org)
    before = _hash(cache, org)
    old_gen = before["gen"]

    new_gen = cache.client.hincrby(key, "gen", 1)  # a newer refresh started
    bogus = {"summary:30": {"stale": True}, "funnel": {"stale": True}}
    assert cache._store(org, old_gen, bogus, replace=True) is False
    assert cache._store(org, old_gen, {"summary:9": {"stale": True}}, replace=False) is False
    after = _hash(cache, org)
    assert after == {**before, "gen": str(new_gen)}
    assert _summary(api, user) == json.loads(before["summary:30"])

    # The current generation may store.
    assert cache._store(org, str(new_gen), {"summary:9": {"ok": 1}}, replace=False) is True
    assert json.loads(_hash(cache, org)["summary:9"]) == {"ok": 1}


def test_slow_refresh_never_overwrites_a_newer_one(api: ApiClient, app, db) -> None:
    """A refresh whose computation is overtaken by a newer refresh stores nothing."""
    shared = _cache(app)
    user = api.register()
    org = user.org_id
    deal = api.deal(user, amount="10.00")

    class SlowCache(AnalyticsCache):
        overtaken = False

        def compute_many(self, organization_id: int, fields: list[str], **kw: Any) -> Any:
            result = super().compute_many(organization_id, fields, **kw)
            if not self.overtaken:
                self.overtaken = True
                # Meanwhile the deal changes and a newer refresh runs to completion.
                with db.transaction() as session:
                    session.execute(
                        update(Deal).where(Deal.id == deal["id"]).values(amount=Decimal("20"))
                    )
                assert shared.refresh(organization_id) is True
            return result

    slow = SlowCache(shared.client, db, shared.prefix)
    assert slow.refresh(org) is False
    assert _status(_summary(api, user), "new") == (1, Decimal("20.00"))
    stored = json.loads(_hash(shared, org)["summary:30"])
    assert _status(stored, "new") == (1, Decimal("20.00"))


def test_reader_miss_does_not_overwrite_a_refresh_that_happened_meanwhile(
    api: ApiClient, app, db
) -> None:
    shared = _cache(app)
    user = api.register()
    org = user.org_id
    deal = api.deal(user, amount="5.00")

    class SlowReader(AnalyticsCache):
        def compute_many(self, organization_id: int, fields: list[str], **kw: Any) -> Any:
            result = super().compute_many(organization_id, fields, **kw)
            if "summary:14" in fields:  # the miss computes the defaults with it
                with db.transaction() as session:
                    session.execute(
                        update(Deal).where(Deal.id == deal["id"]).values(amount=Decimal("6"))
                    )
                shared.refresh(organization_id)  # drops variants, bumps the generation
            return result

    reader = SlowReader(shared.client, db, shared.prefix)
    stale = reader.get(org, "summary:14")
    assert _status(stale, "new") == (1, Decimal("5.00"))  # the reader gets its own answer
    assert "summary:14" not in _hash(shared, org)  # ...but it is not stored
    assert _status(_summary(api, user, days=14), "new") == (1, Decimal("6.00"))


# --- Redis unavailable --------------------------------------------------------------------------


def _unreachable(app, db) -> AnalyticsCache:
    """A cache whose Redis is a closed port (built like the app's client: fails fast)."""
    client = redis.Redis.from_url(
        "redis://127.0.0.1:1/0", socket_connect_timeout=0.5, socket_timeout=1
    )
    return AnalyticsCache(client, db, _cache(app).prefix)


def test_get_answers_from_the_database_when_redis_is_down(api: ApiClient, app, db) -> None:
    user = api.register()
    deal = api.deal(user, amount="300.00")
    api.deal(user, amount="200.00")
    r = api.patch(f"/deals/{deal['id']}", user=user, org=user.org_id, json={"stage": "proposal"})
    assert r.status_code == 200
    down = _unreachable(app, db)

    summary = down.get(user.org_id, "summary:30")
    assert summary["total_deals"] == 2
    assert _status(summary, "new") == (2, Decimal("500.00"))
    _aware(summary["as_of"])
    funnel = down.get(user.org_id, "funnel")
    assert _stage_counts(funnel) == {
        "qualification": 1,
        "proposal": 1,
        "negotiation": 0,
        "closed": 0,
    }
    with pytest.raises(redis.ConnectionError):
        down.refresh(user.org_id)
    none = AnalyticsCache(None, db)
    assert none.get(user.org_id, "summary:30")["total_deals"] == 2


def test_api_answers_and_writes_succeed_when_redis_is_down(
    api: ApiClient, app, db, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = api.register()
    api.deal(user, amount="12.00")
    down = _unreachable(app, db)
    monkeypatch.setitem(app.extensions, "crm_analytics", down)
    monkeypatch.setattr(db, "publisher", inline_publisher(db, down))

    deal = api.deal(user, amount="30.00")  # the inline refresh fails; the write does not
    summary = _summary(api, user)
    assert _status(summary, "new") == (2, Decimal("42.00"))
    assert _summary(api, user, days=1)["new_deals_last_n_days"] == 2
    r = api.patch(f"/deals/{deal['id']}", user=user, org=user.org_id, json={"status": "lost"})
    assert r.status_code == 200
    timeline = api.get(f"/deals/{deal['id']}/activities", user=user, org=user.org_id)
    assert [a["type"] for a in timeline.get_json()["items"]] == ["status_changed"]
    assert _status(_summary(api, user), "lost") == (1, Decimal("30.00"))


# --- debounce -----------------------------------------------------------------------------------


def test_claim_refresh_debounces_until_released(api: ApiClient, app) -> None:
    cache = _cache(app)
    org = api.register().org_id
    cache.release_refresh(org)
    try:
        assert cache.claim_refresh(org) is not None
        assert cache.claim_refresh(org) is None
        ttl = cache.client.pttl(cache.schedule_key(org))
        assert 0 < ttl <= analytics_cache.DEBOUNCE_MS
        other = api.register().org_id  # debounce is per organization
        assert cache.claim_refresh(other) is not None
        cache.release_refresh(other)
        cache.release_refresh(org)
        assert cache.client.exists(cache.schedule_key(org)) == 0
        assert cache.claim_refresh(org) is not None
        assert cache.claim_refresh(org) is None
    finally:
        cache.release_refresh(org)


def test_refreshes_of_an_organization_start_a_minimum_interval_apart(api: ApiClient, app) -> None:
    """The first change after a quiet spell waits for nothing more; one that comes right
    after a refresh started waits for the rest of the interval (the refresh it schedules
    reads it then); another organization's refresh waits for nothing."""
    cache = _cache(app)
    org, other = api.register().org_id, api.register().org_id
    interval = analytics_cache.MIN_REFRESH_INTERVAL_MS / 1000
    try:
        assert cache.claim_refresh(org) == 0.0  # no refresh started recently
        cache.release_refresh(org)  # the refresh starts
        wait = cache.claim_refresh(org)  # a change during it
        assert wait is not None and 0 < wait <= interval
        assert cache.claim_refresh(other) == 0.0
    finally:
        cache.release_refresh(org)
        cache.release_refresh(other)


def test_a_refresh_asked_for_right_after_another_started_is_delayed_to_the_interval(
    api: ApiClient, app, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crm_worker import publishing
    from crm_worker.broker import countdown

    countdowns: list[float] = []
    monkeypatch.setattr(
        publishing, "publish", lambda _name, **options: countdowns.append(options["countdown"])
    )
    cache = _cache(app)
    org = api.register().org_id
    interval = analytics_cache.MIN_REFRESH_INTERVAL_MS / 1000
    broker = publishing.celery_app.conf.broker_url
    try:
        publishing.schedule_refresh(cache, org)  # after a quiet spell: the usual short delay
        publishing.schedule_refresh(cache, org)  # one is scheduled already: nothing
        assert countdowns == [countdown(broker, publishing.REFRESH_DELAY_SECONDS)]
        cache.release_refresh(org)  # the refresh starts
        publishing.schedule_refresh(cache, org)  # a change during it
        assert len(countdowns) == 2
        assert publishing.REFRESH_DELAY_SECONDS < countdowns[1] <= countdown(broker, interval)
    finally:
        cache.release_refresh(org)
