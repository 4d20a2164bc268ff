"""Precomputed analytics per organization in Redis.

One hash per organization and database identity, `<prefix>:<epoch>:analytics:org:<id>`
(the epoch names the database the figures come from, see crm_domain.identity: after the
database is recreated or restored, the old hashes are simply never read again), holds a
generation counter `gen` and JSON results (`summary:<days>`, `funnel`), each stamped with
`as_of`. A refresh bumps the generation first, computes from the database, then stores only
if no newer refresh started meanwhile, so a slow computation never overwrites a fresher one.
Readers compute and store on a miss (under the same generation check) and fall back to the
database if Redis is down.

Every result comes from one statement (analytics.snapshot), so one response is one state of
the data: a `days` window is computed with the default results in one scan when first asked
for, never patched onto a stored result with a live count. A result is stored only under the
epoch read in the same snapshot as its data, so it is never filed under another database.

Every stored refresh also records its `as_of` in one sorted set per deployment and epoch,
`<prefix>:<epoch>:analytics:refreshed` (organization id -> time), so the age of the stalest
organization's figures is one `ZRANGE` away (the API's /metrics reports it).

A refresh that was asked for and has not succeeded yet is never forgotten: asking marks the
organization stale in `<prefix>:<epoch>:analytics:stale` (organization id -> when it was last
asked for, in Redis's own milliseconds, strictly increasing per organization), and only a
refresh that stored its results removes the mark, and only if no one asked again after it
started (that later change may be missing from what it read). A refresh that gives up during
an outage leaves the mark; `stale_organizations` finds the marks nobody acted on for a while
(beat's sweep asks again)."""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any, NamedTuple, cast

import redis

from ...db import Database
from . import analytics, analytics_by_field

log = logging.getLogger(__name__)

DEFAULT_DAYS = 30
KEY_TTL_SECONDS = 7 * 24 * 3600
DEBOUNCE_MS = 2000
# Refreshes of one organization start at least this far apart: under a stream of writes its
# figures are recomputed about once a second (each a scan of its deals) instead of after
# every drain, and a change waits at most this long (plus the drain and the computation)
# for figures that include it.
MIN_REFRESH_INTERVAL_MS = 1000
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


# Mark ARGV[1] stale (KEYS[1]) with Redis's time in ms, later than its previous mark, then
# claim its debounce key (KEYS[2], for ARGV[2] ms). Claimed: the ms until the last refresh's
# start is MIN_REFRESH_INTERVAL_MS old (KEYS[3]'s time to live; 0 if none started that
# recently). Not claimed: -1.
_MARK_AND_CLAIM = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local previous = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]) or '0')
if now <= previous then now = previous + 1 end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[2]) then
  return math.max(redis.call('PTTL', KEYS[3]), 0)
end
return -1
"""

# Remove ARGV[1]'s stale mark if it is still the one seen when the refresh started (ARGV[2]).
_CLEAR_IF_UNCHANGED = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
"""

# The marks older than ARGV[1] ms by Redis's clock.
_STALE_BEFORE = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
"""


def summary_field(days: int) -> str:
    return f"summary:{days}"


DEFAULT_FIELDS = (summary_field(DEFAULT_DAYS), FUNNEL_FIELD)


class DerivedDataUnavailable(redis.RedisError):
    """The database's identity cannot be read, so nothing in Redis can be trusted or stored.
    A RedisError: every caller's "Redis is unavailable" path applies."""


class Computed(NamedTuple):
    epoch: str | None  # the identity of the database the results were read from
    results: dict[str, dict[str, Any]]


class AnalyticsCache:
    """`prefix` namespaces the keys (one per deployment sharing a Redis); the database's
    identity (`db.identity`) is part of every key."""

    def __init__(self, client: redis.Redis | None, db: Database, prefix: str = "crm") -> None:
        self.client = client
        self.db = db
        self.prefix = prefix

    def epoch(self) -> str:
        """This process's view of the database identity (cached, see crm_domain.identity)."""
        epoch = self.db.identity.epoch()
        if epoch is None:
            raise DerivedDataUnavailable("database identity unknown")
        return epoch

    def org_key(self, organization_id: int, epoch: str | None = None) -> str:
        return f"{self.prefix}:{epoch or self.epoch()}:analytics:org:{organization_id}"

    def schedule_key(self, organization_id: int, epoch: str | None = None) -> str:
        return f"{self.org_key(organization_id, epoch)}:scheduled"

    def started_key(self, organization_id: int, epoch: str | None = None) -> str:
        """Exists for MIN_REFRESH_INTERVAL_MS after a refresh of the organization started."""
        return f"{self.org_key(organization_id, epoch)}:started"

    def refreshed_key_of(self, epoch: str | None = None) -> str:
        return f"{self.prefix}:{epoch or self.epoch()}:analytics:refreshed"

    @property
    def refreshed_key(self) -> str:
        return self.refreshed_key_of()

    def stale_key(self, epoch: str | None = None) -> str:
        return f"{self.prefix}:{epoch or self.epoch()}:analytics:stale"

    def compute(self, organization_id: int, field: str) -> dict[str, Any]:
        """One result from the database (nothing stored)."""
        return self.compute_many(organization_id, [field], identify=False).results[field]

    def compute_many(
        self,
        organization_id: int,
        fields: list[str],
        *,
        identify: bool = True,
        select_fields: bool = False,
    ) -> Computed:
        """Results from the database, all from one scan of the organization's deals (the
        `by_field:<key>` ones one more each; with `select_fields`, every select custom
        field's; a field that is no select field any more is left out), with the database
        identity read in the same snapshot (`identify`)."""
        as_of = dt.datetime.now(dt.UTC)
        custom = [f for f in fields if f.startswith(analytics_by_field.FIELD_PREFIX)]
        fields = [f for f in fields if f not in custom]
        windows = [int(f.split(":", 1)[1]) for f in fields if f != FUNNEL_FIELD]
        with self.db.transaction() as session:
            epoch = None
            if identify:  # identity and deals from one snapshot
                session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
                epoch = self.db.identity.read(session)
            snap = analytics.snapshot(session, organization_id, as_of=as_of, windows=windows)
            if select_fields:
                custom += analytics_by_field.select_fields(session, organization_id)
            by_field = {
                f: analytics_by_field.by_field(
                    session, organization_id, f.removeprefix(analytics_by_field.FIELD_PREFIX)
                )
                for f in dict.fromkeys(custom)
            }
        stamp = as_of.isoformat()
        results: dict[str, dict[str, Any]] = {
            f: {**figures, "as_of": stamp} for f, figures in by_field.items() if figures is not None
        }
        for field in fields:
            if field == FUNNEL_FIELD:
                results[field] = {**snap.funnel(), "as_of": stamp}
            else:
                results[field] = {**snap.summary(int(field.split(":", 1)[1])), "as_of": stamp}
        return Computed(epoch, results)

    def _redis(self) -> redis.Redis:
        if self.client is None:
            raise redis.ConnectionError("no Redis configured")
        return self.client

    def _store(
        self,
        organization_id: int,
        gen: str,
        fields: dict[str, Any],
        *,
        replace: bool,
        epoch: str | None = None,
    ) -> bool:
        args: list[Any] = [gen, "1" if replace else "0", KEY_TTL_SECONDS]
        for name, value in fields.items():
            args += [name, json.dumps(value)]
        key = self.org_key(organization_id, epoch)
        return bool(self._redis().eval(_STORE_IF_CURRENT, 1, key, *args))

    def _start(self, organization_id: int, epoch: str) -> tuple[str, float | None]:
        """A new generation (the hash expires even if the computation never stores), and the
        organization's stale mark as it is now (None: not marked)."""
        key = self.org_key(organization_id, epoch)
        pipe = self._redis().pipeline()
        pipe.zscore(self.stale_key(epoch), str(organization_id))
        pipe.hincrby(key, "gen", 1)
        pipe.expire(key, KEY_TTL_SECONDS)
        mark, gen, _ = pipe.execute()
        return str(gen), mark

    def refresh(self, organization_id: int) -> bool:
        """Recompute the default results and drop the other cached variants; a stored
        refresh clears the organization's stale mark unless it was asked for again since."""
        for _attempt in range(2):
            epoch = self.epoch()
            gen, mark = self._start(organization_id, epoch)
            computed = self.compute_many(organization_id, list(DEFAULT_FIELDS), select_fields=True)
            if computed.epoch == epoch:
                stored = self._store(
                    organization_id, gen, computed.results, replace=True, epoch=epoch
                )
                if stored:
                    as_of = dt.datetime.fromisoformat(computed.results[FUNNEL_FIELD]["as_of"])
                    pipe = self._redis().pipeline()
                    pipe.zadd(
                        self.refreshed_key_of(epoch), {str(organization_id): as_of.timestamp()}
                    )
                    if mark is not None:
                        pipe.eval(
                            _CLEAR_IF_UNCHANGED,
                            1,
                            self.stale_key(epoch),
                            str(organization_id),
                            repr(mark),
                        )
                    pipe.execute()
                return stored
            # The database changed identity meanwhile (recreated, restored, rotated): the
            # results belong under the new one; `compute_many` made it this process's epoch.
        return False

    def oldest_refresh(self) -> dt.datetime | None:
        """When the organization refreshed longest ago was refreshed (None: none recorded)."""
        # (redis-py types sync answers as `Awaitable | Any`: this is the sync client)
        oldest = cast(
            "list[tuple[bytes, float]]",
            self._redis().zrange(self.refreshed_key, 0, 0, withscores=True),
        )
        return dt.datetime.fromtimestamp(oldest[0][1], dt.UTC) if oldest else None

    def get(self, organization_id: int, field: str) -> dict[str, Any]:
        """The cached result, or a fresh one (stored for the next reader)."""
        return dict(json.loads(self.get_json(organization_id, field)))

    def get_json(self, organization_id: int, field: str) -> bytes:
        """Like `get`, as the stored JSON document (served as is: no re-encoding)."""
        if self.client is not None:
            try:
                epoch = self.epoch()
                cached, gen = cast(
                    "list[bytes | None]",
                    self.client.hmget(self.org_key(organization_id, epoch), [field, "gen"]),
                )
                if cached is not None:
                    return bytes(cached)
                # A miss: the defaults and this field from one scan, all stored.
                fields = list(dict.fromkeys([*DEFAULT_FIELDS, field]))
                computed = self.compute_many(organization_id, fields)
                if computed.epoch == epoch:
                    self._store(
                        organization_id,
                        (gen or b"0").decode(),
                        computed.results,
                        replace=False,
                        epoch=epoch,
                    )
                return json.dumps(computed.results[field]).encode()
            except redis.RedisError as exc:
                log.warning("analytics cache unavailable (%s); answering from the database", exc)
        return json.dumps(self.compute(organization_id, field)).encode()

    def claim_refresh(self, organization_id: int) -> float | None:
        """Mark the organization stale (until a refresh stores), and debounce: the first
        caller until the refresh starts (at most DEBOUNCE_MS) gets the seconds its refresh
        must wait to start MIN_REFRESH_INTERVAL_MS after the previous one (0.0: none started
        that recently) and schedules it; the others get None."""
        epoch = self.epoch()
        wait_ms = int(
            cast(
                "int",
                self._redis().eval(
                    _MARK_AND_CLAIM,
                    3,
                    self.stale_key(epoch),
                    self.schedule_key(organization_id, epoch),
                    self.started_key(organization_id, epoch),
                    str(organization_id),
                    DEBOUNCE_MS,
                    KEY_TTL_SECONDS,
                ),
            )
        )
        return None if wait_ms < 0 else wait_ms / 1000

    def stale_organizations(self, older_than: float) -> list[int]:
        """Organizations marked stale whose refresh was last asked for more than
        `older_than` seconds ago: their refresh gave up or was lost."""
        ids = cast(  # the sync client (redis-py types sync and async answers alike)
            "list[bytes]",
            self._redis().eval(_STALE_BEFORE, 1, self.stale_key(), int(older_than * 1000)),
        )
        return sorted(int(i) for i in ids)

    def release_refresh(self, organization_id: int) -> None:
        """Called when a refresh starts: later changes schedule another one, to start
        MIN_REFRESH_INTERVAL_MS after this one at the earliest."""
        epoch = self.epoch()
        pipe = self._redis().pipeline(transaction=False)
        pipe.delete(self.schedule_key(organization_id, epoch))
        pipe.set(self.started_key(organization_id, epoch), "1", px=MIN_REFRESH_INTERVAL_MS)
        pipe.execute()
