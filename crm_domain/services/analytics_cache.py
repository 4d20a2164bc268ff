"""Precomputed analytics per organization in Redis.

One hash per organization, `<prefix>:analytics:org:<id>`, holds a generation counter `gen`
and JSON results (`summary:<days>`, `funnel`), each stamped with `as_of`. A refresh bumps the
generation first, computes from the database, then stores only if no newer refresh started
meanwhile, so a slow computation never overwrites a fresher one. Readers compute and store on
a miss (under the same generation check) and fall back to the database if Redis is down.

Every stored refresh also records its `as_of` in one sorted set per deployment,
`<prefix>:analytics:refreshed` (organization id -> time), so the age of the stalest
organization's figures is one `ZRANGE` away (the API's /metrics reports it)."""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

import redis

from ..db import Database
from . import analytics

log = logging.getLogger(__name__)

DEFAULT_DAYS = 30
KEY_TTL_SECONDS = 7 * 24 * 3600
DEBOUNCE_MS = 2000
FUNNEL_FIELD = "funnel"

# Store fields only if the generation is still ARGV[1]; ARGV[2] = 1 drops other fields first.
_STORE_IF_CURRENT = """
local gen = redis.call('HGET', KEYS[1], 'gen') or '0'
if gen ~= ARGV[1] then return 0 end
if ARGV[2] == '1' then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'gen', gen)
end
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""


def summary_field(days: int) -> str:
    return f"summary:{days}"


class AnalyticsCache:
    """`prefix` namespaces the keys (one per deployment/database sharing a Redis)."""

    def __init__(self, client: redis.Redis | None, db: Database, prefix: str = "crm") -> None:
        self.client = client
        self.db = db
        self.prefix = prefix

    def org_key(self, organization_id: int) -> str:
        return f"{self.prefix}:analytics:org:{organization_id}"

    @property
    def refreshed_key(self) -> str:
        return f"{self.prefix}:analytics:refreshed"

    def schedule_key(self, organization_id: int) -> str:
        return f"{self.prefix}:analytics:org:{organization_id}:scheduled"

    def compute(self, organization_id: int, field: str) -> dict[str, Any]:
        return self.compute_many(organization_id, [field])[field]

    def compute_many(
        self, organization_id: int, fields: list[str], base: dict[str, Any] | None = None
    ) -> dict[str, dict[str, Any]]:
        """Results from the database: one scan of the organization's deals for all `fields`.

        With `base` (a stored default summary), a summary of another `days` window is derived
        from it: only the new-deals count differs, so one indexed count replaces the scan."""
        as_of = dt.datetime.now(dt.UTC)
        results: dict[str, dict[str, Any]] = {}
        with self.db.transaction() as session:
            aggs: list[analytics.Aggregate] | None = None
            for field in fields:
                if field == FUNNEL_FIELD:
                    aggs = (
                        aggs if aggs is not None else analytics.aggregates(session, organization_id)
                    )
                    results[field] = {**analytics.funnel_from(aggs), "as_of": as_of.isoformat()}
                    continue
                days = int(field.split(":", 1)[1])
                if base is not None:
                    since = dt.datetime.fromisoformat(base["as_of"]) - dt.timedelta(days=days)
                    new_deals = analytics.new_deals_since(session, organization_id, since)
                    results[field] = {**base, "new_deals_last_n_days": new_deals, "days": days}
                    continue
                aggs = aggs if aggs is not None else analytics.aggregates(session, organization_id)
                since = as_of - dt.timedelta(days=days)
                new_deals = analytics.new_deals_since(session, organization_id, since)
                summary = analytics.summary_from(aggs, new_deals=new_deals, days=days)
                results[field] = {**summary, "as_of": as_of.isoformat()}
        return results

    def _redis(self) -> redis.Redis:
        if self.client is None:
            raise redis.ConnectionError("no Redis configured")
        return self.client

    def _store(
        self, organization_id: int, gen: str, fields: dict[str, Any], *, replace: bool
    ) -> bool:
        args: list[Any] = [gen, "1" if replace else "0", KEY_TTL_SECONDS]
        for name, value in fields.items():
            args += [name, json.dumps(value)]
        key = self.org_key(organization_id)
        return bool(self._redis().eval(_STORE_IF_CURRENT, 1, key, *args))

    def refresh(self, organization_id: int) -> bool:
        """Recompute the default results and drop the other cached variants."""
        gen = str(self._redis().hincrby(self.org_key(organization_id), "gen", 1))
        fields = self.compute_many(organization_id, [summary_field(DEFAULT_DAYS), FUNNEL_FIELD])
        stored = self._store(organization_id, gen, fields, replace=True)
        if stored:
            as_of = dt.datetime.fromisoformat(fields[FUNNEL_FIELD]["as_of"])
            self._redis().zadd(self.refreshed_key, {str(organization_id): as_of.timestamp()})
        return stored

    def oldest_refresh(self) -> dt.datetime | None:
        """When the organization refreshed longest ago was refreshed (None: none recorded)."""
        oldest = self._redis().zrange(self.refreshed_key, 0, 0, withscores=True)
        return dt.datetime.fromtimestamp(oldest[0][1], dt.UTC) if oldest else None

    def get(self, organization_id: int, field: str) -> dict[str, Any]:
        """The cached result, or a fresh one (stored for the next reader)."""
        return dict(json.loads(self.get_json(organization_id, field)))

    def get_json(self, organization_id: int, field: str) -> bytes:
        """Like `get`, as the stored JSON document (served as is: no re-encoding)."""
        if self.client is not None:
            try:
                default = summary_field(DEFAULT_DAYS)
                cached, gen, base = self.client.hmget(
                    self.org_key(organization_id), [field, "gen", default]
                )
                if cached is not None:
                    return bytes(cached)
                derive_from = json.loads(base) if field != FUNNEL_FIELD and base else None
                result = self.compute_many(organization_id, [field], derive_from)[field]
                self._store(organization_id, (gen or b"0").decode(), {field: result}, replace=False)
                return json.dumps(result).encode()
            except redis.RedisError:
                log.warning("analytics cache unavailable; answering from the database")
        return json.dumps(self.compute(organization_id, field)).encode()

    def claim_refresh(self, organization_id: int) -> bool:
        """Debounce: True for the first caller in DEBOUNCE_MS, who then schedules the refresh."""
        key = self.schedule_key(organization_id)
        return bool(self._redis().set(key, "1", nx=True, px=DEBOUNCE_MS))

    def release_refresh(self, organization_id: int) -> None:
        """Called when a refresh starts: later changes schedule another one."""
        self._redis().delete(self.schedule_key(organization_id))
