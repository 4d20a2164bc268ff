"""Database.reads(): GET requests read without a transaction's BEGIN/COMMIT round trips, and
a write through such a session is refused before anything reaches the database."""

from __future__ import annotations

import pytest
from sqlalchemy import func, insert, select

from crm_domain.db import Database, ReadOnlySession
from crm_domain.models import Contact

from .api import ApiClient
from .sql import executed
from .test_custom_fields import define


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

    with executed(db.engine) as writing:
        created = api.post("/contacts", user=user, org=user.org_id, json={"name": "Read me"})
    assert created.status_code == 201
    assert any(e.sql.startswith("INSERT") and not e.autocommit for e in writing), writing
    with executed(db.engine) as reading:
        listed = api.get("/contacts", user=user, org=user.org_id).get_json()
    assert [c["name"] for c in listed["items"]] == ["Read me"]
    assert reading and all(e.autocommit for e in reading), reading


def test_a_record_brings_its_custom_field_definitions_along(db: Database, api: ApiClient) -> None:
    """One record read by id costs one statement, its organization's definitions included;
    a write's audit entry and events are one INSERT, at its commit."""
    user = api.register()
    define(api, user, key="tier", type="text")
    deal = api.deal(user, custom_fields={"tier": "gold"})

    with executed(db.engine) as reading:
        got = api.get(f"/deals/{deal['id']}", user=user, org=user.org_id)
    assert got.status_code == 200 and got.get_json()["custom_fields"] == {"tier": "gold"}
    touching = [e.sql for e in reading if "custom_field_definitions" in e.sql or "deals" in e.sql]
    assert len(touching) == 1 and "FROM deals" in touching[0], touching

    with executed(db.engine) as writing:
        r = api.patch(
            f"/deals/{deal['id']}", user=user, org=user.org_id, json={"custom_fields": {"tier": ""}}
        )
    assert r.status_code == 200, r.get_json()
    inserts = [e.sql for e in writing if "INSERT INTO audit_entries" in e.sql]
    assert len(inserts) == 1 and "INSERT INTO outbox_events" in inserts[0], inserts
    assert not [e for e in writing if e.sql.startswith("INSERT INTO outbox_events")]


def test_a_write_compiles_its_statements_once(db: Database, api: ApiClient) -> None:
    """The second of two alike writes compiles nothing: its commit-time INSERT (events and
    audit entries), its locked read and its UPDATE all come from SQLAlchemy's cache."""
    user = api.register()
    deal = api.deal(user)
    for amount in ("10", "20"):
        with executed(db.engine) as writing:
            r = api.patch(
                f"/deals/{deal['id']}", user=user, org=user.org_id, json={"amount": amount}
            )
        assert r.status_code == 200, r.get_json()
    statements = [e for e in writing if not e.sql.startswith(("BEGIN", "COMMIT"))]
    assert any("INSERT INTO" in e.sql for e in statements), statements
    assert statements and all(e.cached for e in statements), [
        e.sql[:60] for e in statements if not e.cached
    ]
