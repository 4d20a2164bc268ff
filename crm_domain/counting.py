"""Totals for list pages without counting a big tenant on every page.

A list's total is counted exactly when it is small (counting at most `exact_below` + 1
rows, a few milliseconds), without touching Redis. When it is larger, the exact count is kept
in Redis for `ttl` seconds per organization and filter set, and the process remembers that
this list is large, so its next pages look in Redis first: a client paging through 100,000
deals pays for one full count every `ttl` seconds, not one per page; such a total can lag
writes by up to `ttl` seconds. Without Redis every total is exact. A list counted small is
remembered too, with its last total: its next shallow pages take their total from the page's
own statement (crm_domain.pagination), one round trip instead of two; a total found grown past
`exact_below` there is counted here again.

Keys are `<prefix>:<epoch>:count:<hash of the statement>`: the statement names the
organization by id, so the database identity (crm_domain.identity) is part of the key and
a total counted in another database (ids restart at 1 after a recreation) is never used.
Without an identity (`identity=None`, or it cannot be read) nothing is cached."""

from __future__ import annotations

import hashlib
import logging
from typing import Any, cast

import redis
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from .identity import InstallationIdentity

log = logging.getLogger(__name__)


class LargeCountCache:
    def __init__(
        self,
        client: redis.Redis | None,
        prefix: str = "crm",
        *,
        identity: InstallationIdentity | None = None,
        exact_below: int = 10_000,
        ttl: int = 10,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.identity = identity
        self.exact_below = exact_below
        self.ttl = ttl
        # The last total this process saw per list (statement shape + values). Only the
        # lists found large pay for rendering the Redis key and the lookup; small lists are
        # just counted, and get their total from their page's own statement
        # (crm_domain.pagination), which picks how by the last total.
        self._seen: dict[Any, int] = {}

    def key(self, rows: Select[Any]) -> str:
        epoch = self.identity.epoch() if self.identity is not None else None
        if epoch is None:
            raise LookupError("no database identity: totals are not cached")
        sql = str(rows.compile(compile_kwargs={"literal_binds": True}))
        return f"{self.prefix}:{epoch}:count:{hashlib.sha1(sql.encode()).hexdigest()}"

    def shape(self, rows: Select[Any]) -> Any:
        """The identity of a list (statement shape and values) for small_total() and count()."""
        return _shape(rows)

    def small_total(self, shape: Any) -> int | None:
        """The total this process last saw for this list if it was at most `exact_below`
        rows; None if never seen, or large."""
        total = None if shape is None else self._seen.get(shape)
        return total if total is not None and total <= self.exact_below else None

    def saw(self, shape: Any, total: int) -> None:
        """Remember a list's exact total (forgetting every list at 10,000 of them)."""
        if shape is None:
            return
        if len(self._seen) >= 10_000 and shape not in self._seen:
            self._seen.clear()
        self._seen[shape] = total

    def count(self, session: Session, rows: Select[Any], *, shape: Any = None) -> int:
        """`rows` selects the matching rows' keys (filtered, unordered); `shape` is
        shape(rows) when the caller has it."""
        if shape is None:
            shape = _shape(rows)
        known_large = self._seen.get(shape, 0) > self.exact_below
        key = self._key_or_none(rows) if known_large else None
        if key is not None:
            cached = self._get(key)
            if cached is not None:
                return cached
        capped = session.scalar(
            select(func.count()).select_from(rows.limit(self.exact_below + 1).subquery())
        )
        if (capped or 0) <= self.exact_below:
            self.saw(shape, capped or 0)
            return capped or 0
        key = key or self._key_or_none(rows)
        total = session.scalar(select(func.count()).select_from(rows.subquery())) or 0
        self.saw(shape, total)  # large: next time the cache first, no capped count
        if key is not None:
            self._set(key, total)
        return total

    def _key_or_none(self, rows: Select[Any]) -> str | None:
        if self.client is None:
            return None
        try:
            return self.key(rows)
        except Exception:  # no identity, or a value SQLAlchemy cannot render literally: count
            return None

    def _get(self, key: str) -> int | None:
        assert self.client is not None
        try:
            # redis-py types a sync call's answer as `Awaitable | Any` (one signature for
            # both clients): this client is the sync one.
            cached = cast("bytes | None", self.client.get(key))
        except redis.RedisError:
            log.warning("count cache unavailable; counting")
            return None
        return None if cached is None else int(cached)

    def _set(self, key: str, total: int) -> None:
        assert self.client is not None
        try:
            self.client.set(key, total, ex=self.ttl)
        except redis.RedisError:
            log.warning("count cache unavailable; not stored")


def _shape(rows: Select[Any]) -> Any:
    """A cheap identity of the statement with its values (SQLAlchemy's own cache key)."""
    cache_key = rows._generate_cache_key()
    if cache_key is None:
        return None
    return (cache_key.key, repr([p.effective_value for p in cache_key.bindparams]))
