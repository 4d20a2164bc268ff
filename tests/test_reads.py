"""Database.reads(): GET requests read without a transaction's BEGIN/COMMIT round trips, and
a write through such a session is refused before anything reaches the database."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event, func, insert, select

from crm_domain.db import Database, ReadOnlySession
from crm_domain.models import Contact

from .api import ApiClient


def test_a_read_session_runs_in_autocommit(db: Database) -> None:
    with db.reads() as s:
        assert s.connection().connection.dbapi_connection.autocommit is True
        assert s.scalar(select(func.count()).select_from(Contact)) is not None
    with db.transaction() as s:
        assert s.connection().connection.dbapi_connection.autocommit is False


def test_writes_through_a_read_session_are_refused(db: Database, api: ApiClient) -> None:
    user = api.register()
    row = {"organization_id": user.org_id, "owner_id": user.id, "name": "Never written"}
    with db.reads() as s, pytest.raises(ReadOnlySession):
        s.execute(insert(Contact), [row])
    with db.reads() as s, pytest.raises(ReadOnlySession):
        s.add(Contact(**row))
        s.flush()
    with db.transaction() as s:
        assert s.scalar(select(func.count()).where(Contact.name == "Never written")) == 0


def test_get_requests_read_in_autocommit_and_writes_in_a_transaction(
    db: Database, api: ApiClient
) -> None:
    user = api.register()

    @contextmanager
    def statements() -> Iterator[list[tuple[str, bool]]]:
        seen: list[tuple[str, bool]] = []

        def record(conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            seen.append((statement.split()[0], conn.connection.dbapi_connection.autocommit))

        event.listen(db.engine, "before_cursor_execute", record)
        try:
            yield seen
        finally:
            event.remove(db.engine, "before_cursor_execute", record)

    with statements() as writing:
        created = api.post("/contacts", user=user, org=user.org_id, json={"name": "Read me"})
    assert created.status_code == 201
    assert ("INSERT", False) in writing
    with statements() as reading:
        listed = api.get("/contacts", user=user, org=user.org_id).get_json()
    assert [c["name"] for c in listed["items"]] == ["Read me"]
    assert reading and all(autocommit for _, autocommit in reading), reading
