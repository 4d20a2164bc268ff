"""The audit log (GET /audit-log, its CSV) and the change feed (GET /events): an entry per
change in the change's own transaction, with its actor (login, API key, system) and
changes without secrets; filters, cursors, retention; the feed's exactly-once promise while
transactions commit out of order."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import text
from sqlalchemy.orm import Session

from crm_domain import installation
from crm_domain.context import Actor
from crm_domain.db import Database
from crm_domain.enums import Role
from crm_domain.services.records import contacts
from crm_worker.importing import run_import
from crm_worker.tasks.audit import purge_expired

from .api import PASSWORD, ApiClient, User, error_code
from .mail import SmtpServer, send_all, token_from
from .scratch import ScratchDatabase


def _log(api: ApiClient, user: User, **query: Any) -> list[dict[str, Any]]:
    """Every entry the filters match, newest first, walking the cursor."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        q = {**query, **({"cursor": cursor} if cursor else {})}
        r = api.get("/audit-log", user=user, org=user.org_id, query=q)
        assert r.status_code == 200, r.get_json()
        body = r.get_json()
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items


def _actions(entries: list[dict[str, Any]]) -> list[str]:
    return [e["action"] for e in entries]


def _entry(api: ApiClient, user: User, action: str, **query: Any) -> dict[str, Any]:
    found = [e for e in _log(api, user, action=action, **query)]
    assert len(found) == 1, found
    return found[0]


# --- what is recorded ----------------------------------------------------------------------


def test_records_changes_with_the_login_user_and_the_request(api: ApiClient) -> None:
    owner = api.register()
    deal = api.deal(owner, amount="1000.00")
    r = api.patch(
        f"/deals/{deal['id']}",
        user=owner,
        org=owner.org_id,
        json={"amount": "1500.00", "stage": "proposal"},
    )
    assert r.status_code == 200, r.get_json()
    entries = _log(api, owner, entity_type="deal", entity_id=deal["id"])
    # One entry per change: deal.stage_changed is part of deal.updated, not an entry of its own.
    assert _actions(entries) == ["deal.updated", "deal.created"]
    updated, created = entries
    assert updated["changes"] == {
        "amount": ["1000.00", "1500.00"],
        "stage": ["qualification", "proposal"],
    }
    assert updated["actor"] == {"type": "user", "user_id": owner.id, "api_key_id": None}
    assert updated["request_id"] == r.headers["X-Request-ID"]
    assert updated["entity_type"] == "deal" and updated["entity_id"] == deal["id"]
    assert created["changes"]["title"] == [None, deal["title"]]

    task = api.task(owner, deal["id"])
    assert api.delete(f"/tasks/{task['id']}", user=owner, org=owner.org_id).status_code == 204
    deleted = _entry(api, owner, "task.deleted", entity_id=task["id"])
    assert deleted["changes"]["title"] == [task["title"], None]
    r = api.post(
        f"/deals/{deal['id']}/activities",
        user=owner,
        org=owner.org_id,
        json={"type": "comment", "payload": {"text": "called"}},
    )
    assert r.status_code == 201
    assert _entry(api, owner, "activity.created", entity_id=r.get_json()["id"])


def test_trash_restore_merge_and_purge_are_audited(api: ApiClient) -> None:
    user = api.register()
    deal = api.deal(user)
    org = user.org_id
    assert api.delete(f"/deals/{deal['id']}", user=user, org=org).status_code == 204
    assert api.post(f"/trash/deal/{deal['id']}/restore", user=user, org=org).status_code == 200
    target = api.contact(user)
    twin = api.contact(user)
    r = api.post(
        f"/contacts/{target['id']}/merge", user=user, org=org, json={"merge_ids": [twin["id"]]}
    )
    assert r.status_code == 200, r.get_json()
    assert api.delete(f"/trash/contact/{twin['id']}", user=user, org=org).status_code == 204
    entries = _log(api, user, entity_type="deal", entity_id=deal["id"])
    assert _actions(entries)[:2] == ["deal.restored", "deal.deleted"]
    assert (
        _entry(api, user, "contact.merged", entity_id=target["id"])["actor"]["user_id"] == user.id
    )
    purged = _entry(api, user, "contact.purged", entity_id=twin["id"])
    assert purged["actor"]["user_id"] == user.id


def test_custom_field_definitions_and_bulk_actions_are_audited(api: ApiClient) -> None:
    user = api.register()
    org = user.org_id
    body = {"entity": "deal", "key": "segment", "label": "Segment", "type": "text"}
    made = api.post("/custom-fields", user=user, org=org, json=body).get_json()
    r = api.patch(f"/custom-fields/{made['id']}", user=user, org=org, json={"label": "Market"})
    assert r.status_code == 200, r.get_json()
    assert api.delete(f"/custom-fields/{made['id']}", user=user, org=org).status_code == 204
    entries = _log(api, user, entity_type="custom_field", entity_id=made["id"])
    assert _actions(entries) == [
        "custom_field.deleted",
        "custom_field.updated",
        "custom_field.created",
    ]
    assert entries[1]["changes"] == {"label": ["Segment", "Market"]}
    deal = api.deal(user)
    job = {"entity": "deal", "action": "update", "ids": [deal["id"]], "changes": {"title": "B"}}
    r = api.post("/bulk-actions", user=user, org=org, json=job)
    assert r.status_code == 202, r.get_json()
    assert _entry(api, user, "bulk_action.started", entity_id=r.get_json()["id"])
    updated = _entry(api, user, "deal.updated", entity_id=deal["id"])
    assert updated["changes"]["title"][1] == "B"
    assert updated["actor"]["user_id"] == user.id


def test_a_deals_timeline_is_not_audited_again(api: ApiClient) -> None:
    owner = api.register()
    r = api.post(  # a subscriber makes the timeline's entries `activity.created` events too
        "/webhooks",
        user=owner,
        org=owner.org_id,
        json={"url": "http://127.0.0.1:9/x", "event_types": ["activity.created"]},
    )
    assert r.status_code == 201
    deal = api.deal(owner)
    r = api.patch(f"/deals/{deal['id']}", user=owner, org=owner.org_id, json={"stage": "proposal"})
    assert r.status_code == 200
    r = api.get(f"/deals/{deal['id']}/activities", user=owner, org=owner.org_id)
    assert "stage_changed" in {a["type"] for a in r.get_json()["items"]}
    assert _log(api, owner, entity_type="activity") == []
    assert _actions(_log(api, owner, entity_id=deal["id"], entity_type="deal")) == [
        "deal.updated",
        "deal.created",
    ]


def test_an_api_key_is_named_with_its_user(api: ApiClient) -> None:
    owner = api.register()
    r = api.post("/api-keys", user=owner, org=owner.org_id, json={"name": "s", "scope": "write"})
    key = r.get_json()
    contact = api.post("/contacts", token=key["key"], json={"name": "By key"}).get_json()
    entry = _entry(api, owner, "contact.created", entity_id=contact["id"])
    assert entry["actor"] == {"type": "api_key", "user_id": owner.id, "api_key_id": key["id"]}
    made = _entry(api, owner, "api_key.created", entity_id=key["id"])
    assert made["changes"]["scope"] == [None, "write"]
    assert api.delete(f"/api-keys/{key['id']}", user=owner, org=owner.org_id).status_code == 204
    assert _entry(api, owner, "api_key.revoked", entity_id=key["id"])["actor"]["type"] == "user"


def test_work_done_by_the_system_is_named_system(api: ApiClient, app: Flask, db: Database) -> None:
    owner = api.register()
    r = api.upload(owner, "name,email\r\nA,a@example.com\r\n")  # run in-process, in the request
    assert r.status_code == 202
    started = _entry(api, owner, "import.started", entity_id=r.get_json()["id"])
    assert started["actor"]["type"] == "user" and started["changes"]["rows_total"] == [None, 1]
    # A worker's run (no request, no caller): the system.
    with _held(db) as session:
        job = _new_import(session, owner)
    run_import(db, job, app.extensions["crm_settings"])
    finished = _entry(api, owner, "import.finished", entity_id=job)
    assert finished["actor"] == {"type": "system", "user_id": None, "api_key_id": None}
    assert finished["request_id"] is None
    assert finished["changes"]["status"] == ["running", "done"]
    assert finished["changes"]["created_count"] == [None, 1]


def _new_import(session: Session, owner: User) -> int:
    from crm_domain.services.transfer import imports

    job = imports.create(
        session,
        _actor(owner),
        kind="contacts",  # type: ignore[arg-type]
        on_duplicate="skip",  # type: ignore[arg-type]
        filename="x.csv",
        content=b"name,email\r\nB,b@example.com\r\n",
        rows_total=1,
    )
    return job.id


def test_members_invitations_and_webhooks_are_audited_without_secrets(api: ApiClient) -> None:
    owner, user = api.register(), api.register()
    org = owner.org_id
    api.add_member(owner, org, user, "member")
    r = api.patch(f"/organizations/{org}/members/{user.id}", user=owner, json={"role": "manager"})
    assert r.status_code == 200
    assert api.delete(f"/organizations/{org}/members/{user.id}", user=owner).status_code == 204
    members = _log(api, owner, entity_type="member", entity_id=user.id)
    assert [(e["action"], e["changes"]) for e in members] == [
        ("member.removed", {"role": ["manager", None]}),
        ("member.role_changed", {"role": ["member", "manager"]}),
        ("member.added", {"role": [None, "member"]}),
    ]
    r = api.post(
        f"/organizations/{org}/invitations",
        user=owner,
        json={"email": "new@example.com", "role": "member"},
    )
    invitation = r.get_json()["id"]
    assert api.delete(f"/organizations/{org}/invitations/{invitation}", user=owner).status_code
    assert _actions(_log(api, owner, entity_type="invitation")) == [
        "invitation.revoked",
        "invitation.created",
    ]
    r = api.post("/webhooks", user=owner, org=org, json={"url": "http://127.0.0.1:9/x"})
    hook = r.get_json()
    rotated = api.post(f"/webhooks/{hook['id']}/rotate-secret", user=owner, org=org).get_json()
    r = api.patch(f"/webhooks/{hook['id']}", user=owner, org=org, json={"description": "ERP"})
    assert r.status_code == 200
    assert api.delete(f"/webhooks/{hook['id']}", user=owner, org=org).status_code == 204
    hooks = _log(api, owner, entity_type="webhook_endpoint")
    assert _actions(hooks) == [
        "webhook_endpoint.deleted",
        "webhook_endpoint.updated",
        "webhook_endpoint.secret_rotated",
        "webhook_endpoint.created",
    ]
    assert hooks[1]["changes"] == {"description": [None, "ERP"]}
    key = api.post("/api-keys", user=owner, org=org, json={"name": "k", "scope": "read"})
    # Nowhere in the log, nor its CSV: the secrets, the key, any hash of them.
    everything = json.dumps(_log(api, owner)) + _csv(api, owner)
    for secret in (hook["secret"], rotated["secret"], key.get_json()["key"]):
        assert secret not in everything
    for word in ("secret", "token", "password", "hash"):
        assert word not in everything.replace("secret_rotated", "")


def test_an_accepted_invitation_and_a_failed_import(
    api: ApiClient, app: Flask, db: Database, smtp: SmtpServer
) -> None:
    owner = api.register()
    email = f"invitee-{uuid.uuid4().hex[:10]}@example.com"
    r = api.post(
        f"/organizations/{owner.org_id}/invitations",
        user=owner,
        json={"email": email, "role": "manager"},
    )
    invitation = r.get_json()["id"]
    send_all(db, smtp)
    (mail,) = smtp.to(email)
    token = token_from(mail)
    r = api.post(
        "/auth/accept-invitation", json={"token": token, "name": "Bob", "password": PASSWORD}
    )
    assert r.status_code == 201
    user_id = r.get_json()["user"]["id"]
    accepted = _entry(api, owner, "invitation.accepted", entity_id=invitation)
    assert accepted["changes"]["accepted_by"] == [None, user_id]
    joined = _entry(api, owner, "member.added", entity_id=user_id)
    assert joined["changes"] == {"role": [None, "manager"]}
    assert joined["request_id"] == r.headers["X-Request-ID"]
    created = _entry(api, owner, "invitation.created", entity_id=invitation)
    assert set(created["changes"]) == {"email", "role", "invited_by", "expires_at"}

    # An import whose user left meanwhile fails, by the system's hand.
    with _held(db) as session:
        job = _new_import(session, owner)
        session.execute(
            text("UPDATE import_jobs SET created_by = :u WHERE id = :j"), {"u": user_id, "j": job}
        )
    assert api.delete(f"/organizations/{owner.org_id}/members/{user_id}", user=owner).status_code
    run_import(db, job, app.extensions["crm_settings"])
    failed = _entry(api, owner, "import.failed", entity_id=job)
    assert failed["actor"]["type"] == "system"
    assert failed["changes"]["status"] == ["running", "failed"]


# --- reading the log -----------------------------------------------------------------------


def test_filters_and_cursor_paging(api: ApiClient, db: Database) -> None:
    team = api.team()
    owner, manager = team["owner"], team["manager"]
    for i in range(3):
        api.contact(manager, name=f"M{i}")
    api.contact(owner, name="O")
    by_manager = _log(api, owner, actor=manager.id)
    assert _actions(by_manager) == ["contact.created"] * 3
    assert {e["actor"]["user_id"] for e in by_manager} == {manager.id}
    everything = _log(api, owner)
    paged = _log(api, owner, limit=2)  # cursor walk, two at a time
    assert [e["id"] for e in paged] == [e["id"] for e in everything]
    assert len({e["id"] for e in paged}) == len(paged)
    ids = [e["id"] for e in everything]
    assert ids == sorted(ids, reverse=True)
    assert _actions(_log(api, owner, action="contact.created")) == ["contact.created"] * 4

    oldest = everything[-1]["id"]
    with db.transaction() as s:  # the first entries happened ten days ago
        s.execute(
            text(
                "UPDATE audit_entries SET occurred_at = now() - interval '10 days' WHERE id = :id"
            ),
            {"id": oldest},
        )
    week_ago = (dt.datetime.now(dt.UTC) - dt.timedelta(days=7)).isoformat()
    assert oldest not in {e["id"] for e in _log(api, owner, since=week_ago)}
    assert [e["id"] for e in _log(api, owner, until=week_ago)] == [oldest]

    r = api.get("/audit-log", user=owner, org=owner.org_id, query={"limit": 1})
    cursor = r.get_json()["next_cursor"]
    tampered = cursor[:-3] + ("AAA" if not cursor.endswith("AAA") else "BBB")
    for bad in (tampered, "nonsense", cursor.split(".")[0]):
        r = api.get("/audit-log", user=owner, org=owner.org_id, query={"cursor": bad})
        assert r.status_code == 400 and error_code(r) == "INVALID_CURSOR"
    r = api.get("/audit-log", user=owner, org=owner.org_id, query={"since": "yesterday"})
    assert r.status_code in (400, 422)


@pytest.mark.parametrize("role", ["manager", "member"])
def test_only_owners_and_admins_read_the_log_and_the_feed(api: ApiClient, role: str) -> None:
    team = api.team()
    assert api.get("/audit-log", user=team["admin"], org=team["admin"].org_id).status_code == 200
    for path in ("/audit-log", "/audit-log/export.csv", "/events"):
        r = api.get(path, user=team[role], org=team[role].org_id)
        assert r.status_code == 403, path
        assert error_code(r) == "SETTINGS_FORBIDDEN"


def _csv(api: ApiClient, user: User, **query: Any) -> str:
    r = api.get("/audit-log/export.csv", user=user, org=user.org_id, query=query)
    assert r.status_code == 200 and r.mimetype == "text/csv"
    return r.get_data(as_text=True)


def test_csv_export_streams_the_filtered_log(api: ApiClient) -> None:
    owner = api.register()
    deal = api.deal(owner)
    api.patch(f"/deals/{deal['id']}", user=owner, org=owner.org_id, json={"title": "=1+1"})
    rows = list(csv.DictReader(io.StringIO(_csv(api, owner, entity_type="deal"))))
    log = _log(api, owner, entity_type="deal")
    assert [int(r["id"]) for r in rows] == [e["id"] for e in log]
    assert rows[0]["action"] == "deal.updated" and rows[0]["actor_type"] == "user"
    assert json.loads(rows[0]["changes"]) == log[0]["changes"]


def test_retention_purges_old_entries_in_batches(api: ApiClient, db: Database) -> None:
    owner = api.register()
    for i in range(5):
        api.contact(owner, name=f"C{i}")
    entries = _log(api, owner)
    old = {e["id"] for e in entries[-4:]}
    with db.transaction() as s:
        s.execute(
            text(
                "UPDATE audit_entries SET occurred_at = now() - interval '366 days'"
                " WHERE id = ANY(:ids)"
            ),
            {"ids": sorted(old)},
        )
    assert purge_expired(batch=3) >= 4  # two batches at least (other tests' old rows too)
    assert {e["id"] for e in _log(api, owner)} == {e["id"] for e in entries} - old
    assert old.isdisjoint(e["id"] for e in _feed_all(api, owner))


# --- the change feed -----------------------------------------------------------------------


def _poll(api: ApiClient, user: User, after: str | None, limit: int = 100) -> dict[str, Any]:
    query: dict[str, Any] = {"limit": limit, **({"after": after} if after else {})}
    r = api.get("/events", user=user, org=user.org_id, query=query)
    assert r.status_code == 200, r.get_json()
    return dict(r.get_json())


def _feed_all(
    api: ApiClient, user: User, after: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    while True:
        body = _poll(api, user, after, limit)
        items += body["items"]
        after = body["next_cursor"]
        if not body["has_more"]:
            return items


def _actor(user: User) -> Actor:
    return Actor(user_id=user.id, organization_id=user.org_id, role=Role.OWNER)


@contextmanager
def _held(db: Database) -> Iterator[Session]:
    """A transaction of our own, committed when the block ends (not before)."""
    session = db.new_session()
    session.info["outbox_publisher"] = None
    try:
        with session.begin():
            yield session
    finally:
        session.close()


def _committed(db: Database, org: int) -> set[int]:
    with db.transaction() as s:
        return set(
            s.scalars(text("SELECT id FROM audit_entries WHERE organization_id = :o"), {"o": org})
        )


def _poll_until(
    api: ApiClient, user: User, after: str | None, want: set[int]
) -> tuple[list[dict[str, Any]], str]:
    """Poll from `after` until every entry of `want` came: the entries in the order served and
    the last cursor. (A write transaction still open anywhere on the server, another test's
    included, holds the feed back until it ends: the feed waits, it never skips.)"""
    items: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while True:
        body = _poll(api, user, after)
        items += body["items"]
        after = body["next_cursor"]
        if want <= {e["id"] for e in items} and not body["has_more"]:
            return items, after
        assert time.monotonic() < deadline, f"never came: {want - {e['id'] for e in items}}"
        if not body["items"]:
            time.sleep(0.01)  # a poll loop's pause; the condition is the entries arriving


def _early_entry(session: Session, org: int, contact_id: int) -> int:
    """An entry inserted now, in the session's open transaction (the service's own entries
    are inserted as the transaction commits: this one takes its id, a sequence number, long
    before its commit, as a long transaction's statement would)."""
    return int(
        session.execute(
            text(
                "INSERT INTO audit_entries (organization_id, action, entity_type, entity_id,"
                " changes) VALUES (:o, 'contact.noted', 'contact', :id, '{}') RETURNING id"
            ),
            {"o": org, "id": contact_id},
        ).scalar_one()
    )


def test_the_feed_serves_a_late_commit_once_and_in_order(api: ApiClient, db: Database) -> None:
    owner = api.register()
    served, after = _poll_until(api, owner, None, _committed(db, owner.org_id))
    with _held(db) as early:
        slow = contacts.create_contact(early, _actor(owner), name="Slow")  # takes an xid first
        early_entry = _early_entry(early, owner.org_id, slow.id)
        fast = [api.contact(owner, name=f"Fast {i}")["id"] for i in range(3)]  # commit first
        late = _committed(db, owner.org_id) - {e["id"] for e in served}
        assert len(late) == 3 and min(late) > early_entry  # higher ids, committed
        # They wait behind the open transaction, however often the client polls.
        for _ in range(3):
            body = _poll(api, owner, after)
            assert body["items"] == [] and body["next_cursor"] == after
    # Committed: the slow transaction's entries come (the one inserted early, then the
    # creation's, inserted at its commit: the highest id), then the others; nothing skipped,
    # nothing twice.
    late = _committed(db, owner.org_id) - {e["id"] for e in served}
    assert len(late) == 5 and early_entry in late
    items, after = _poll_until(api, owner, after, late)
    assert [(e["id"], e["entity_id"], e["action"]) for e in items[:2]] == [
        (early_entry, slow.id, "contact.noted"),
        (max(late), slow.id, "contact.created"),
    ]
    assert [e["entity_id"] for e in items[2:]] == fast
    assert _poll(api, owner, after)["items"] == []
    served += items
    ids = [e["id"] for e in served]
    assert len(ids) == len(set(ids)) and set(ids) == _committed(db, owner.org_id)
    # The same order when read again from the start.
    again, _ = _poll_until(api, owner, None, set(ids))
    assert [e["id"] for e in again] == ids


def test_the_feed_is_exactly_once_under_concurrent_out_of_order_commits(
    api: ApiClient, app: Flask, db: Database
) -> None:
    owner = api.register()
    writers, per_writer = 6, 8
    barrier = threading.Barrier(writers)
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            barrier.wait()
            for i in range(per_writer):
                # Transactions that hold their entry a while before committing, interleaved
                # with quick ones: commits come out of the order of the entries' ids.
                with _held(db) as session:
                    made = contacts.create_contact(session, _actor(owner), name=f"W{n}-{i}")
                    if (n + i) % 3 == 0:
                        _early_entry(session, owner.org_id, made.id)
                        session.execute(text("SELECT pg_sleep(0.02)"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    poller = ApiClient(app.test_client())
    seen: list[int] = []
    after = None
    while any(t.is_alive() for t in threads):  # polling while the writers commit
        body = _poll(poller, owner, after, limit=5)
        seen += [e["id"] for e in body["items"]]
        after = body["next_cursor"]
    for t in threads:
        t.join()
    assert not errors, errors
    committed = _committed(db, owner.org_id)
    early = sum(1 for n in range(writers) for i in range(per_writer) if (n + i) % 3 == 0)
    assert len(committed) == writers * per_writer + early + 2  # + the registration's two
    rest, _ = _poll_until(poller, owner, after, committed - set(seen))
    seen += [e["id"] for e in rest]
    assert len(seen) == len(set(seen)), "an entry came twice"
    assert set(seen) == committed, "an entry was skipped"


def test_feed_cursors_are_checked(api: ApiClient) -> None:
    owner, other = api.register(), api.register()
    api.contact(owner)
    api.contact(other)
    mine = _poll(api, owner, None, limit=1)["next_cursor"]
    theirs = _poll(api, other, None, limit=1)["next_cursor"]
    log_cursor = api.get("/audit-log", user=owner, org=owner.org_id, query={"limit": 1})
    assert log_cursor.get_json()["next_cursor"]
    for bad in (
        theirs,
        mine[:-2] + "xx",
        f"{uuid.uuid4().hex}",
        log_cursor.get_json()["next_cursor"],
    ):
        r = api.get("/events", user=owner, org=owner.org_id, query={"after": bad})
        assert r.status_code == 400, bad
        assert error_code(r) == "INVALID_CURSOR"
    r = api.get("/events", user=owner, org=owner.org_id, query={"limit": 0})
    assert r.status_code in (400, 422)


def test_a_cursor_from_before_a_restore_is_stale(scratch: ScratchDatabase) -> None:
    """Transaction ids hold within one database history: after a restore (here: a new
    installation id, which a restore's other identity facts change as well) a cursor would
    skip what the new history writes, so it is refused and the client starts again."""
    scratch.create()
    app = scratch.app()
    api = ApiClient(app.test_client())
    owner = api.register()
    after = _poll(api, owner, None)["next_cursor"]
    assert _poll(api, owner, after)["next_cursor"] == after
    with app.extensions["crm_db"].transaction() as session:
        installation.rotate(session.connection())
    r = api.get("/events", user=owner, org=owner.org_id, query={"after": after})
    assert r.status_code == 400 and error_code(r) == "CURSOR_STALE"
    # From the start: the registration's two (a write transaction open anywhere on the server
    # holds the feed back a moment: it waits, never skips).
    items, _ = _poll_until(api, owner, None, _committed(app.extensions["crm_db"], owner.org_id))
    assert len(items) == 2
