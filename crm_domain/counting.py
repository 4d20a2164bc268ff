"""Totals for list pages without counting a big tenant on every page.

A list's total is counted exactly when it is small (counting at most `exact_below` + 1
index entries, a few milliseconds). When it is larger, the exact count is kept in Redis for
`ttl` seconds per organization and filter set, so a client paging through 100,000 deals pays
for one full count every `ttl` seconds, not one per page; the total can then lag writes by
up to `ttl` seconds. Without Redis every total is exact."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import redis
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)


class LargeCountCache:
    def __init__(
        self,
        client: redis.Redis | None,
        prefix: str = "crm",
        *,
        exact_below: int = 10_000,
        ttl: int = 10,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.exact_below = exact_below
        self.ttl = ttl

    def key(self, rows: Select[Any]) -> str:
        sql = str(rows.compile(compile_kwargs={"literal_binds": True}))
        return f"{self.prefix}:count:{hashlib.sha1(sql.encode()).hexdigest()}"

    def count(self, session: Session, rows: Select[Any]) -> int:
        """`rows` selects the matching rows' keys (filtered, unordered)."""
        capped = session.scalar(
            select(func.count()).select_from(rows.limit(self.exact_below + 1).subquery())
        )
        if (capped or 0) <= self.exact_below or self.client is None:
            return capped or 0
        try:
            key = self.key(rows)
        except Exception:  # a value SQLAlchemy cannot render literally: just count
            return session.scalar(select(func.count()).select_from(rows.subquery())) or 0
        try:
            cached = self.client.get(key)
            if cached is not None:
                return int(cached)
            total = session.scalar(select(func.count()).select_from(rows.subquery())) or 0
            self.client.set(key, total, ex=self.ttl)
            return total
        except redis.RedisError:
            log.warning("count cache unavailable; counting")
            return session.scalar(select(func.count()).select_from(rows.subquery())) or 0
