"""The canonical role matrix (SPEC-RESEARCH.md §4.6), cell by cell, over HTTP.

"Others'" records belong to `member2`, a plain member of the same organization. Every cell
asserts the exact status (and, for refusals, the error code), and that a refused write left
the record unchanged while an allowed one took effect."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest

from .api import ApiClient, User, error_code

ROLES = ("owner", "admin", "manager", "member")


def _tomorrow() -> str:
    return (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)).isoformat()


@pytest.fixture(scope="module")
def team(app) -> dict[str, User]:
    # One organization for the whole module; every test builds its own records in it.
    return ApiClient(app.test_client()).team()


def _json(api: ApiClient, user: User, path: str) -> dict[str, Any]:
    r = api.get(path, user=user, org=user.org_id)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


# Each action: (api, team, actor) -> (response, verify) where verify(allowed) checks the effect.
Action = Callable[[ApiClient, dict[str, User], User], tuple[Any, Callable[[bool], None]]]


def update_others_contact(api: ApiClient, team: dict[str, User], actor: User):
    other = team["member2"]
    contact = api.contact(other, name="Original")
    r = api.patch(f"/contacts/{contact['id']}", user=actor, org=actor.org_id, json={"name": "New"})

    def verify(allowed: bool) -> None:
        name = _json(api, other, f"/contacts/{contact['id']}")["name"]
        assert name == ("New" if allowed else "Original")

    return r, verify


def delete_others_contact(api: ApiClient, team: dict[str, User], actor: User):
    other = team["member2"]
    contact = api.contact(other)
    r = api.delete(f"/contacts/{contact['id']}", user=actor, org=actor.org_id)

    def verify(allowed: bool) -> None:
        status = api.get(f"/contacts/{contact['id']}", user=other, org=other.org_id).status_code
        assert status == (404 if allowed else 200)

    return r, verify


def update_others_deal(api: ApiClient, team: dict[str, User], actor: User):
    other = team["member2"]
    deal = api.deal(other, amount="100.00")
    r = api.patch(
        f"/deals/{deal['id']}", user=actor, org=actor.org_id, json={"title": "New", "status": "won"}
    )

    def verify(allowed: bool) -> None:
        current = _json(api, other, f"/deals/{deal['id']}")
        assert (current["title"], current["status"]) == (
            ("New", "won") if allowed else (deal["title"], "new")
        )

    return r, verify


def roll_back_stage(api: ApiClient, team: dict[str, User], actor: User):
    # The actor's own deal, so that only the rollback rule decides.
    deal = api.deal(actor)
    url = f"/deals/{deal['id']}"
    moved = api.patch(url, user=actor, org=actor.org_id, json={"stage": "negotiation"})
    assert moved.status_code == 200
    r = api.patch(url, user=actor, org=actor.org_id, json={"stage": "proposal"})

    def verify(allowed: bool) -> None:
        assert _json(api, actor, url)["stage"] == ("proposal" if allowed else "negotiation")

    return r, verify


def roll_back_others_stage(api: ApiClient, team: dict[str, User], actor: User):
    other = team["member2"]
    deal = api.deal(other)
    url = f"/deals/{deal['id']}"
    moved = api.patch(url, user=other, org=other.org_id, json={"stage": "closed"})
    assert moved.status_code == 200
    r = api.patch(url, user=actor, org=actor.org_id, json={"stage": "qualification"})

    def verify(allowed: bool) -> None:
        assert _json(api, other, url)["stage"] == ("qualification" if allowed else "closed")

    return r, verify


def move_others_stage_forward(api: ApiClient, team: dict[str, User], actor: User):
    other = team["member2"]
    deal = api.deal(other)
    url = f"/deals/{deal['id']}"
    r = api.patch(url, user=actor, org=actor.org_id, json={"stage": "proposal"})

    def verify(allowed: bool) -> None:
        assert _json(api, other, url)["stage"] == ("proposal" if allowed else "qualification")

    return r, verify


def delete_others_deal(api: ApiClient, team: dict[str, User], actor: User):
    other = team["member2"]
    deal = api.deal(other)
    r = api.delete(f"/deals/{deal['id']}", user=actor, org=actor.org_id)

    def verify(allowed: bool) -> None:
        status = api.get(f"/deals/{deal['id']}", user=other, org=other.org_id).status_code
        assert status == (404 if allowed else 200)

    return r, verify


def create_task_on_others_deal(api: ApiClient, team: dict[str, User], actor: User):
    other = team["member2"]
    deal = api.deal(other)
    r = api.post(
        "/tasks",
        user=actor,
        org=actor.org_id,
        json={"deal_id": deal["id"], "title": "T", "due_date": _tomorrow()},
    )

    def verify(allowed: bool) -> None:
        tasks = _json(api, other, f"/tasks?deal_id={deal['id']}")
        assert tasks["total"] == (1 if allowed else 0)

    return r, verify


def update_others_task(api: ApiClient, team: dict[str, User], actor: User):
    other = team["member2"]
    task = api.task(other, api.deal(other)["id"])
    r = api.patch(f"/tasks/{task['id']}", user=actor, org=actor.org_id, json={"is_done": True})

    def verify(allowed: bool) -> None:
        assert _json(api, other, f"/tasks/{task['id']}")["is_done"] is allowed

    return r, verify


def delete_others_task(api: ApiClient, team: dict[str, User], actor: User):
    other = team["member2"]
    task = api.task(other, api.deal(other)["id"])
    r = api.delete(f"/tasks/{task['id']}", user=actor, org=actor.org_id)

    def verify(allowed: bool) -> None:
        status = api.get(f"/tasks/{task['id']}", user=other, org=other.org_id).status_code
        assert status == (404 if allowed else 200)

    return r, verify


def filter_deals_by_owner(api: ApiClient, team: dict[str, User], actor: User):
    other = team["member2"]
    deal = api.deal(other)
    r = api.get("/deals", user=actor, org=actor.org_id, query={"owner_id": other.id})

    def verify(allowed: bool) -> None:
        if allowed:
            items = r.get_json()["items"]
            assert deal["id"] in [i["id"] for i in items]
            assert all(i["owner_id"] == other.id for i in items)

    return r, verify


def filter_contacts_by_owner(api: ApiClient, team: dict[str, User], actor: User):
    other = team["member2"]
    contact = api.contact(other)
    r = api.get("/contacts", user=actor, org=actor.org_id, query={"owner_id": other.id})

    def verify(allowed: bool) -> None:
        if allowed:
            items = r.get_json()["items"]
            assert contact["id"] in [i["id"] for i in items]
            assert all(i["owner_id"] == other.id for i in items)

    return r, verify


def comment_on_others_deal(api: ApiClient, team: dict[str, User], actor: User):
    other = team["member2"]
    deal = api.deal(other)
    r = api.post(
        f"/deals/{deal['id']}/activities",
        user=actor,
        org=actor.org_id,
        json={"type": "comment", "payload": {"text": "hi"}},
    )

    def verify(allowed: bool) -> None:
        items = _json(api, other, f"/deals/{deal['id']}/activities")["items"]
        assert [(i["type"], i["author_id"]) for i in items] == (
            [("comment", actor.id)] if allowed else []
        )

    return r, verify


def read_others_deal(api: ApiClient, team: dict[str, User], actor: User):
    other = team["member2"]
    deal = api.deal(other)
    r = api.get(f"/deals/{deal['id']}", user=actor, org=actor.org_id)

    def verify(allowed: bool) -> None:
        if allowed:
            assert r.get_json() == deal

    return r, verify


def read_others_contact_and_tasks(api: ApiClient, team: dict[str, User], actor: User):
    other = team["member2"]
    deal = api.deal(other)
    task = api.task(other, deal["id"])
    r = api.get(f"/tasks/{task['id']}", user=actor, org=actor.org_id)

    def verify(allowed: bool) -> None:
        if allowed:
            assert r.get_json() == task
            contact = api.get(f"/contacts/{deal['contact_id']}", user=actor, org=actor.org_id)
            assert contact.status_code == 200

    return r, verify


OK, CREATED, NO_CONTENT = 200, 201, 204
NOT_OWNER = (403, "NOT_OWNER")
NO_ROLLBACK = (403, "STAGE_ROLLBACK_FORBIDDEN")
NO_FILTER = (403, "OWNER_FILTER_FORBIDDEN")

# action -> expected result for (owner, admin, manager, member)
MATRIX: dict[str, tuple[Action, tuple[Any, Any, Any, Any]]] = {
    "update_others_contact": (update_others_contact, (OK, OK, OK, NOT_OWNER)),
    "delete_others_contact": (delete_others_contact, (NO_CONTENT,) * 3 + (NOT_OWNER,)),
    "update_others_deal": (update_others_deal, (OK, OK, OK, NOT_OWNER)),
    "delete_others_deal": (delete_others_deal, (NO_CONTENT,) * 3 + (NOT_OWNER,)),
    "move_others_stage_forward": (move_others_stage_forward, (OK, OK, OK, NOT_OWNER)),
    "roll_back_stage": (roll_back_stage, (OK, OK, NO_ROLLBACK, NO_ROLLBACK)),
    "roll_back_others_stage": (roll_back_others_stage, (OK, OK, NO_ROLLBACK, NOT_OWNER)),
    "create_task_on_others_deal": (create_task_on_others_deal, (CREATED,) * 3 + (NOT_OWNER,)),
    "update_others_task": (update_others_task, (OK, OK, OK, NOT_OWNER)),
    "delete_others_task": (delete_others_task, (NO_CONTENT,) * 3 + (NOT_OWNER,)),
    "filter_deals_by_owner_id": (filter_deals_by_owner, (OK, OK, OK, NO_FILTER)),
    "filter_contacts_by_owner_id": (filter_contacts_by_owner, (OK, OK, OK, NO_FILTER)),
    "comment_on_others_deal": (comment_on_others_deal, (CREATED,) * 4),
    "read_others_deal": (read_others_deal, (OK,) * 4),
    "read_others_task_and_contact": (read_others_contact_and_tasks, (OK,) * 4),
}

CELLS = [
    pytest.param(action, role, expected[i], id=f"{action}-{role}")
    for action, (_, expected) in MATRIX.items()
    for i, role in enumerate(ROLES)
]


@pytest.mark.parametrize(("action", "role", "expected"), CELLS)
def test_role_matrix(
    api: ApiClient, team: dict[str, User], action: str, role: str, expected: Any
) -> None:
    run = MATRIX[action][0]
    response, verify = run(api, team, team[role])
    if isinstance(expected, tuple):
        status, code = expected
        assert response.status_code == status, response.get_json()
        assert error_code(response) == code
        verify(False)
    else:
        assert response.status_code == expected, response.get_json()
        verify(True)


def test_matrix_covers_every_role() -> None:
    assert {len(expected) for _, expected in MATRIX.values()} == {len(ROLES)}
