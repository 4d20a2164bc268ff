"""The SQL an engine runs while a block runs, for tests that count or inspect statements."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, event


@dataclass(frozen=True)
class Executed:
    sql: str
    autocommit: bool  # the DBAPI connection's mode when the statement ran
    cached: bool  # SQLAlchemy took its compiled form from its cache (no compile)


@contextmanager
def executed(engine: Engine, containing: str = "") -> Iterator[list[Executed]]:
    """The statements `engine` runs inside the block (those whose text has `containing`)."""
    seen: list[Executed] = []

    def record(conn: Any, _cur: Any, statement: str, _params: Any, context: Any, *_: Any) -> None:
        if containing in statement:
            autocommit = conn.connection.dbapi_connection.autocommit
            cached = context is not None and context.cache_hit is context.dialect.CACHE_HIT
            seen.append(Executed(statement, autocommit, cached))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)
