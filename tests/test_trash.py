"""Trash and restore over HTTP: a DELETE moves a contact, deal or task to the trash, from
which it is listed, restored exactly as it was, or purged (now, or by beat after
TRASH_RETENTION_DAYS)."""

from __future__ import annotations

import datetime as dt
import json
import threading
from typing import Any

import pytest
from sqlalchemy import func, select, update

from crm_domain.context import Actor
from crm_domain.db import Database
from crm_domain.enums import Role
from crm_domain.models import Activity, Contact, Deal, Task, WebhookDelivery
from crm_domain.services.records import contacts as contacts_service
from crm_domain.services.records import deals as deals_service
from crm_domain.services.records import trash
from crm_domain.services.records.reminders import reminder_key, send_due_reminders
from crm_domain.trashable import INCLUDE_TRASHED
from crm_worker.tasks.trash import purge_expired

from .api import ApiClient, User, error_code
from .stack import wait_until


def _trash(api: ApiClient, user: User, entity: str, **query: Any) -> dict[str, Any]:
    r = api.get("/trash", user=user, org=user.org_id, query={"entity": entity, **query})
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def _restore(api: ApiClient, user: User, entity: str, record_id: int):
    return api.post(f"/trash/{entity}/{record_id}/restore", user=user, org=user.org_id)


def _timeline(api: ApiClient, user: User, deal_id: int) -> list[dict[str, Any]]:
    r = api.get(f"/deals/{deal_id}/activities", user=user, org=user.org_id)
    assert r.status_code == 200, r.get_json()
    return r.get_json()["items"]


def webhook_endpoint(api: ApiClient, user: User, *types: str) -> int:
    """An endpoint for `types` (nothing listens there: the deliveries rows are what counts)."""
    body = {"url": "http://127.0.0.1:9/hook", "event_types": list(types)}
    r = api.post("/webhooks", user=user, org=user.org_id, json=body)
    assert r.status_code == 201, r.get_json()
    return int(r.get_json()["id"])


def webhooks_sent(db: Database, endpoint_id: int) -> list[tuple[str, str]]:
    """(event type, body) of every delivery written for the endpoint, in order."""
    with db.reads() as s:
        rows = s.execute(
            select(WebhookDelivery.event_type, WebhookDelivery.body)
            .where(WebhookDelivery.endpoint_id == endpoint_id)
            .order_by(WebhookDelivery.id)
        )
        return [(t, b) for t, b in rows]


def _summary(api: ApiClient, user: User) -> dict[str, Any]:
    r = api.get("/analytics/deals/summary", user=user, org=user.org_id)
    assert r.status_code == 200
    return r.get_json()


# --- a deal, its tasks and timeline -------------------------------------------------------------


def test_a_trashed_deal_vanishes_with_its_tasks_and_comes_back_exactly(api: ApiClient) -> None:
    user = api.register()
    deal = api.deal(user, amount="700.00")
    kept, done_before = api.task(user, deal["id"]), api.task(user, deal["id"], title="Alone")
    # A task trashed on its own before the deal stays in the trash when the deal comes back.
    assert api.delete(f"/tasks/{done_before['id']}", user=user, org=user.org_id).status_code == 204
    etag = api.get(f"/deals/{deal['id']}", user=user, org=user.org_id).headers["ETag"]

    assert api.delete(f"/deals/{deal['id']}", user=user, org=user.org_id).status_code == 204

    for path in (f"/deals/{deal['id']}", f"/tasks/{kept['id']}"):
        assert api.get(path, user=user, org=user.org_id).status_code == 404
    r = api.get(f"/deals/{deal['id']}/activities", user=user, org=user.org_id)
    assert r.status_code == 404 and error_code(r) == "DEAL_NOT_FOUND"
    r = api.get("/tasks", user=user, org=user.org_id, query={"deal_id": deal["id"]})
    assert r.status_code == 404
    assert api.get("/deals", user=user, org=user.org_id).get_json()["total"] == 0
    assert api.get("/tasks", user=user, org=user.org_id).get_json()["total"] == 0
    assert _summary(api, user)["total_deals"] == 0
    assert "Website" not in api.get("/deals/export.csv", user=user, org=user.org_id).text
    r = api.patch(f"/deals/{deal['id']}", user=user, org=user.org_id, json={"title": "X"})
    assert r.status_code == 404

    listed = _trash(api, user, "deal")
    assert [i["id"] for i in listed["items"]] == [deal["id"]]
    assert listed["items"][0]["record"] == deal
    assert listed["items"][0]["deleted_by"] == user.id
    # The task that went with its deal is not listed alone; the one trashed alone is.
    assert [i["id"] for i in _trash(api, user, "task")["items"]] == [done_before["id"]]

    r = _restore(api, user, "deal", deal["id"])
    assert r.status_code == 200, r.get_json()
    assert r.get_json() == {"entity": "deal", "id": deal["id"], "record": deal}
    got = api.get(f"/deals/{deal['id']}", user=user, org=user.org_id)
    assert got.get_json() == deal and got.headers["ETag"] == etag
    assert api.get(f"/tasks/{kept['id']}", user=user, org=user.org_id).get_json() == kept
    r = api.get(f"/tasks/{done_before['id']}", user=user, org=user.org_id)
    assert r.status_code == 404
    assert _summary(api, user)["total_deals"] == 1
    assert _trash(api, user, "deal")["items"] == []
    events = [a["payload"].get("event") for a in _timeline(api, user, deal["id"])]
    assert events[:2] == [trash.TIMELINE_RESTORED, trash.TIMELINE_DELETED]


def test_restore_twice_or_live_is_404_and_an_unknown_entity_too(api: ApiClient) -> None:
    user = api.register()
    deal = api.deal(user)
    r = _restore(api, user, "deal", deal["id"])  # live: not in the trash
    assert r.status_code == 404 and error_code(r) == "DEAL_NOT_FOUND"
    assert api.delete(f"/deals/{deal['id']}", user=user, org=user.org_id).status_code == 204
    assert _restore(api, user, "deal", deal["id"]).status_code == 200
    assert _restore(api, user, "deal", deal["id"]).status_code == 404
    assert _restore(api, user, "note", deal["id"]).status_code == 404
    r = api.get("/trash", user=user, org=user.org_id, query={"entity": "note"})
    assert r.status_code == 400


# --- contacts -----------------------------------------------------------------------------------


def test_contact_rules_live_deals_409_trashed_deals_stay_and_restore_order(
    api: ApiClient,
) -> None:
    user = api.register()
    contact = api.contact(user, name="Trashy", email="trashy@example.com")
    deal = api.deal(user, contact_id=contact["id"])
    r = api.delete(f"/contacts/{contact['id']}", user=user, org=user.org_id)
    assert r.status_code == 409 and error_code(r) == "CONTACT_HAS_DEALS"

    assert api.delete(f"/deals/{deal['id']}", user=user, org=user.org_id).status_code == 204
    assert api.delete(f"/contacts/{contact['id']}", user=user, org=user.org_id).status_code == 204
    r = api.get("/contacts", user=user, org=user.org_id, query={"search": "trashy"})
    assert r.get_json()["total"] == 0
    assert api.get(f"/contacts/{contact['id']}", user=user, org=user.org_id).status_code == 404
    r = api.post(
        "/deals", user=user, org=user.org_id, json={"contact_id": contact["id"], "title": "T"}
    )
    assert r.status_code == 404

    r = _restore(api, user, "deal", deal["id"])
    assert r.status_code == 409 and error_code(r) == "CONTACT_IN_TRASH"
    assert r.get_json()["error"]["details"] == {"contact_id": contact["id"]}
    assert _restore(api, user, "contact", contact["id"]).status_code == 200
    r = api.get(f"/contacts/{contact['id']}", user=user, org=user.org_id)
    assert r.get_json() == contact
    # The contact came back alone: its deal is still in the trash until restored itself.
    assert api.get(f"/deals/{deal['id']}", user=user, org=user.org_id).status_code == 404
    assert _restore(api, user, "deal", deal["id"]).status_code == 200


def test_a_task_of_a_trashed_deal_is_restored_with_the_deal_only(api: ApiClient) -> None:
    user = api.register()
    deal = api.deal(user)
    task = api.task(user, deal["id"])
    assert api.delete(f"/tasks/{task['id']}", user=user, org=user.org_id).status_code == 204
    assert api.delete(f"/deals/{deal['id']}", user=user, org=user.org_id).status_code == 204
    r = _restore(api, user, "task", task["id"])
    assert r.status_code == 409 and error_code(r) == "DEAL_IN_TRASH"
    assert _restore(api, user, "deal", deal["id"]).status_code == 200
    assert _restore(api, user, "task", task["id"]).status_code == 200
    assert api.get(f"/tasks/{task['id']}", user=user, org=user.org_id).get_json() == task


# --- who sees and does what ---------------------------------------------------------------------


def test_members_see_and_restore_their_own_only_and_only_owners_admins_purge(
    api: ApiClient,
) -> None:
    team = api.team()
    owner, member = team["owner"], team["member"]
    mine = api.deal(member, org=owner.org_id)
    theirs = api.deal(owner)
    for d in (mine, theirs):
        assert api.delete(f"/deals/{d['id']}", user=owner, org=owner.org_id).status_code == 204

    def ids(user: User) -> set[int]:
        r = api.get("/trash", user=user, org=owner.org_id, query={"entity": "deal"})
        return {i["id"] for i in r.get_json()["items"]}

    assert ids(owner) == {mine["id"], theirs["id"]}
    assert ids(member) == {mine["id"]}
    restore = f"/trash/deal/{theirs['id']}/restore"
    r = api.post(restore, user=member, org=owner.org_id)
    assert r.status_code == 403 and error_code(r) == "NOT_OWNER"
    r = api.delete(f"/trash/deal/{mine['id']}", user=member, org=owner.org_id)
    assert r.status_code == 403 and error_code(r) == "PURGE_FORBIDDEN"
    assert (
        api.post(f"/trash/deal/{mine['id']}/restore", user=member, org=owner.org_id).status_code
        == 200
    )
    assert (
        api.delete(f"/trash/deal/{theirs['id']}", user=owner, org=owner.org_id).status_code == 204
    )
    assert ids(owner) == set()
    r = api.post(restore, user=owner, org=owner.org_id)  # purged: gone for good
    assert r.status_code == 404 and error_code(r) == "DEAL_NOT_FOUND"


def test_the_trash_pages_with_cursors(api: ApiClient) -> None:
    user = api.register()
    contact = api.contact(user)
    deals = [api.deal(user, contact_id=contact["id"]) for _ in range(5)]
    for d in deals:
        assert api.delete(f"/deals/{d['id']}", user=user, org=user.org_id).status_code == 204
    first = _trash(api, user, "deal", page_size=2)
    assert first["total"] == 5
    seen = [i["id"] for i in first["items"]]
    cursor = first["next_cursor"]
    while cursor:
        page = _trash(api, user, "deal", page_size=2, cursor=cursor)
        seen += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
    assert seen == [d["id"] for d in reversed(deals)]


# --- purging ------------------------------------------------------------------------------------


def test_purge_of_a_contact_takes_its_trashed_deals_and_tasks(api: ApiClient, db: Database) -> None:
    user = api.register()
    deal = api.deal(user)
    task = api.task(user, deal["id"])
    assert api.delete(f"/deals/{deal['id']}", user=user, org=user.org_id).status_code == 204
    cid = deal["contact_id"]
    assert api.delete(f"/contacts/{cid}", user=user, org=user.org_id).status_code == 204
    assert api.delete(f"/trash/contact/{cid}", user=user, org=user.org_id).status_code == 204
    with db.reads() as s:
        for model, key in ((Contact, cid), (Deal, deal["id"]), (Task, task["id"])):
            found = s.scalar(
                select(model.id).where(model.id == key).execution_options(**INCLUDE_TRASHED)
            )
            assert found is None, model


def test_purge_expired_removes_only_what_is_older_than_the_retention(
    api: ApiClient, db: Database
) -> None:
    user = api.register()
    old, recent = api.deal(user), api.deal(user)
    for d in (old, recent):
        assert api.delete(f"/deals/{d['id']}", user=user, org=user.org_id).status_code == 204
    with db.transaction() as s:
        s.execute(
            update(Deal)
            .where(Deal.id == old["id"])
            .values(deleted_at=func.now() - dt.timedelta(days=31))
        )
    assert purge_expired() >= 1  # beat's task, TRASH_RETENTION_DAYS = 30
    ids = {i["id"] for i in _trash(api, user, "deal")["items"]}
    assert ids == {recent["id"]}


@pytest.mark.parametrize("entity", ["contact", "deal", "task"])
def test_another_organization_cannot_see_restore_or_purge(api: ApiClient, entity: str) -> None:
    user, other = api.register(), api.register()
    deal = api.deal(user)
    record = {
        "contact": {"id": deal["contact_id"]},
        "deal": deal,
        "task": api.task(user, deal["id"]),
    }[entity]
    if entity == "contact":
        assert api.delete(f"/deals/{deal['id']}", user=user, org=user.org_id).status_code == 204
    assert api.delete(f"/{entity}s/{record['id']}", user=user, org=user.org_id).status_code == 204
    assert _trash(api, other, entity)["items"] == []
    assert _restore(api, other, entity, record["id"]).status_code == 404
    r = api.delete(f"/trash/{entity}/{record['id']}", user=other, org=other.org_id)
    assert r.status_code == 404


# --- everything else skips the trash ------------------------------------------------------------


def test_no_reminder_for_a_trashed_task_or_a_task_of_a_trashed_deal(
    api: ApiClient, db: Database
) -> None:
    user = api.register()
    deal, other = api.deal(user), api.deal(user)
    on_trashed_deal = api.task(user, deal["id"])
    trashed_task, live = api.task(user, other["id"]), api.task(user, other["id"])
    assert api.delete(f"/deals/{deal['id']}", user=user, org=user.org_id).status_code == 204
    assert api.delete(f"/tasks/{trashed_task['id']}", user=user, org=user.org_id).status_code == 204
    tomorrow = dt.date.fromisoformat(live["due_date"])
    with db.transaction() as s:
        written, _ = send_due_reminders(s, today=tomorrow, after_id=on_trashed_deal["id"] - 1)
        reminded = set(
            s.scalars(
                select(Activity.payload["task_id"].as_integer()).where(
                    Activity.event_key.in_(
                        [
                            reminder_key(t["id"], tomorrow)
                            for t in (on_trashed_deal, trashed_task, live)
                        ]
                    )
                )
            )
        )
    assert written >= 1
    assert reminded == {live["id"]}


def test_trash_and_restore_send_deleted_and_restored_webhooks(api: ApiClient, db: Database) -> None:
    user = api.register()
    types = ["contact.deleted", "contact.restored", "deal.deleted", "deal.restored"]
    types += ["task.deleted", "task.restored"]
    endpoint = webhook_endpoint(api, user, *types)
    deal = api.deal(user)
    task = api.task(user, deal["id"])
    cid = deal["contact_id"]
    for path in (f"/tasks/{task['id']}", f"/deals/{deal['id']}", f"/contacts/{cid}"):
        assert api.delete(path, user=user, org=user.org_id).status_code == 204
    for entity, key in (("contact", cid), ("deal", deal["id"]), ("task", task["id"])):
        assert _restore(api, user, entity, key).status_code == 200
    sent = webhooks_sent(db, endpoint)
    assert [t for t, _ in sent] == [
        "task.deleted",
        "deal.deleted",
        "contact.deleted",
        "contact.restored",
        "deal.restored",
        "task.restored",
    ]
    restored = json.loads(sent[4][1])
    assert restored["type"] == "deal.restored" and restored["data"] == deal


def test_a_member_sees_the_trashed_tasks_of_their_own_deals_a_manager_all(api: ApiClient) -> None:
    team = api.team()
    owner, member, manager = team["owner"], team["member"], team["manager"]
    mine = api.task(member, api.deal(member, org=owner.org_id)["id"], org=owner.org_id)
    theirs = api.task(owner, api.deal(owner)["id"])
    for t in (mine, theirs):
        assert api.delete(f"/tasks/{t['id']}", user=owner, org=owner.org_id).status_code == 204

    def ids(user: User) -> set[int]:
        r = api.get("/trash", user=user, org=owner.org_id, query={"entity": "task"})
        return {i["id"] for i in r.get_json()["items"]}

    assert ids(member) == {mine["id"]}
    assert ids(manager) == {mine["id"], theirs["id"]}
    r = api.post(f"/trash/task/{theirs['id']}/restore", user=member, org=owner.org_id)
    assert r.status_code == 403 and error_code(r) == "NOT_OWNER"
    r = api.post(f"/trash/task/{mine['id']}/restore", user=member, org=owner.org_id)
    assert r.status_code == 200 and r.get_json()["record"] == mine


@pytest.mark.parametrize(("case", "status"), [("task", 404), ("deal", 404), ("restored_deal", 409)])
def test_a_child_made_or_restored_while_its_parent_goes_to_the_trash_is_refused(
    api: ApiClient, db: Database, case: str, status: int
) -> None:
    """The DELETE holds the parent's row lock until it commits; creating (or restoring) a
    child of it meanwhile waits, then finds the parent in the trash instead of leaving a live
    child under it."""
    user = api.register()
    deal = api.deal(user)
    if case == "task":
        parent_id, path = deal["id"], "/tasks"
        body: Any = {"deal_id": deal["id"], "title": "Late", "due_date": "2999-01-01"}
    else:
        assert api.delete(f"/deals/{deal['id']}", user=user, org=user.org_id).status_code == 204
        parent_id, path = deal["contact_id"], "/deals"
        body = {"contact_id": deal["contact_id"], "title": "Late"}
        if case == "restored_deal":
            path, body = f"/trash/deal/{deal['id']}/restore", None
    actor = Actor(user_id=user.id, organization_id=user.org_id, role=Role.OWNER)
    answers: list[Any] = []
    worker = threading.Thread(
        target=lambda: answers.append(api.post(path, user=user, org=user.org_id, json=body))
    )
    with db.transaction() as s:
        delete = deals_service.delete_deal if case == "task" else contacts_service.delete_contact
        delete(s, actor, parent_id)
        worker.start()
        wait_until(lambda: _lock_waiters(db) > 0, 10, 0.02)
    worker.join(10)
    assert answers[0].status_code == status, answers[0].get_json()


def _lock_waiters(db: Database) -> int:
    with db.engine.connect() as conn:
        return int(
            conn.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock'"
            ).scalar()
            or 0
        )


def test_a_statement_run_again_hides_the_trash_without_a_new_copy(
    api: ApiClient, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A statement built once and run again (get_in_org's) gets the trash rule once: its
    cache key is not walked again. One derived from it gets the rule of its own."""
    from sqlalchemy.sql import cache_key

    user = api.register()
    kept, gone = api.deal(user), api.deal(user)
    assert api.delete(f"/deals/{gone['id']}", user=user, org=user.org_id).status_code == 204
    stmt = select(Deal).where(Deal.organization_id == user.org_id)
    walks: list[object] = []
    walk = cache_key.HasCacheKey._generate_cache_key
    monkeypatch.setattr(
        cache_key.HasCacheKey,
        "_generate_cache_key",
        lambda self: walks.append(self) or walk(self),
    )
    for _ in range(3):
        with db.reads() as s:
            assert [d.id for d in s.scalars(stmt)] == [kept["id"]]
    assert len(walks) == 1, walks

    derived = stmt.where(Deal.id == gone["id"])
    with db.reads() as s:
        assert list(s.scalars(derived)) == []
        assert [d.id for d in s.scalars(derived, execution_options=INCLUDE_TRASHED)] == [gone["id"]]
