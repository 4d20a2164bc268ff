"""GET /notifications, POST /notifications/{id}/read and POST /notifications/read-all.

Notifications are produced by the deadline reminders (send_due_reminders), scanning only the
tasks created by the test (ids from the test's first task on)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from crm_domain.services.records.reminders import send_due_reminders

from .api import ApiClient, User, error_code

NOTIFICATION_KEYS = {"id", "organization_id", "type", "payload", "created_at", "read_at", "is_read"}


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def _remind(db, first_task_id: int) -> int:
    total, after = 0, first_task_id - 1
    while True:
        with db.transaction() as session:
            written, last = send_due_reminders(session, today=_today(), after_id=after)
        total += written
        if last is None:
            return total
        after = last


def _due_task(api: ApiClient, user: User, deal_id: int, org: int | None = None) -> int:
    return api.task(user, deal_id, org=org, due_date=_today().isoformat())["id"]


def _list(api: ApiClient, user: User, org: int, **query: Any) -> dict[str, Any]:
    r = api.get("/notifications", user=user, org=org, query=query or None)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def _task_ids(page: dict[str, Any]) -> list[int]:
    return [n["payload"]["task_id"] for n in page["items"]]


def _setup(api: ApiClient, db) -> dict[str, Any]:
    """`me` owns three due tasks' deals in their org and one in `elsewhere`; `colleague`
    (a member of my org) owns one."""
    me = api.register()
    colleague = api.register()
    api.add_member(me, me.org_id, colleague, "member")
    colleague.org_id = me.org_id
    elsewhere = api.register()
    api.add_member(elsewhere, elsewhere.org_id, me, "member")

    my_deal = api.deal(me, title="Mine")
    first = _due_task(api, me, my_deal["id"])
    mine = [first, _due_task(api, me, my_deal["id"]), _due_task(api, me, my_deal["id"])]
    colleague_deal = api.deal(colleague, title="Colleague's")
    theirs = [_due_task(api, colleague, colleague_deal["id"])]
    away_deal = api.deal(me, org=elsewhere.org_id, title="Away")
    away = [_due_task(api, me, away_deal["id"], org=elsewhere.org_id)]
    assert _remind(db, first) == 5
    return {
        "me": me,
        "colleague": colleague,
        "elsewhere": elsewhere,
        "mine": mine,
        "theirs": theirs,
        "away": away,
        "my_deal": my_deal,
    }


def test_lists_only_the_callers_notifications_in_the_header_org(api: ApiClient, db) -> None:
    s = _setup(api, db)
    me, colleague = s["me"], s["colleague"]

    page = _list(api, me, me.org_id)
    assert page["total"] == 3
    assert (page["page"], page["page_size"], page["pages"]) == (1, 20, 1)
    assert _task_ids(page) == sorted(s["mine"], reverse=True)  # newest first
    ids = [n["id"] for n in page["items"]]
    assert ids == sorted(ids, reverse=True)
    first = page["items"][0]
    assert set(first) == NOTIFICATION_KEYS
    assert first["type"] == "task_due"
    assert first["organization_id"] == me.org_id
    assert first["is_read"] is False
    assert first["read_at"] is None
    assert first["payload"] == {
        "task_id": s["mine"][2],
        "task_title": "Call client",
        "due_date": _today().isoformat(),
        "days_overdue": 0,
        "deal_id": s["my_deal"]["id"],
        "deal_title": "Mine",
    }
    assert dt.datetime.fromisoformat(first["created_at"]).tzinfo is not None

    assert _task_ids(_list(api, colleague, me.org_id)) == s["theirs"]
    assert _task_ids(_list(api, me, s["elsewhere"].org_id)) == s["away"]
    # The owner of `elsewhere` has no notifications: the deal there belongs to me.
    assert _list(api, s["elsewhere"], s["elsewhere"].org_id)["total"] == 0


def test_pagination(api: ApiClient, db) -> None:
    s = _setup(api, db)
    me = s["me"]
    newest_first = sorted(s["mine"], reverse=True)
    p1 = _list(api, me, me.org_id, page=1, page_size=2)
    p2 = _list(api, me, me.org_id, page=2, page_size=2)
    p3 = _list(api, me, me.org_id, page=3, page_size=2)
    assert (p1["total"], p1["pages"], p1["page_size"]) == (3, 2, 2)
    assert _task_ids(p1) == newest_first[:2]
    assert _task_ids(p2) == newest_first[2:]
    assert p3["items"] == []
    r = api.get("/notifications", user=me, org=me.org_id, query={"page_size": 101})
    assert r.status_code == 400
    assert error_code(r) == "VALIDATION_ERROR"


def test_tenant_header_and_membership_are_required(api: ApiClient) -> None:
    me, stranger = api.register(), api.register()
    r = api.get("/notifications", user=me)
    assert r.status_code == 400
    assert error_code(r) == "ORGANIZATION_HEADER_REQUIRED"
    r = api.get("/notifications", user=me, org=stranger.org_id)
    assert r.status_code == 403
    assert error_code(r) == "NOT_ORGANIZATION_MEMBER"
    r = api.post("/notifications/read-all", user=me, org=stranger.org_id)
    assert r.status_code == 403
    assert error_code(r) == "NOT_ORGANIZATION_MEMBER"
    r = api.get("/notifications", org=me.org_id)
    assert r.status_code == 401
    assert error_code(r) == "UNAUTHORIZED"


def test_mark_read_is_idempotent_and_filters_unread(api: ApiClient, db) -> None:
    s = _setup(api, db)
    me = s["me"]
    target = _list(api, me, me.org_id)["items"][1]

    before = dt.datetime.now(dt.UTC)
    r = api.post(f"/notifications/{target['id']}/read", user=me, org=me.org_id)
    assert r.status_code == 200, r.get_json()
    read = r.get_json()
    assert read["id"] == target["id"]
    assert read["is_read"] is True
    read_at = dt.datetime.fromisoformat(read["read_at"])
    assert read_at.tzinfo is not None
    assert before - dt.timedelta(seconds=5) <= read_at <= dt.datetime.now(dt.UTC)
    assert {k: v for k, v in read.items() if k not in ("is_read", "read_at")} == {
        k: v for k, v in target.items() if k not in ("is_read", "read_at")
    }

    r = api.post(f"/notifications/{target['id']}/read", user=me, org=me.org_id)
    assert r.status_code == 200
    assert r.get_json()["read_at"] == read["read_at"]  # the first read time is kept
    assert r.get_json()["is_read"] is True

    unread = _list(api, me, me.org_id, unread_only="true")
    assert unread["total"] == 2
    assert target["id"] not in [n["id"] for n in unread["items"]]
    assert all(n["is_read"] is False for n in unread["items"])
    everything = _list(api, me, me.org_id, unread_only="false")
    assert everything["total"] == 3
    listed = {n["id"]: n for n in everything["items"]}
    assert listed[target["id"]]["is_read"] is True
    assert listed[target["id"]]["read_at"] == read["read_at"]


def test_someone_elses_notification_is_404(api: ApiClient, db) -> None:
    s = _setup(api, db)
    me, colleague = s["me"], s["colleague"]
    theirs = _list(api, colleague, me.org_id)["items"][0]
    away = _list(api, me, s["elsewhere"].org_id)["items"][0]

    r = api.post(f"/notifications/{theirs['id']}/read", user=me, org=me.org_id)
    assert r.status_code == 404
    assert error_code(r) == "NOTIFICATION_NOT_FOUND"
    # My own notification, but of another organization than the header's.
    r = api.post(f"/notifications/{away['id']}/read", user=me, org=me.org_id)
    assert r.status_code == 404
    assert error_code(r) == "NOTIFICATION_NOT_FOUND"
    r = api.post("/notifications/2147483647/read", user=me, org=me.org_id)
    assert r.status_code == 404
    assert error_code(r) == "NOTIFICATION_NOT_FOUND"

    assert _list(api, colleague, me.org_id)["items"][0]["is_read"] is False
    assert _list(api, me, s["elsewhere"].org_id)["items"][0]["is_read"] is False


def test_read_all_touches_only_the_callers_notifications_in_that_org(api: ApiClient, db) -> None:
    s = _setup(api, db)
    me, colleague, elsewhere = s["me"], s["colleague"], s["elsewhere"]
    first = _list(api, me, me.org_id)["items"][0]
    r = api.post(f"/notifications/{first['id']}/read", user=me, org=me.org_id)
    assert r.status_code == 200
    first_read_at = r.get_json()["read_at"]

    r = api.post("/notifications/read-all", user=me, org=me.org_id)
    assert r.status_code == 200
    assert r.get_json() == {"updated": 2}
    page = _list(api, me, me.org_id)
    assert all(n["is_read"] for n in page["items"])
    assert {n["id"]: n["read_at"] for n in page["items"]}[first["id"]] == first_read_at
    assert _list(api, me, me.org_id, unread_only="true")["total"] == 0

    # Not touched: the colleague's in the same org, mine in the other org.
    assert _list(api, colleague, me.org_id, unread_only="true")["total"] == 1
    assert _list(api, me, elsewhere.org_id, unread_only="true")["total"] == 1

    r = api.post("/notifications/read-all", user=me, org=me.org_id)
    assert r.status_code == 200
    assert r.get_json() == {"updated": 0}
    r = api.post("/notifications/read-all", user=me, org=elsewhere.org_id)
    assert r.status_code == 200
    assert r.get_json() == {"updated": 1}
