"""A `limits` storage that counts the busiest limit in process and syncs it to Redis in batches.

`batched+redis://...` (also `batched+rediss://`, `batched+redis+unix://`) is limits'
RedisStorage (the same keys, the same sliding-window-counter layout in Redis) but for the
limits whose scope is in `batched_scopes`: for those, a hit is decided and counted in this
process against the shared counts it read at its last sync plus the hits it admitted since;
the hits are pushed to Redis, and the shared counts read back, in one Lua call for every key
this process holds hits of, from the request path:

- at the first hit of a key after `sync_ms` milliseconds since its last sync (or when the
  current window ends, where Redis rolls it into the previous one), and
- as soon as this process holds 1 % of a limit's amount unpushed (at least one hit).

So within one process the count is what the Redis script would count; across processes a
process misses at most the others' hits of the last sync interval (`sync_ms`), plus under 1 %
of the limit per other process (what it has not pushed yet): together they can admit that
much more than the limit. Every other scope (the login and auth limits: rare, and small limits that
must hold exactly) is decided in Redis on every hit, as by RedisStorage.

Thread-safe (one lock, never held across a Redis call: the thread that syncs does so alone,
the others decide on the counts they have). Redis errors propagate from the hit that syncs
(Flask-Limiter's swallow_errors lets that request through, as with RedisStorage) and the
unpushed hits are kept for the next sync."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any

from limits.storage import RedisStorage

# Push each key's hits, roll its window as limits' own scripts do, read back its counts.
# KEYS: previous and current window of each key, in pairs; ARGV: expiry (s) and hits of each.
SYNC_SCRIPT = b"""
local out = {}
for i = 1, #KEYS, 2 do
    local previous_key, current_key = KEYS[i], KEYS[i + 1]
    local expiry = tonumber(ARGV[i]) * 1000
    local amount = tonumber(ARGV[i + 1])
    local current_ttl = tonumber(redis.call('pttl', current_key))
    if current_ttl > 0 and current_ttl < expiry then
        redis.call('rename', current_key, previous_key)
        redis.call('set', current_key, 0, 'PX', current_ttl + expiry)
    end
    if amount > 0 then
        if redis.call('exists', current_key) == 1 then
            redis.call('incrby', current_key, amount)
        else
            redis.call('set', current_key, amount, 'PX', expiry * 2)
        end
    end
    out[#out + 1] = tonumber(redis.call('get', previous_key)) or 0
    out[#out + 1] = tonumber(redis.call('pttl', previous_key))
    out[#out + 1] = tonumber(redis.call('get', current_key)) or 0
    out[#out + 1] = tonumber(redis.call('pttl', current_key))
end
return out
"""

IDLE_SWEEP_SECONDS = 10.0
BATCHED = "batched+"  # the scheme's prefix to a Redis URL


@dataclass(slots=True)
class _Counts:
    """One key's counts as this process knows them."""

    expiry: int  # seconds
    unit: int  # push once this many hits are unpushed (1 % of the limit, at least 1)
    previous: int = 0  # the shared counts at the last sync (milliseconds for the TTLs)
    previous_ttl: int = 0
    current: int = 0
    current_ttl: int = 0
    synced_at: float = -math.inf  # time.monotonic() of the last sync's answer
    unpushed: int = 0  # hits admitted here since the last sync started
    pushing: int = 0  # hits of the sync under way (not in the shared counts yet)

    def weighted(self, now: float) -> int:
        """The window's count as limits' script weighs it: the previous window's count by the
        share of it still inside the sliding window, plus the current window's."""
        elapsed = (now - self.synced_at) * 1000
        previous_ttl = max(0.0, self.previous_ttl - elapsed)
        previous = math.floor(self.previous * previous_ttl / (self.expiry * 1000))
        return previous + self.current + self.pushing + self.unpushed

    def stale(self, now: float, sync_seconds: float) -> bool:
        elapsed = now - self.synced_at
        if elapsed >= sync_seconds:
            return True
        # The current window ended since: Redis rolls it into the previous one.
        return 0 < self.current_ttl < self.expiry * 1000 + elapsed * 1000


class BatchedRedisStorage(RedisStorage):
    STORAGE_SCHEME = [BATCHED + s for s in ("redis", "rediss", "redis+unix")]

    def __init__(
        self,
        uri: str,
        sync_ms: float = 200,
        batched_scopes: str = "",
        **options: Any,
    ) -> None:
        """`uri`: a Redis URL behind `batched+`; `sync_ms`: how old the shared counts may get;
        `batched_scopes`: the Flask-Limiter scopes counted in process, comma-separated; the
        other options go to RedisStorage (and on to redis-py)."""
        super().__init__(uri.removeprefix(BATCHED), **options)
        self.sync_seconds = float(sync_ms) / 1000
        self.batched_scopes = frozenset(s for s in batched_scopes.split(",") if s)
        self._counts: dict[str, _Counts] = {}
        self._lock = threading.Lock()
        self._syncing = False
        self._swept_at = time.monotonic()

    def initialize_storage(self, _uri: str) -> None:
        super().initialize_storage(_uri)
        self.lua_sync = self.get_connection().register_script(SYNC_SCRIPT)

    def _batched(self, key: str) -> bool:
        # limits' key_for: "LIMITER/<identifiers...>/<amount>/<multiples>/<granularity>", the
        # last identifier being Flask-Limiter's scope (identifiers never hold a "/" of ours).
        parts = key.rsplit("/", 4)
        return len(parts) == 5 and parts[1] in self.batched_scopes

    def acquire_sliding_window_entry(
        self, key: str, limit: int, expiry: int, amount: int = 1
    ) -> bool:
        if not self._batched(key):
            return super().acquire_sliding_window_entry(key, limit, expiry, amount)
        if amount > limit:
            return False
        now = time.monotonic()
        with self._lock:
            counts = self._counts.get(key)
            if counts is None:
                counts = self._counts[key] = _Counts(expiry=expiry, unit=max(1, limit // 100))
            sync = not self._syncing and counts.stale(now, self.sync_seconds)
            if sync:
                self._syncing = True
        if sync:
            self._sync(key)
            now = time.monotonic()
        with self._lock:
            counts = self._counts.setdefault(key, counts)  # (swept meanwhile: back in)
            admitted = counts.weighted(now) + amount <= limit
            if admitted:
                counts.unpushed += amount
            push = admitted and counts.unpushed >= counts.unit and not self._syncing
            if push:
                self._syncing = True
        if push:
            self._sync(key)
        return admitted

    def _sync(self, key: str) -> None:
        """Push every key's unpushed hits and read their shared counts back, and `key`'s
        (the caller set `_syncing`; this clears it)."""
        try:
            with self._lock:
                now = time.monotonic()
                if now - self._swept_at >= IDLE_SWEEP_SECONDS:
                    self._sweep(now, keep=key)
                batch = [
                    (name, counts)
                    for name, counts in self._counts.items()
                    if counts.unpushed or name == key
                ]
                for _, counts in batch:
                    counts.pushing, counts.unpushed = counts.unpushed, 0
            keys: list[str] = []
            args: list[int] = []
            for name, counts in batch:
                keys += [
                    self.prefixed_key(self._previous_window_key(name)),
                    self.prefixed_key(self._current_window_key(name)),
                ]
                args += [counts.expiry, counts.pushing]
            try:
                answer = self.lua_sync(keys, args) if batch else []
            except BaseException:
                with self._lock:
                    for _, counts in batch:
                        counts.unpushed += counts.pushing
                        counts.pushing = 0
                raise
            now = time.monotonic()
            with self._lock:
                for i, (_, counts) in enumerate(batch):
                    previous, previous_ttl, current, current_ttl = answer[4 * i : 4 * i + 4]
                    counts.previous, counts.current = int(previous), int(current)
                    counts.previous_ttl = max(0, int(previous_ttl))
                    counts.current_ttl = max(0, int(current_ttl))
                    counts.pushing = 0
                    counts.synced_at = now
        finally:
            with self._lock:
                self._syncing = False

    def _sweep(self, now: float, keep: str) -> None:
        """Forget the keys nobody hit for two windows (their counts in Redis have expired)."""
        idle = [
            name
            for name, counts in self._counts.items()
            if name != keep
            and not (counts.unpushed or counts.pushing)
            and now - counts.synced_at > 2 * counts.expiry
        ]
        for name in idle:
            del self._counts[name]
        self._swept_at = now

    def clear_sliding_window(self, key: str, expiry: int) -> None:
        with self._lock:
            self._counts.pop(key, None)
        super().clear_sliding_window(key, expiry)

    def reset(self) -> int | None:
        with self._lock:
            self._counts.clear()
        return super().reset()
