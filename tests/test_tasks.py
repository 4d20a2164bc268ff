"""Tasks over HTTP: creation rules and check order, updates, ownership and list filters."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from .api import ApiClient, User, error_code

TASK_KEYS = {
    "id",
    "organization_id",
    "deal_id",
    "title",
    "description",
    "due_date",
    "is_done",
    "created_at",
    "updated_at",
    "custom_fields",
}


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def _day(offset: int) -> str:
    return (_today() + dt.timedelta(days=offset)).isoformat()


def _create(api: ApiClient, user: User, deal_id: int, due: str | None = None, **fields: Any):
    body = {"deal_id": deal_id, "title": "Call client", "due_date": due or _day(1), **fields}
    return api.post("/tasks", user=user, org=user.org_id, json=body)


def _timeline(api: ApiClient, user: User, deal_id: int) -> list[dict[str, Any]]:
    r = api.get(
        f"/deals/{deal_id}/activities", user=user, org=user.org_id, query={"page_size": 100}
    )
    assert r.status_code == 200
    return r.get_json()["items"]


def _ids(r) -> list[int]:
    assert r.status_code == 200, r.get_json()
    return [item["id"] for item in r.get_json()["items"]]


# --- create ----------------------------------------------------------------------------------


def test_create_201_and_timeline_entry(api: ApiClient) -> None:
    user = api.register()
    deal = api.deal(user)
    r = _create(
        api, user, deal["id"], due=_day(3), title="  Send proposal ", description="Draft v2"
    )
    assert r.status_code == 201
    task = r.get_json()
    assert set(task) == TASK_KEYS
    assert task["deal_id"] == deal["id"]
    assert task["organization_id"] == user.org_id
    assert task["title"] == "Send proposal"
    assert task["description"] == "Draft v2"
    assert task["due_date"] == _day(3)
    assert task["is_done"] is False

    r = api.get(f"/tasks/{task['id']}", user=user, org=user.org_id)
    assert r.status_code == 200
    assert r.get_json() == task
    assert r.headers.get("ETag")

    entries = _timeline(api, user, deal["id"])
    assert len(entries) == 1
    entry = entries[0]
    assert entry["type"] == "task_created"
    assert entry["payload"] == {"task_id": task["id"], "task_title": "Send proposal"}
    assert entry["author_id"] == user.id
    assert entry["deal_id"] == deal["id"]


def test_create_without_description(api: ApiClient) -> None:
    user = api.register()
    deal = api.deal(user)
    r = _create(api, user, deal["id"])
    assert r.status_code == 201
    assert r.get_json()["description"] is None


def test_due_today_accepted(api: ApiClient) -> None:
    user = api.register()
    deal = api.deal(user)
    r = _create(api, user, deal["id"], due=_day(0))
    assert r.status_code == 201
    assert r.get_json()["due_date"] == _today().isoformat()


@pytest.mark.parametrize("offset", [-1, -365])
def test_due_in_past_rejected(api: ApiClient, offset: int) -> None:
    user = api.register()
    deal = api.deal(user)
    r = _create(api, user, deal["id"], due=_day(offset))
    assert r.status_code == 400
    assert error_code(r) == "DUE_DATE_IN_PAST"
    assert "past" in r.get_json()["error"]["message"]
    assert api.get("/tasks", user=user, org=user.org_id).get_json()["total"] == 0
    assert _timeline(api, user, deal["id"]) == []


@pytest.mark.parametrize(
    "body",
    [
        {"title": ""},
        {"title": "   "},
        {"due_date": "tomorrow"},
        {"due_date": "2030-02-30"},
        {"due_date": None},
        {"deal_id": "1"},
        {"deal_id": 0},
        {"is_done": True},
        {"extra": 1},
    ],
)
def test_create_validation(api: ApiClient, body: dict) -> None:
    user = api.register()
    deal = api.deal(user)
    full = {"deal_id": deal["id"], "title": "T", "due_date": _day(1), **body}
    r = api.post("/tasks", user=user, org=user.org_id, json=full)
    assert r.status_code == 400
    assert error_code(r) == "VALIDATION_ERROR"
    assert api.get("/tasks", user=user, org=user.org_id).get_json()["total"] == 0


@pytest.mark.parametrize("missing", ["deal_id", "title", "due_date"])
def test_create_required_fields(api: ApiClient, missing: str) -> None:
    user = api.register()
    deal = api.deal(user)
    body = {"deal_id": deal["id"], "title": "T", "due_date": _day(1)}
    del body[missing]
    r = api.post("/tasks", user=user, org=user.org_id, json=body)
    assert r.status_code == 400
    assert error_code(r) == "VALIDATION_ERROR"
    assert missing in r.get_json()["error"]["details"]["errors"]["json"]


def test_member_on_anothers_deal_forbidden(api: ApiClient) -> None:
    team = api.team()
    deal = api.deal(team["member2"])
    r = _create(api, team["member"], deal["id"])
    assert r.status_code == 403
    assert error_code(r) == "NOT_OWNER"
    assert _timeline(api, team["member"], deal["id"]) == []


def test_member_on_own_deal_ok(api: ApiClient) -> None:
    team = api.team()
    deal = api.deal(team["member"])
    r = _create(api, team["member"], deal["id"])
    assert r.status_code == 201


@pytest.mark.parametrize("role", ["owner", "admin", "manager"])
def test_manager_and_above_on_any_deal(api: ApiClient, role: str) -> None:
    team = api.team()
    deal = api.deal(team["member"])
    r = _create(api, team[role], deal["id"])
    assert r.status_code == 201
    entry = _timeline(api, team[role], deal["id"])[0]
    assert entry["type"] == "task_created"
    assert entry["author_id"] == team[role].id


def test_deal_of_another_org_is_404(api: ApiClient) -> None:
    alice, bob = api.register(), api.register()
    foreign = api.deal(bob)
    r = _create(api, alice, foreign["id"])
    assert r.status_code == 404
    assert error_code(r) == "DEAL_NOT_FOUND"
    r = _create(api, alice, 2**31 - 1)
    assert r.status_code == 404
    assert error_code(r) == "DEAL_NOT_FOUND"
    assert _timeline(api, bob, foreign["id"]) == []


def test_check_order_404_then_403_then_400(api: ApiClient) -> None:
    team = api.team()
    member = team["member"]
    others = api.deal(team["member2"])
    # Past due on someone else's deal: ownership first.
    r = _create(api, member, others["id"], due=_day(-1))
    assert r.status_code == 403
    assert error_code(r) == "NOT_OWNER"
    # Past due on a foreign-org deal: existence first.
    stranger = api.register()
    foreign = api.deal(stranger)
    r = _create(api, member, foreign["id"], due=_day(-1))
    assert r.status_code == 404
    assert error_code(r) == "DEAL_NOT_FOUND"
    # Past due on an own deal: the date.
    own = api.deal(member)
    r = _create(api, member, own["id"], due=_day(-1))
    assert r.status_code == 400
    assert error_code(r) == "DUE_DATE_IN_PAST"


# --- update / delete -------------------------------------------------------------------------


def test_patch_is_done_and_fields(api: ApiClient) -> None:
    user = api.register()
    deal = api.deal(user)
    task = api.task(user, deal["id"])
    url = f"/tasks/{task['id']}"
    r = api.patch(url, user=user, org=user.org_id, json={"is_done": True})
    assert r.status_code == 200
    body = r.get_json()
    assert body["is_done"] is True
    assert body["title"] == task["title"]
    r = api.patch(
        url,
        user=user,
        org=user.org_id,
        json={"title": "Renamed", "description": "More", "due_date": _day(10)},
    )
    assert r.status_code == 200
    body = r.get_json()
    assert (body["title"], body["description"], body["due_date"]) == ("Renamed", "More", _day(10))
    assert api.get(url, user=user, org=user.org_id).get_json() == body
    r = api.patch(url, user=user, org=user.org_id, json={"is_done": False, "due_date": _day(0)})
    assert r.status_code == 200
    assert r.get_json()["is_done"] is False


def test_patch_due_date_to_past_rejected(api: ApiClient) -> None:
    user = api.register()
    deal = api.deal(user)
    task = api.task(user, deal["id"])
    url = f"/tasks/{task['id']}"
    r = api.patch(url, user=user, org=user.org_id, json={"due_date": _day(-1), "title": "X"})
    assert r.status_code == 400
    assert error_code(r) == "DUE_DATE_IN_PAST"
    assert "past" in r.get_json()["error"]["message"]
    assert api.get(url, user=user, org=user.org_id).get_json() == task


@pytest.mark.parametrize(
    "body", [{"title": ""}, {"is_done": "maybe"}, {"due_date": "x"}, {"deal_id": 1}]
)
def test_patch_validation(api: ApiClient, body: dict) -> None:
    user = api.register()
    deal = api.deal(user)
    task = api.task(user, deal["id"])
    r = api.patch(f"/tasks/{task['id']}", user=user, org=user.org_id, json=body)
    assert r.status_code == 400
    assert error_code(r) == "VALIDATION_ERROR"


def test_member_cannot_patch_or_delete_tasks_on_anothers_deal(api: ApiClient) -> None:
    team = api.team()
    member = team["member"]
    deal = api.deal(team["member2"])
    task = api.task(team["member2"], deal["id"])
    url = f"/tasks/{task['id']}"
    r = api.patch(url, user=member, org=member.org_id, json={"is_done": True})
    assert r.status_code == 403
    assert error_code(r) == "NOT_OWNER"
    r = api.delete(url, user=member, org=member.org_id)
    assert r.status_code == 403
    assert error_code(r) == "NOT_OWNER"
    r = api.get(url, user=member, org=member.org_id)
    assert r.status_code == 200
    assert r.get_json() == task


def test_member_task_created_by_manager_on_members_deal(api: ApiClient) -> None:
    """'Own task' means a task on an own deal, whoever created it."""
    team = api.team()
    member = team["member"]
    deal = api.deal(member)
    task = api.task(team["manager"], deal["id"])
    url = f"/tasks/{task['id']}"
    r = api.patch(url, user=member, org=member.org_id, json={"is_done": True})
    assert r.status_code == 200
    r = api.delete(url, user=member, org=member.org_id)
    assert r.status_code == 204
    r = api.get(url, user=member, org=member.org_id)
    assert r.status_code == 404
    assert error_code(r) == "TASK_NOT_FOUND"


@pytest.mark.parametrize("role", ["owner", "admin", "manager"])
def test_manager_and_above_patch_and_delete_any_task(api: ApiClient, role: str) -> None:
    team = api.team()
    deal = api.deal(team["member"])
    task = api.task(team["member"], deal["id"])
    url = f"/tasks/{task['id']}"
    actor = team[role]
    assert api.patch(url, user=actor, org=actor.org_id, json={"is_done": True}).status_code == 200
    assert api.delete(url, user=actor, org=actor.org_id).status_code == 204


def test_task_of_another_org_is_404(api: ApiClient) -> None:
    alice, bob = api.register(), api.register()
    task = api.task(alice, api.deal(alice)["id"])
    url = f"/tasks/{task['id']}"
    for method in ("get", "patch", "delete"):
        kw = {"json": {"is_done": True}} if method == "patch" else {}
        r = getattr(api, method)(url, user=bob, org=bob.org_id, **kw)
        assert r.status_code == 404, method
        assert error_code(r) == "TASK_NOT_FOUND"
    assert api.get(url, user=alice, org=alice.org_id).get_json() == task


def test_task_if_match(api: ApiClient) -> None:
    user = api.register()
    task = api.task(user, api.deal(user)["id"])
    url = f"/tasks/{task['id']}"
    etag = api.get(url, user=user, org=user.org_id).headers["ETag"]
    r = api.patch(
        url, user=user, org=user.org_id, json={"is_done": True}, headers={"If-Match": '"x"'}
    )
    assert r.status_code == 412
    assert error_code(r) == "PRECONDITION_FAILED"
    r = api.patch(
        url, user=user, org=user.org_id, json={"is_done": True}, headers={"If-Match": etag}
    )
    assert r.status_code == 200
    r = api.delete(url, user=user, org=user.org_id, headers={"If-Match": etag})
    assert r.status_code == 412
    assert error_code(r) == "PRECONDITION_FAILED"
    assert api.get(url, user=user, org=user.org_id).get_json()["is_done"] is True


# --- list ------------------------------------------------------------------------------------


@pytest.fixture
def tasks_setup(api: ApiClient) -> dict[str, Any]:
    user = api.register()
    deal_a = api.deal(user)
    deal_b = api.deal(user)
    # Created out of due-date order on purpose.
    t5 = api.task(user, deal_a["id"], title="in 5", due_date=_day(5))
    t0 = api.task(user, deal_b["id"], title="today", due_date=_day(0))
    t9 = api.task(user, deal_a["id"], title="in 9", due_date=_day(9))
    t2 = api.task(user, deal_b["id"], title="in 2", due_date=_day(2))
    r = api.patch(f"/tasks/{t2['id']}", user=user, org=user.org_id, json={"is_done": True})
    assert r.status_code == 200
    return {
        "user": user,
        "deal_a": deal_a,
        "deal_b": deal_b,
        "t0": t0,
        "t2": t2,
        "t5": t5,
        "t9": t9,
    }


def _list(api: ApiClient, user: User, query: Any = None):
    return api.get("/tasks", user=user, org=user.org_id, query=query)


def test_list_ordered_by_due_date(api: ApiClient, tasks_setup: dict) -> None:
    s = tasks_setup
    r = _list(api, s["user"])
    assert _ids(r) == [s["t0"]["id"], s["t2"]["id"], s["t5"]["id"], s["t9"]["id"]]
    body = r.get_json()
    assert set(body) == {"items", "total", "page", "page_size", "pages", "next_cursor"}
    assert body["total"] == 4
    dates = [item["due_date"] for item in body["items"]]
    assert dates == sorted(dates)


def test_list_deal_filter(api: ApiClient, tasks_setup: dict) -> None:
    s = tasks_setup
    r = _list(api, s["user"], {"deal_id": s["deal_a"]["id"]})
    assert _ids(r) == [s["t5"]["id"], s["t9"]["id"]]
    assert all(item["deal_id"] == s["deal_a"]["id"] for item in r.get_json()["items"])


def test_list_foreign_deal_filter_is_404(api: ApiClient, tasks_setup: dict) -> None:
    stranger = api.register()
    foreign = api.deal(stranger)
    r = _list(api, tasks_setup["user"], {"deal_id": foreign["id"]})
    assert r.status_code == 404
    assert error_code(r) == "DEAL_NOT_FOUND"


def test_list_only_open(api: ApiClient, tasks_setup: dict) -> None:
    s = tasks_setup
    r = _list(api, s["user"], {"only_open": "true"})
    assert _ids(r) == [s["t0"]["id"], s["t5"]["id"], s["t9"]["id"]]
    assert all(item["is_done"] is False for item in r.get_json()["items"])
    r = _list(api, s["user"], {"only_open": "false"})
    assert len(_ids(r)) == 4
    r = _list(api, s["user"], {"only_open": "true", "deal_id": s["deal_b"]["id"]})
    assert _ids(r) == [s["t0"]["id"]]


def test_list_due_window_inclusive(api: ApiClient, tasks_setup: dict) -> None:
    s = tasks_setup
    user = s["user"]
    assert _ids(_list(api, user, {"due_after": _day(2), "due_before": _day(5)})) == [
        s["t2"]["id"],
        s["t5"]["id"],
    ]
    assert _ids(_list(api, user, {"due_before": _day(2)})) == [s["t0"]["id"], s["t2"]["id"]]
    assert _ids(_list(api, user, {"due_after": _day(9)})) == [s["t9"]["id"]]
    assert _ids(_list(api, user, {"due_after": _day(5), "due_before": _day(5)})) == [s["t5"]["id"]]
    assert _ids(_list(api, user, {"due_after": _day(10)})) == []


def test_list_pagination(api: ApiClient, tasks_setup: dict) -> None:
    s = tasks_setup
    r = _list(api, s["user"], {"page": 2, "page_size": 3})
    assert _ids(r) == [s["t9"]["id"]]
    assert r.get_json()["pages"] == 2


@pytest.mark.parametrize(
    "query",
    [
        {"due_after": "2030-01-10", "due_before": "2030-01-09"},
        {"due_before": "not-a-date"},
        {"due_after": "2030-13-01"},
        {"only_open": "perhaps"},
        {"deal_id": "abc"},
        {"deal_id": "0"},
        {"page_size": 0},
        {"page_size": 101},
        {"page": "x"},
    ],
)
def test_list_invalid_query(api: ApiClient, query: dict) -> None:
    user = api.register()
    r = _list(api, user, query)
    assert r.status_code == 400
    assert error_code(r) == "VALIDATION_ERROR"


def test_list_isolated_per_org(api: ApiClient, tasks_setup: dict) -> None:
    stranger = api.register()
    api.task(stranger, api.deal(stranger)["id"])
    assert _list(api, stranger).get_json()["total"] == 1
    assert _list(api, tasks_setup["user"]).get_json()["total"] == 4


def test_member_sees_all_tasks(api: ApiClient) -> None:
    team = api.team()
    api.task(team["owner"], api.deal(team["owner"])["id"])
    api.task(team["member2"], api.deal(team["member2"])["id"])
    r = _list(api, team["member"])
    assert r.get_json()["total"] == 2
