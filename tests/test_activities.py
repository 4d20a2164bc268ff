"""The deal timeline over HTTP: comments, validation, ordering, pagination and isolation."""

from __future__ import annotations

from typing import Any

import pytest

from .api import ApiClient, User, error_code

ACTIVITY_KEYS = {"id", "deal_id", "author_id", "type", "payload", "created_at"}


def _comment(api: ApiClient, user: User, deal_id: int, text: Any = "Hello", **body: Any):
    payload = {"type": "comment", "payload": {"text": text}, **body}
    return api.post(f"/deals/{deal_id}/activities", user=user, org=user.org_id, json=payload)


def _timeline(api: ApiClient, user: User, deal_id: int, **query: Any):
    return api.get(f"/deals/{deal_id}/activities", user=user, org=user.org_id, query=query)


def test_comment_201(api: ApiClient) -> None:
    user = api.register()
    deal = api.deal(user)
    r = _comment(api, user, deal["id"], text="Client requested an updated proposal")
    assert r.status_code == 201
    body = r.get_json()
    assert set(body) == ACTIVITY_KEYS
    assert body["type"] == "comment"
    assert body["author_id"] == user.id
    assert body["deal_id"] == deal["id"]
    assert body["payload"] == {"text": "Client requested an updated proposal"}
    assert body["created_at"]

    r = _timeline(api, user, deal["id"])
    assert r.status_code == 200
    assert r.get_json()["items"] == [body]


def test_comment_payload_stored_as_text_only(api: ApiClient) -> None:
    user = api.register()
    deal = api.deal(user)
    r = api.post(
        f"/deals/{deal['id']}/activities",
        user=user,
        org=user.org_id,
        json={"type": "comment", "payload": {"text": "Hi", "author_id": 999, "extra": [1]}},
    )
    assert r.status_code == 201
    assert r.get_json()["payload"] == {"text": "Hi"}
    assert r.get_json()["author_id"] == user.id


@pytest.mark.parametrize("role", ["owner", "admin", "manager", "member", "member2"])
def test_any_member_may_comment_on_any_deal(api: ApiClient, role: str) -> None:
    team = api.team()
    deal = api.deal(team["owner"] if role == "member" else team["member"])
    actor = team[role]
    r = _comment(api, actor, deal["id"], text=f"from {role}")
    assert r.status_code == 201
    assert r.get_json()["author_id"] == actor.id
    # A comment does not modify the deal.
    r = api.get(f"/deals/{deal['id']}", user=actor, org=actor.org_id)
    assert r.get_json() == deal


@pytest.mark.parametrize(
    "activity_type",
    [
        "status_changed",
        "stage_changed",
        "task_created",
        "task_reminder",
        "system",
        "note",
        "COMMENT",
    ],
)
def test_non_comment_type_rejected(api: ApiClient, activity_type: str) -> None:
    user = api.register()
    deal = api.deal(user)
    r = api.post(
        f"/deals/{deal['id']}/activities",
        user=user,
        org=user.org_id,
        json={"type": activity_type, "payload": {"text": "x"}},
    )
    assert r.status_code == 400
    assert error_code(r) == "ACTIVITY_TYPE_NOT_ALLOWED"
    assert _timeline(api, user, deal["id"]).get_json()["total"] == 0


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"text": ""},
        {"text": "   "},
        {"text": "\n\t"},
        {"text": None},
        {"text": 42},
        {"note": "x"},
    ],
)
def test_comment_text_required(api: ApiClient, payload: dict) -> None:
    user = api.register()
    deal = api.deal(user)
    r = api.post(
        f"/deals/{deal['id']}/activities",
        user=user,
        org=user.org_id,
        json={"type": "comment", "payload": payload},
    )
    assert r.status_code == 400
    assert error_code(r) == "VALIDATION_ERROR"
    assert _timeline(api, user, deal["id"]).get_json()["total"] == 0


@pytest.mark.parametrize("payload", ["text", ["text"], 1, None, True])
def test_payload_must_be_object(api: ApiClient, payload: Any) -> None:
    user = api.register()
    deal = api.deal(user)
    r = api.post(
        f"/deals/{deal['id']}/activities",
        user=user,
        org=user.org_id,
        json={"type": "comment", "payload": payload},
    )
    assert r.status_code == 400
    assert error_code(r) == "VALIDATION_ERROR"


@pytest.mark.parametrize(
    "body",
    [
        {"payload": {"text": "x"}},
        {"type": "comment"},
        {"type": "", "payload": {"text": "x"}},
        {"type": 1, "payload": {"text": "x"}},
        {"type": "comment", "payload": {"text": "x"}, "author_id": 1},
        [],
    ],
)
def test_body_validation(api: ApiClient, body: Any) -> None:
    user = api.register()
    deal = api.deal(user)
    r = api.post(f"/deals/{deal['id']}/activities", user=user, org=user.org_id, json=body)
    assert r.status_code == 400
    assert error_code(r) == "VALIDATION_ERROR"


def test_too_long_comment_rejected(api: ApiClient) -> None:
    user = api.register()
    deal = api.deal(user)
    r = _comment(api, user, deal["id"], text="x" * 10_001)
    assert r.status_code == 400
    assert error_code(r) == "VALIDATION_ERROR"
    assert _comment(api, user, deal["id"], text="x" * 10_000).status_code == 201


def test_list_newest_first_and_paginated(api: ApiClient) -> None:
    user = api.register()
    deal = api.deal(user, amount="10.00")
    created = []
    for i in range(5):
        r = _comment(api, user, deal["id"], text=f"c{i}")
        assert r.status_code == 201
        created.append(r.get_json())
    r = api.patch(f"/deals/{deal['id']}", user=user, org=user.org_id, json={"status": "won"})
    assert r.status_code == 200

    r = _timeline(api, user, deal["id"])
    body = r.get_json()
    assert set(body) == {"items", "total", "page", "page_size", "pages", "next_cursor"}
    assert body["total"] == 6
    items = body["items"]
    assert items[0]["type"] == "status_changed"
    assert [i["payload"]["text"] for i in items[1:]] == ["c4", "c3", "c2", "c1", "c0"]
    stamps = [i["created_at"] for i in items]
    assert stamps == sorted(stamps, reverse=True)

    page1 = _timeline(api, user, deal["id"], page=1, page_size=4).get_json()
    page2 = _timeline(api, user, deal["id"], page=2, page_size=4).get_json()
    assert page1["pages"] == 2
    assert page1["total"] == 6
    assert len(page1["items"]) == 4
    assert len(page2["items"]) == 2
    assert [i["id"] for i in page1["items"] + page2["items"]] == [i["id"] for i in items]


@pytest.mark.parametrize(
    "query", [{"page": 0}, {"page_size": 0}, {"page_size": 101}, {"page": "x"}]
)
def test_list_pagination_bounds(api: ApiClient, query: dict) -> None:
    user = api.register()
    deal = api.deal(user)
    r = _timeline(api, user, deal["id"], **query)
    assert r.status_code == 400
    assert error_code(r) == "VALIDATION_ERROR"


def test_timeline_only_for_its_deal(api: ApiClient) -> None:
    user = api.register()
    deal_a, deal_b = api.deal(user), api.deal(user)
    _comment(api, user, deal_a["id"], text="on a")
    r = _timeline(api, user, deal_b["id"])
    assert r.get_json()["total"] == 0
    assert r.get_json()["items"] == []


def test_member_reads_timeline_of_anothers_deal(api: ApiClient) -> None:
    team = api.team()
    deal = api.deal(team["member2"])
    _comment(api, team["member2"], deal["id"], text="private?")
    r = _timeline(api, team["member"], deal["id"])
    assert r.status_code == 200
    assert [i["payload"]["text"] for i in r.get_json()["items"]] == ["private?"]


def test_deal_of_another_org_is_404(api: ApiClient) -> None:
    alice, bob = api.register(), api.register()
    deal = api.deal(alice)
    r = _comment(api, bob, deal["id"])
    assert r.status_code == 404
    assert error_code(r) == "DEAL_NOT_FOUND"
    r = _timeline(api, bob, deal["id"])
    assert r.status_code == 404
    assert error_code(r) == "DEAL_NOT_FOUND"
    # 404 takes precedence over a bad type.
    r = api.post(
        f"/deals/{deal['id']}/activities",
        user=bob,
        org=bob.org_id,
        json={"type": "system", "payload": {"text": "x"}},
    )
    assert r.status_code == 404
    assert error_code(r) == "DEAL_NOT_FOUND"
    assert _timeline(api, alice, deal["id"]).get_json()["total"] == 0


def test_unknown_deal_is_404(api: ApiClient) -> None:
    user = api.register()
    r = _comment(api, user, 2**31 - 1)
    assert r.status_code == 404
    assert error_code(r) == "DEAL_NOT_FOUND"
