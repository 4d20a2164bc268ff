"""Bulk actions through the HTTP API: each record under the single PATCH/DELETE's rules with
its own timeline entry and events, per-record errors, the list's filters (and its refusals),
limits, dry run, cancel, and a run that dies mid-way resuming without doing a record twice.

The session's app delivers the outbox in-process, so a bulk action has run by the time its
POST answers; the cancel and resume tests use an app that leaves the job pending and run it
themselves (crm_worker.bulk_running, what the worker's task calls)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import event, select, text

from crm_api import create_app
from crm_domain import audit, context
from crm_domain.db import Database
from crm_domain.enums import BulkActionStatus
from crm_domain.errors import Forbidden
from crm_domain.models import AuditEntry, Deal, OutboxEvent
from crm_domain.services.records import deals
from crm_domain.services.transfer import bulk_actions
from crm_domain.services.transfer.bulk_registry import actions
from crm_worker.bulk_running import run_bulk_action

from .api import ApiClient, User, error_code


def bulk(api: ApiClient, user: User, body: dict[str, Any], **query: Any) -> Any:
    return api.post("/bulk-actions", user=user, org=user.org_id, json=body, query=query or None)


def job(api: ApiClient, user: User, job_id: int) -> dict[str, Any]:
    r = api.get(f"/bulk-actions/{job_id}", user=user, org=user.org_id)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def run_to_end(api: ApiClient, user: User, body: dict[str, Any]) -> dict[str, Any]:
    r = bulk(api, user, body)
    assert r.status_code == 202, r.get_json()
    assert r.headers["Location"].endswith(f"/bulk-actions/{r.get_json()['id']}")
    return job(api, user, r.get_json()["id"])


def deal_of(api: ApiClient, user: User, deal_id: int) -> dict[str, Any]:
    r = api.get(f"/deals/{deal_id}", user=user, org=user.org_id)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def errors_of(done: dict[str, Any]) -> dict[int, str]:
    return {e["record_id"]: e["code"] for e in done["errors"]}


def events(db: Database, topic: str, record_ids: list[int]) -> Counter[int]:
    """How many `topic` events each record got."""
    with db.transaction() as s:
        payloads = s.scalars(select(OutboxEvent.payload).where(OutboxEvent.topic == topic))
        return Counter(p["id"] for p in payloads if p.get("id") in record_ids)


@pytest.fixture
def team(api: ApiClient) -> dict[str, User]:
    return api.team()


def test_each_record_meets_the_single_patch_rules(api: ApiClient, db: Database, team) -> None:
    owner, member = team["owner"], team["member"]
    others = api.deal(owner)  # not the member's
    mine = api.deal(member, org=owner.org_id)
    no_amount = api.deal(member, org=owner.org_id, amount="0.00")
    stranger = api.register()
    foreign = api.deal(stranger)  # another organization's: not found, as by a PATCH
    body = {
        "entity": "deal",
        "action": "update",
        "ids": [others["id"], mine["id"], no_amount["id"], foreign["id"], 987654],
        "changes": {"status": "won", "title": "Closed"},
    }
    done = run_to_end(api, member, body)
    assert (done["status"], done["total"], done["done"]) == ("done", 5, 5)
    assert (done["succeeded"], done["failed"], done["errors_total"]) == (1, 4, 4)
    assert errors_of(done) == {
        others["id"]: "NOT_OWNER",
        no_amount["id"]: "WON_REQUIRES_POSITIVE_AMOUNT",
        foreign["id"]: "DEAL_NOT_FOUND",
        987654: "DEAL_NOT_FOUND",
    }
    assert all(e["message"] for e in done["errors"])
    r = api.get(f"/bulk-actions/{done['id']}/errors", user=member, org=owner.org_id)
    assert r.get_json()["items"] == done["errors"]
    walked, cursor = [], None
    while True:  # every error, a page of one at a time
        query = {"page_size": 1, **({"cursor": cursor} if cursor else {})}
        page = api.get(
            f"/bulk-actions/{done['id']}/errors", user=member, org=owner.org_id, query=query
        ).get_json()
        walked += page["items"]
        if not (cursor := page["next_cursor"]):
            break
    assert walked == done["errors"]
    assert deal_of(api, member, mine["id"])["status"] == "won"
    assert deal_of(api, member, mine["id"])["title"] == "Closed"
    for refused in (others, no_amount):  # left exactly as they were
        assert deal_of(api, member, refused["id"]) == {**refused, "updated_at": ANY_TIME}
    assert deal_of(api, stranger, foreign["id"]) == foreign
    # the changed deal's timeline entry and events, like a PATCH's; none for the refused ones
    r = api.get(f"/deals/{mine['id']}/activities", user=member, org=owner.org_id)
    assert [a["type"] for a in r.get_json()["items"]] == ["status_changed"]
    ids = [others["id"], mine["id"], no_amount["id"], foreign["id"]]
    assert events(db, "deal.updated", ids) == {mine["id"]: 1}
    assert events(db, "deal.status_changed", ids) == {mine["id"]: 1}


class _AnyTime:
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str)


ANY_TIME = _AnyTime()


def test_a_member_may_not_roll_a_stage_back(api: ApiClient, team) -> None:
    owner, member = team["owner"], team["member"]
    deal = api.deal(member, org=owner.org_id)
    r = api.patch(f"/deals/{deal['id']}", user=member, org=owner.org_id, json={"stage": "closed"})
    assert r.status_code == 200, r.get_json()
    body = {"entity": "deal", "action": "update", "ids": [deal["id"]]}
    done = run_to_end(api, member, {**body, "changes": {"stage": "qualification"}})
    assert errors_of(done) == {deal["id"]: "STAGE_ROLLBACK_FORBIDDEN"}
    done = run_to_end(api, owner, {**body, "changes": {"stage": "qualification"}})
    assert (done["succeeded"], done["failed"]) == (1, 0)
    assert deal_of(api, owner, deal["id"])["stage"] == "qualification"


def test_a_filter_selects_what_the_list_shows(api: ApiClient, team) -> None:
    owner = team["owner"]
    contact = api.contact(owner)["id"]
    cheap = [api.deal(owner, contact_id=contact, amount="10.00")["id"] for _ in range(2)]
    dear = [api.deal(owner, contact_id=contact, amount="900.00")["id"] for _ in range(3)]
    api.patch(f"/deals/{dear[0]}", user=owner, org=owner.org_id, json={"status": "lost"})
    filter_ = {"status": ["new", "in_progress"], "min_amount": "500.00"}
    listed = api.get(
        "/deals",
        user=owner,
        org=owner.org_id,
        query=[("status", "new"), ("status", "in_progress"), ("min_amount", "500.00")],
    ).get_json()
    assert sorted(d["id"] for d in listed["items"]) == dear[1:]
    body = {"entity": "deal", "action": "update", "filter": filter_, "changes": {"title": "Big"}}
    r = bulk(api, owner, body, dry_run="true")
    assert r.status_code == 200, r.get_json()
    assert r.get_json() == {"entity": "deal", "action": "update", "matched": 2}
    assert api.get("/bulk-actions", user=owner, org=owner.org_id).get_json()["total"] == 0
    done = run_to_end(api, owner, body)
    assert (done["total"], done["succeeded"], done["filter"]) == (2, 2, filter_)
    titles = {i: deal_of(api, owner, i)["title"] for i in cheap + dear}
    assert [i for i, t in titles.items() if t == "Big"] == dear[1:]


@pytest.mark.parametrize(
    ("entity", "filter_", "field"),
    [
        ("deal", {"statuz": ["new"]}, "statuz"),
        ("deal", {"status": ["bogus"]}, "status"),
        ("deal", {"min_amount": "9.00", "max_amount": "1.00"}, "min_amount"),
        ("contact", {"search": "x" * 256}, "search"),
        ("task", {"due_before": "tomorrow"}, "due_before"),
        ("deal", {"page_size": 5}, "page_size"),
    ],
)
def test_a_filter_the_list_refuses_is_400(
    api: ApiClient, team, entity: str, filter_: dict[str, Any], field: str
) -> None:
    owner = team["owner"]
    body = {"entity": entity, "action": "delete", "filter": filter_}
    for query in ({}, {"dry_run": "true"}):
        r = bulk(api, owner, body, **query)
        assert r.status_code == 400, r.get_json()
        assert error_code(r) == "VALIDATION_ERROR"
        assert field in r.get_json()["error"]["details"]["errors"]["filter"]
    assert api.get("/bulk-actions", user=owner, org=owner.org_id).get_json()["total"] == 0


def test_the_owner_filter_is_refused_to_a_member_as_in_the_list(api: ApiClient, team) -> None:
    owner, member = team["owner"], team["member"]
    body = {"entity": "deal", "action": "delete", "filter": {"owner_id": owner.id}}
    r = bulk(api, member, body)
    assert r.status_code == 403 and error_code(r) == "OWNER_FILTER_FORBIDDEN"
    r = api.get("/deals", user=member, org=owner.org_id, query={"owner_id": owner.id})
    assert r.status_code == 403 and error_code(r) == "OWNER_FILTER_FORBIDDEN"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"entity": "deal", "action": "update", "changes": {"title": "x"}}, "ids"),  # neither
        (
            {"entity": "deal", "action": "update", "ids": [1], "filter": {}, "changes": {"a": 1}},
            "ids",
        ),
        ({"entity": "deal", "action": "update", "ids": [1]}, "changes"),
        ({"entity": "deal", "action": "update", "ids": [1], "changes": {"amount": "x"}}, "changes"),
        ({"entity": "deal", "action": "update", "ids": [1], "changes": {"nope": 1}}, "changes"),
        ({"entity": "task", "action": "delete", "ids": [1], "changes": {"title": "x"}}, "changes"),
        ({"entity": "deal", "action": "restore", "filter": {}}, "filter"),  # ids only
        ({"entity": "deal", "action": "merge", "ids": [1]}, "action"),
        ({"entity": "user", "action": "delete", "ids": [1]}, "entity"),
        ({"entity": "deal", "action": "delete", "ids": []}, "ids"),
        ({"entity": "deal", "action": "delete", "ids": ["a"]}, "ids"),
        ({"entity": "deal", "action": "delete", "ids": list(range(1, 10_002))}, "ids"),
    ],
)
def test_bad_requests_are_400(api: ApiClient, team, body: dict[str, Any], field: str) -> None:
    owner = team["owner"]
    r = bulk(api, owner, body)
    assert r.status_code == 400, r.get_json()
    assert error_code(r) == "VALIDATION_ERROR"
    assert field in r.get_json()["error"]["details"]["errors"]["json"]


def test_a_filter_matching_more_than_the_limit_is_400(
    api: ApiClient, team, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = team["owner"]
    for _ in range(3):
        api.contact(owner)
    monkeypatch.setattr(bulk_actions, "MAX_MATCHES", 2)
    body = {"entity": "contact", "action": "delete", "filter": {}}
    for query in ({}, {"dry_run": "true"}):
        r = bulk(api, owner, body, **query)
        assert r.status_code == 400, r.get_json()
        assert error_code(r) == "BULK_ACTION_TOO_MANY"
    assert api.get("/bulk-actions", user=owner, org=owner.org_id).get_json()["total"] == 0
    monkeypatch.setattr(bulk_actions, "MAX_MATCHES", 3)
    assert bulk(api, owner, body, dry_run="true").get_json()["matched"] == 3


def test_delete_goes_through_the_single_delete(api: ApiClient, db: Database, team) -> None:
    owner = team["owner"]
    lonely = api.contact(owner)
    buyer = api.contact(owner)
    deal = api.deal(owner, contact_id=buyer["id"])
    task = api.task(owner, deal["id"])
    body = {"entity": "contact", "action": "delete", "ids": [lonely["id"], buyer["id"]]}
    done = run_to_end(api, owner, body)
    assert errors_of(done) == {buyer["id"]: "CONTACT_HAS_DEALS"}
    assert api.get(f"/contacts/{lonely['id']}", user=owner, org=owner.org_id).status_code == 404
    assert api.get(f"/contacts/{buyer['id']}", user=owner, org=owner.org_id).status_code == 200
    assert events(db, "contact.deleted", [lonely["id"], buyer["id"]]) == {lonely["id"]: 1}
    done = run_to_end(api, owner, {"entity": "task", "action": "delete", "filter": {}})
    assert (done["total"], done["succeeded"]) == (1, 1)
    assert api.get(f"/tasks/{task['id']}", user=owner, org=owner.org_id).status_code == 404


def test_task_updates_meet_the_task_rules(api: ApiClient, team) -> None:
    owner, member = team["owner"], team["member"]
    others = api.task(owner, api.deal(owner)["id"])
    mine = api.task(member, api.deal(member, org=owner.org_id)["id"], org=owner.org_id)
    body = {"entity": "task", "action": "update", "filter": {"only_open": True}}
    done = run_to_end(api, member, {**body, "changes": {"is_done": True}})
    assert errors_of(done) == {others["id"]: "NOT_OWNER"}
    done = run_to_end(api, member, {**body, "changes": {"due_date": "2000-01-01"}})
    assert done["total"] == 1  # the member's task is done now: no longer open
    assert errors_of(done)[others["id"]] == "NOT_OWNER"
    r = api.get(f"/tasks/{mine['id']}", user=member, org=owner.org_id)
    assert r.get_json()["is_done"] is True


# --- cancel and resume: jobs this test runs itself ---------------------------------------------


@pytest.fixture(scope="module")
def held_app(app: Flask) -> Flask:
    """An app on the same database whose outbox is left pending: its jobs wait for a run."""
    return create_app(OUTBOX_DISPATCH="none", TESTING=True, RATELIMIT_ENABLED=False)


@pytest.fixture
def held(held_app: Flask) -> Iterator[ApiClient]:
    yield ApiClient(held_app.test_client())


def _deals(api: ApiClient, owner: User, n: int) -> list[int]:
    contact = api.contact(owner)["id"]
    return [api.deal(owner, contact_id=contact)["id"] for _ in range(n)]


def test_cancel_a_pending_job(held: ApiClient, db: Database, held_app: Flask) -> None:
    team = held.team()
    owner, member = team["owner"], team["member"]
    ids = _deals(held, owner, 2)
    body = {"entity": "deal", "action": "update", "ids": ids, "changes": {"title": "No"}}
    queued = bulk(held, owner, body).get_json()
    assert queued["status"] == "pending"
    r = held.post(f"/bulk-actions/{queued['id']}/cancel", user=member, org=owner.org_id)
    assert r.status_code == 403 and error_code(r) == "NOT_OWNER"
    r = held.post(f"/bulk-actions/{queued['id']}/cancel", user=owner, org=owner.org_id)
    assert r.status_code == 200, r.get_json()
    assert (r.get_json()["status"], r.get_json()["cancel_requested"]) == ("cancelled", True)
    assert run_bulk_action(db, queued["id"], held_app.extensions["crm_settings"]) is None
    assert {deal_of(held, owner, i)["title"] for i in ids} == {"Website redesign"}
    again = held.post(f"/bulk-actions/{queued['id']}/cancel", user=owner, org=owner.org_id)
    assert again.status_code == 200 and again.get_json()["status"] == "cancelled"


def test_cancel_stops_a_running_job_after_its_batch(
    held: ApiClient, db: Database, held_app: Flask
) -> None:
    owner = held.team()["owner"]
    ids = _deals(held, owner, 5)
    body = {"entity": "deal", "action": "update", "ids": ids, "changes": {"title": "Yes"}}
    job_id = bulk(held, owner, body).get_json()["id"]

    def cancel_after_the_first_batch() -> None:
        r = held.post(f"/bulk-actions/{job_id}/cancel", user=owner, org=owner.org_id)
        assert r.status_code == 200, r.get_json()
        assert r.get_json()["status"] == "running"

    settings = held_app.extensions["crm_settings"]
    status = run_bulk_action(
        db, job_id, settings, batch_size=2, announce=cancel_after_the_first_batch
    )
    assert status is BulkActionStatus.CANCELLED
    done = job(held, owner, job_id)
    assert (done["status"], done["done"], done["succeeded"], done["total"]) == (
        "cancelled",
        2,
        2,
        5,
    )
    assert [deal_of(held, owner, i)["title"] for i in ids] == ["Yes"] * 2 + ["Website redesign"] * 3
    r = held.post(f"/bulk-actions/{job_id}/cancel", user=owner, org=owner.org_id)
    assert r.status_code == 200
    finished = bulk(held, owner, {**body, "ids": ids[:1]}).get_json()["id"]
    assert run_bulk_action(db, finished, settings) is BulkActionStatus.DONE
    r = held.post(f"/bulk-actions/{finished}/cancel", user=owner, org=owner.org_id)
    assert r.status_code == 409 and error_code(r) == "BULK_ACTION_FINISHED"


class _Killed(BaseException):
    """The worker dies (nothing in the run catches it, as nothing catches SIGKILL)."""


def test_a_run_that_dies_resumes_without_doing_a_record_twice(
    held: ApiClient, db: Database, held_app: Flask
) -> None:
    owner = held.team()["owner"]
    ids = _deals(held, owner, 7)
    body = {"entity": "deal", "action": "update", "ids": ids, "changes": {"status": "in_progress"}}
    job_id = bulk(held, owner, body).get_json()["id"]
    batches = []

    def die_after_two_batches() -> None:
        batches.append(1)
        if len(batches) == 2:
            raise _Killed

    settings = held_app.extensions["crm_settings"]
    with pytest.raises(_Killed):
        run_bulk_action(db, job_id, settings, batch_size=3, announce=die_after_two_batches)
    stopped = job(held, owner, job_id)
    assert (stopped["status"], stopped["done"]) == ("running", 6)
    # its lease is live until it shows no progress for the stall interval
    assert run_bulk_action(db, job_id, settings, batch_size=3) is None
    stalled = dataclasses.replace(settings, import_stall_seconds=0.0)
    assert run_bulk_action(db, job_id, stalled, batch_size=3) is BulkActionStatus.DONE
    done = job(held, owner, job_id)
    assert (done["status"], done["total"], done["done"], done["succeeded"]) == ("done", 7, 7, 7)
    assert events(db, "deal.status_changed", ids) == dict.fromkeys(ids, 1)


def test_a_batch_locks_its_records_in_one_statement(
    held: ApiClient, db: Database, held_app: Flask
) -> None:
    """Each record goes through the single PATCH's function, which locks its row; a batch
    locks and loads its rows up front in one statement, and the function finds them there."""
    owner = held.team()["owner"]
    ids = _deals(held, owner, 5)
    body = {"entity": "deal", "action": "update", "ids": ids, "changes": {"title": "Locked"}}
    job_id = bulk(held, owner, body).get_json()["id"]
    locks: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("SELECT deals.id") and "FOR UPDATE" in statement:
            locks.append(statement)

    event.listen(db.engine, "before_cursor_execute", seen)
    try:
        settings = held_app.extensions["crm_settings"]
        assert run_bulk_action(db, job_id, settings) is BulkActionStatus.DONE
    finally:
        event.remove(db.engine, "before_cursor_execute", seen)
    assert len(locks) == 1, locks
    with db.transaction() as s:
        titles = set(s.scalars(select(Deal.title).where(Deal.id.in_(ids))))
    assert titles == {"Locked"}


# --- what a refused record leaves behind --------------------------------------------------------


def _update_deal_but(record_id: int, misstep: str) -> Any:
    """The registry's deal update, except on `record_id`: after the update the database
    refuses a statement (`refused`), or the change is made and then refused by a rule
    (`left_behind`: a rule checked too late), or an audit entry is recorded and then the
    record refused (`audited`: the entries wait for the commit's INSERT)."""

    def apply(session: Any, actor: Any, deal_id: int, changes: dict[str, Any]) -> None:
        if deal_id == record_id and misstep == "left_behind":
            deals.get_deal(session, actor, deal_id).title = "Leaked"
            raise Forbidden("Refused after a change", code="LATE_REFUSAL")
        if deal_id == record_id and misstep == "audited":
            audit.record(session, actor.organization_id, "deal.poked", "deal", deal_id)
            raise Forbidden("Refused after an audit entry", code="LATE_REFUSAL")
        deals.update_deal(session, actor, deal_id, changes)
        if deal_id == record_id:
            session.execute(text("SELECT 1 / 0"))

    return apply


@pytest.mark.parametrize(
    ("misstep", "code"),
    [("refused", "RECORD_FAILED"), ("left_behind", "LATE_REFUSAL"), ("audited", "LATE_REFUSAL")],
)
def test_a_record_that_fails_is_undone_alone(
    api: ApiClient, db: Database, team, monkeypatch: pytest.MonkeyPatch, misstep: str, code: str
) -> None:
    owner = team["owner"]
    contact = api.contact(owner)["id"]
    # 15 records: their events and audit entries (60 rows) commit past MANY_ROWS
    ids = [api.deal(owner, contact_id=contact)["id"] for _ in range(15)]
    bad = ids[7]
    good = [i for i in ids if i != bad]
    monkeypatch.setitem(actions._actions["update"], "deal", _update_deal_but(bad, misstep))
    body = {"entity": "deal", "action": "update", "ids": ids, "changes": {"status": "lost"}}
    done = run_to_end(api, owner, body)
    assert (done["succeeded"], done["failed"]) == (14, 1)
    assert errors_of(done) == {bad: code}
    if misstep == "refused":
        assert "DivisionByZero" in done["errors"][0]["message"]
    statuses = {i: deal_of(api, owner, i)["status"] for i in ids}
    assert statuses == {**dict.fromkeys(good, "lost"), bad: "new"}
    assert deal_of(api, owner, bad)["title"] == "Website redesign"
    assert events(db, "deal.updated", ids) == dict.fromkeys(good, 1)
    # the audit log: each change once (the batch redone one by one), nothing of the refused
    with db.transaction() as s:
        audited = Counter(
            s.execute(
                select(AuditEntry.action, AuditEntry.entity_id).where(
                    AuditEntry.entity_type == "deal", AuditEntry.entity_id.in_(ids)
                )
            ).all()
        )
    expected = {("deal.created", i): 1 for i in ids} | {("deal.updated", i): 1 for i in good}
    assert audited == Counter(expected)


def test_a_job_whose_user_left_fails(held: ApiClient, db: Database, held_app: Flask) -> None:
    team = held.team()
    owner, member = team["owner"], team["member"]
    deal = held.deal(member, org=owner.org_id)
    body = {"entity": "deal", "action": "delete", "ids": [deal["id"]]}
    job_id = bulk(held, member, body).get_json()["id"]
    r = held.delete(f"/organizations/{owner.org_id}/members/{member.id}", user=owner)
    assert r.status_code == 204, r.get_json()
    settings = held_app.extensions["crm_settings"]
    assert run_bulk_action(db, job_id, settings) is BulkActionStatus.FAILED
    failed = job(held, owner, job_id)
    assert failed["status"] == "failed"
    assert failed["error"] == "The user who started it is no longer a member of the organization"
    assert (failed["done"], failed["finished_at"] is not None) == (0, True)
    assert deal_of(held, owner, deal["id"])["id"] == deal["id"]  # still there


def test_api_keys_write_key_acts_read_key_is_refused(api: ApiClient, team) -> None:
    owner = team["owner"]
    deal = api.deal(owner)
    keys = {}
    for scope in ("read", "write"):
        r = api.post(
            "/api-keys", user=owner, org=owner.org_id, json={"name": scope, "scope": scope}
        )
        assert r.status_code == 201, r.get_json()
        keys[scope] = r.get_json()["key"]
    body = {"entity": "deal", "action": "update", "ids": [deal["id"]], "changes": {"title": "K"}}
    r = api.post("/bulk-actions", token=keys["read"], json=body)
    assert r.status_code == 403 and error_code(r) == "API_KEY_READ_ONLY"
    assert api.get("/bulk-actions", token=keys["read"]).get_json()["total"] == 0
    r = api.post("/bulk-actions", token=keys["write"], json=body)
    assert r.status_code == 202, r.get_json()
    done = api.get(f"/bulk-actions/{r.get_json()['id']}", token=keys["read"]).get_json()
    assert (done["status"], done["succeeded"], done["created_by"]) == ("done", 1, owner.id)
    assert deal_of(api, owner, deal["id"])["title"] == "K"


def test_the_run_acts_in_the_name_of_its_user_and_key(
    held: ApiClient, db: Database, held_app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What audit entries and events will name (context.origin) in the worker: the user and
    the API key that asked, not the system."""
    owner = held.register()
    deal = held.deal(owner)
    made = held.post(
        "/api-keys", user=owner, org=owner.org_id, json={"name": "k", "scope": "write"}
    )
    key = made.get_json()
    seen = []

    def update(session: Any, actor: Any, deal_id: int, changes: dict[str, Any]) -> None:
        seen.append((context.origin().user_id, context.origin().api_key_id, actor.api_key_id))
        deals.update_deal(session, actor, deal_id, changes)

    monkeypatch.setitem(actions._actions["update"], "deal", update)
    body = {"entity": "deal", "action": "update", "ids": [deal["id"]], "changes": {"title": "K"}}
    job_id = held.post("/bulk-actions", token=key["key"], json=body).get_json()["id"]
    assert context.origin().is_system
    settings = held_app.extensions["crm_settings"]
    assert run_bulk_action(db, job_id, settings) is BulkActionStatus.DONE
    assert seen == [(owner.id, key["id"], key["id"])]
    assert context.origin().is_system
    # the audit log: the job's own entries and the record's change, in the key's name
    by_key = {"type": "api_key", "user_id": owner.id, "api_key_id": key["id"]}
    log = held.get("/audit-log", user=owner, org=owner.org_id, query={"page_size": 100})
    entries = {(e["action"], e["entity_id"]): e for e in log.get_json()["items"]}
    for action, entity_id in (
        ("bulk_action.started", job_id),
        ("deal.updated", deal["id"]),
        ("bulk_action.done", job_id),
    ):
        assert entries[(action, entity_id)]["actor"] == by_key, action
    assert entries[("bulk_action.done", job_id)]["changes"]["succeeded"] == [None, 1]


def test_trash_delete_hides_and_restore_brings_back(api: ApiClient, db: Database, team) -> None:
    """A bulk delete puts records in the trash like a DELETE; a filter never matches the
    trash; a bulk restore brings them back by ids (a live one fails as a single restore)."""
    owner = team["owner"]
    contact = api.contact(owner)["id"]
    ids = [api.deal(owner, contact_id=contact)["id"] for _ in range(3)]
    done = run_to_end(api, owner, {"entity": "deal", "action": "delete", "ids": ids[:2]})
    assert (done["succeeded"], done["failed"]) == (2, 0)
    assert [api.get(f"/deals/{i}", user=owner, org=owner.org_id).status_code for i in ids] == [
        404,
        404,
        200,
    ]
    body = {"entity": "deal", "action": "update", "filter": {}, "changes": {"title": "Live"}}
    assert bulk(api, owner, body, dry_run="true").get_json()["matched"] == 1
    assert run_to_end(api, owner, body)["total"] == 1
    restore = {"entity": "deal", "action": "restore", "ids": ids}
    assert bulk(api, owner, restore, dry_run="true").get_json()["matched"] == 2
    done = run_to_end(api, owner, restore)
    assert (done["succeeded"], done["failed"]) == (2, 1)
    single = api.post(f"/trash/deal/{ids[2]}/restore", user=owner, org=owner.org_id)
    assert errors_of(done) == {ids[2]: error_code(single)}
    assert {deal_of(api, owner, i)["title"] for i in ids[:2]} == {"Website redesign"}
    assert events(db, "deal.restored", ids) == {ids[0]: 1, ids[1]: 1}
