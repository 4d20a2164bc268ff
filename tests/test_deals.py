"""Deals over HTTP: creation, validation, won/stage rules, timeline entries, ownership, filters."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest

from .api import ApiClient, User, error_code

DEAL_KEYS = {
    "id",
    "organization_id",
    "contact_id",
    "owner_id",
    "title",
    "amount",
    "currency",
    "status",
    "stage",
    "created_at",
    "updated_at",
    "custom_fields",
}


def _timeline(api: ApiClient, user: User, deal_id: int) -> list[dict[str, Any]]:
    r = api.get(
        f"/deals/{deal_id}/activities", user=user, org=user.org_id, query={"page_size": 100}
    )
    assert r.status_code == 200, r.get_json()
    return r.get_json()["items"]


def _patch(api: ApiClient, user: User, deal_id: int, **changes: Any):
    return api.patch(f"/deals/{deal_id}", user=user, org=user.org_id, json=changes)


def _get(api: ApiClient, user: User, deal_id: int) -> dict[str, Any]:
    r = api.get(f"/deals/{deal_id}", user=user, org=user.org_id)
    assert r.status_code == 200
    return r.get_json()


def _ids(r) -> list[int]:
    assert r.status_code == 200, r.get_json()
    return [item["id"] for item in r.get_json()["items"]]


# --- create ----------------------------------------------------------------------------------


def test_create_defaults_and_shape(api: ApiClient) -> None:
    user = api.register()
    contact = api.contact(user)
    r = api.post(
        "/deals",
        user=user,
        org=user.org_id,
        json={
            "contact_id": contact["id"],
            "title": "Big one",
            "amount": "10000",
            "currency": "eur",
        },
    )
    assert r.status_code == 201
    deal = r.get_json()
    assert set(deal) == DEAL_KEYS
    assert deal["status"] == "new"
    assert deal["stage"] == "qualification"
    assert deal["amount"] == "10000.00"
    assert deal["currency"] == "EUR"
    assert deal["owner_id"] == user.id
    assert deal["organization_id"] == user.org_id
    assert deal["contact_id"] == contact["id"]
    assert deal["title"] == "Big one"
    assert _get(api, user, deal["id"]) == deal
    # A new deal has an empty timeline.
    assert _timeline(api, user, deal["id"]) == []


def test_create_default_currency_and_amount(api: ApiClient) -> None:
    user = api.register()
    contact = api.contact(user)
    r = api.post(
        "/deals", user=user, org=user.org_id, json={"contact_id": contact["id"], "title": "T"}
    )
    assert r.status_code == 201
    deal = r.get_json()
    assert deal["currency"] == "USD"
    assert deal["amount"] == "0.00"
    assert Decimal(deal["amount"]) == 0


def test_create_numeric_amount_and_max(api: ApiClient) -> None:
    user = api.register()
    contact = api.contact(user)
    for amount, expected in (
        (1500, "1500.00"),
        ("9999999999.99", "9999999999.99"),
        ("0.5", "0.50"),
    ):
        r = api.post(
            "/deals",
            user=user,
            org=user.org_id,
            json={"contact_id": contact["id"], "title": "T", "amount": amount},
        )
        assert r.status_code == 201, amount
        assert r.get_json()["amount"] == expected


def test_create_ignores_status_and_stage_fields(api: ApiClient) -> None:
    """status/stage are not part of the create body: unknown fields are rejected."""
    user = api.register()
    contact = api.contact(user)
    for extra in ({"status": "won"}, {"stage": "closed"}):
        r = api.post(
            "/deals",
            user=user,
            org=user.org_id,
            json={"contact_id": contact["id"], "title": "T", "amount": "5.00", **extra},
        )
        assert r.status_code == 400
        assert error_code(r) == "VALIDATION_ERROR"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("currency", "EURO"),
        ("currency", "E1R"),
        ("currency", ""),
        ("currency", "US"),
        ("currency", 840),
        ("amount", "-1"),
        ("amount", "-0.01"),
        ("amount", "1234567890123"),
        ("amount", "10000000000.00"),
        ("amount", "abc"),
        ("amount", "NaN"),
        ("amount", "Infinity"),
        ("amount", ""),
        ("title", ""),
        ("title", "   "),
        ("contact_id", "1"),
        ("contact_id", 0),
    ],
)
def test_create_validation(api: ApiClient, field: str, value: Any) -> None:
    user = api.register()
    contact = api.contact(user)
    body = {"contact_id": contact["id"], "title": "T", "amount": "10.00", field: value}
    r = api.post("/deals", user=user, org=user.org_id, json=body)
    assert r.status_code == 400
    assert error_code(r) == "VALIDATION_ERROR"
    assert field in r.get_json()["error"]["details"]["errors"]["json"]
    r = api.get("/deals", user=user, org=user.org_id)
    assert r.get_json()["total"] == 0


@pytest.mark.parametrize("missing", ["contact_id", "title"])
def test_create_required_fields(api: ApiClient, missing: str) -> None:
    user = api.register()
    contact = api.contact(user)
    body = {"contact_id": contact["id"], "title": "T"}
    del body[missing]
    r = api.post("/deals", user=user, org=user.org_id, json=body)
    assert r.status_code == 400
    assert error_code(r) == "VALIDATION_ERROR"


def test_create_with_contact_of_another_org_is_404(api: ApiClient) -> None:
    alice, bob = api.register(), api.register()
    foreign = api.contact(bob)
    r = api.post(
        "/deals", user=alice, org=alice.org_id, json={"contact_id": foreign["id"], "title": "T"}
    )
    assert r.status_code == 404
    assert error_code(r) == "CONTACT_NOT_FOUND"
    r = api.post(
        "/deals", user=alice, org=alice.org_id, json={"contact_id": 2**31 - 1, "title": "T"}
    )
    assert r.status_code == 404
    assert error_code(r) == "CONTACT_NOT_FOUND"
    assert api.get("/deals", user=alice, org=alice.org_id).get_json()["total"] == 0


def test_deal_of_another_org_is_404(api: ApiClient) -> None:
    alice, bob = api.register(), api.register()
    deal = api.deal(alice)
    url = f"/deals/{deal['id']}"
    assert error_code(api.get(url, user=bob, org=bob.org_id)) == "DEAL_NOT_FOUND"
    r = api.patch(url, user=bob, org=bob.org_id, json={"title": "X"})
    assert r.status_code == 404
    assert error_code(r) == "DEAL_NOT_FOUND"
    r = api.delete(url, user=bob, org=bob.org_id)
    assert r.status_code == 404
    assert error_code(r) == "DEAL_NOT_FOUND"
    assert _get(api, alice, deal["id"]) == deal


# --- won / amount ----------------------------------------------------------------------------


def test_won_with_zero_amount_rejected_and_deal_unchanged(api: ApiClient) -> None:
    user = api.register()
    deal = api.deal(user, amount="0")
    r = _patch(api, user, deal["id"], status="won")
    assert r.status_code == 400
    assert error_code(r) == "WON_REQUIRES_POSITIVE_AMOUNT"
    assert "amount" in r.get_json()["error"]["message"]
    assert _get(api, user, deal["id"]) == deal
    assert _timeline(api, user, deal["id"]) == []


def test_won_with_zero_amount_in_same_patch_rejected(api: ApiClient) -> None:
    user = api.register()
    deal = api.deal(user, amount="500.00")
    r = _patch(api, user, deal["id"], status="won", amount="0", title="Changed")
    assert r.status_code == 400
    assert error_code(r) == "WON_REQUIRES_POSITIVE_AMOUNT"
    assert _get(api, user, deal["id"]) == deal


def test_won_with_positive_amount_in_same_patch(api: ApiClient) -> None:
    user = api.register()
    deal = api.deal(user, amount="0")
    r = _patch(api, user, deal["id"], status="won", amount="15000")
    assert r.status_code == 200
    body = r.get_json()
    assert body["status"] == "won"
    assert Decimal(body["amount"]) == Decimal("15000")
    entries = _timeline(api, user, deal["id"])
    assert [e["type"] for e in entries] == ["status_changed"]
    assert entries[0]["payload"] == {"old_status": "new", "new_status": "won"}


def test_won_with_stored_positive_amount(api: ApiClient) -> None:
    user = api.register()
    deal = api.deal(user, amount="0.01")
    r = _patch(api, user, deal["id"], status="won")
    assert r.status_code == 200
    assert r.get_json()["status"] == "won"


def test_lowering_amount_of_won_deal_to_zero_rejected(api: ApiClient) -> None:
    user = api.register()
    deal = api.deal(user, amount="100.00")
    assert _patch(api, user, deal["id"], status="won").status_code == 200
    r = _patch(api, user, deal["id"], amount="0")
    assert r.status_code == 400
    assert error_code(r) == "WON_REQUIRES_POSITIVE_AMOUNT"
    current = _get(api, user, deal["id"])
    assert current["amount"] == "100.00"
    assert current["status"] == "won"
    # Lowering to another positive value is fine.
    r = _patch(api, user, deal["id"], amount="1.00")
    assert r.status_code == 200
    assert r.get_json()["amount"] == "1.00"


def test_lost_with_zero_amount_allowed(api: ApiClient) -> None:
    user = api.register()
    deal = api.deal(user, amount="0")
    r = _patch(api, user, deal["id"], status="lost")
    assert r.status_code == 200
    assert r.get_json()["status"] == "lost"
    assert r.get_json()["amount"] == "0.00"


@pytest.mark.parametrize(
    "body",
    [
        {"status": "closed"},
        {"status": "WON"},
        {"status": ""},
        {"stage": "done"},
        {"stage": 1},
        {"amount": "-5"},
        {"amount": "1234567890123"},
        {"amount": "lots"},
        {"currency": "euro"},
        {"title": ""},
        {"owner_id": "2"},
        {"organization_id": 1},
        {"nope": True},
    ],
)
def test_patch_validation(api: ApiClient, body: dict) -> None:
    user = api.register()
    deal = api.deal(user)
    r = _patch(api, user, deal["id"], **body)
    assert r.status_code == 400
    assert error_code(r) == "VALIDATION_ERROR"
    assert _get(api, user, deal["id"]) == deal


def test_patch_currency_uppercased(api: ApiClient) -> None:
    user = api.register()
    deal = api.deal(user)
    r = _patch(api, user, deal["id"], currency="gbp", title="Renamed")
    assert r.status_code == 200
    assert r.get_json()["currency"] == "GBP"
    assert r.get_json()["title"] == "Renamed"
    assert _timeline(api, user, deal["id"]) == []


# --- stages ----------------------------------------------------------------------------------


def test_member_moves_own_deal_forward_including_skips(api: ApiClient) -> None:
    team = api.team()
    member = team["member"]
    deal = api.deal(member)
    r = _patch(api, member, deal["id"], stage="proposal")
    assert r.status_code == 200
    assert r.get_json()["stage"] == "proposal"
    r = _patch(api, member, deal["id"], stage="closed")  # skips negotiation
    assert r.status_code == 200
    assert r.get_json()["stage"] == "closed"
    entries = _timeline(api, member, deal["id"])
    assert [e["payload"] for e in entries] == [
        {"old_stage": "proposal", "new_stage": "closed"},
        {"old_stage": "qualification", "new_stage": "proposal"},
    ]
    assert all(e["type"] == "stage_changed" and e["author_id"] == member.id for e in entries)


def test_member_cannot_roll_back_own_deal(api: ApiClient) -> None:
    team = api.team()
    member = team["member"]
    deal = api.deal(member)
    assert _patch(api, member, deal["id"], stage="negotiation").status_code == 200
    r = _patch(api, member, deal["id"], stage="proposal")
    assert r.status_code == 403
    assert error_code(r) == "STAGE_ROLLBACK_FORBIDDEN"
    assert _get(api, member, deal["id"])["stage"] == "negotiation"


def test_manager_cannot_roll_back(api: ApiClient) -> None:
    team = api.team()
    manager = team["manager"]
    deal = api.deal(team["member"])
    assert _patch(api, manager, deal["id"], stage="closed").status_code == 200
    before = _timeline(api, manager, deal["id"])
    r = _patch(api, manager, deal["id"], stage="qualification")
    assert r.status_code == 403
    assert error_code(r) == "STAGE_ROLLBACK_FORBIDDEN"
    details = r.get_json()["error"]["details"]
    assert details == {"current_stage": "closed", "requested_stage": "qualification"}
    assert _get(api, manager, deal["id"])["stage"] == "closed"
    assert _timeline(api, manager, deal["id"]) == before


def test_manager_rollback_rejected_even_with_other_valid_changes(api: ApiClient) -> None:
    team = api.team()
    manager = team["manager"]
    deal = api.deal(manager)
    assert _patch(api, manager, deal["id"], stage="proposal").status_code == 200
    r = _patch(api, manager, deal["id"], stage="qualification", title="New title", status="lost")
    assert r.status_code == 403
    assert error_code(r) == "STAGE_ROLLBACK_FORBIDDEN"
    current = _get(api, manager, deal["id"])
    assert current["title"] == deal["title"]
    assert current["status"] == "new"


@pytest.mark.parametrize("role", ["admin", "owner"])
def test_admin_and_owner_roll_back(api: ApiClient, role: str) -> None:
    team = api.team()
    actor = team[role]
    deal = api.deal(team["member"])
    assert _patch(api, team["member"], deal["id"], stage="negotiation").status_code == 200
    r = _patch(api, actor, deal["id"], stage="qualification")
    assert r.status_code == 200
    assert r.get_json()["stage"] == "qualification"
    newest = _timeline(api, actor, deal["id"])[0]
    assert newest["type"] == "stage_changed"
    assert newest["payload"] == {"old_stage": "negotiation", "new_stage": "qualification"}
    assert newest["author_id"] == actor.id


@pytest.mark.parametrize("role", ["member", "manager"])
def test_same_stage_is_a_no_op(api: ApiClient, role: str) -> None:
    team = api.team()
    actor = team[role]
    deal = api.deal(team["member"])
    assert _patch(api, team["member"], deal["id"], stage="negotiation").status_code == 200
    r = _patch(api, actor, deal["id"], stage="negotiation")
    assert r.status_code == 200
    assert r.get_json()["stage"] == "negotiation"
    entries = _timeline(api, actor, deal["id"])
    assert len(entries) == 1


# --- timeline --------------------------------------------------------------------------------


def test_status_and_stage_in_one_patch_write_two_entries(api: ApiClient) -> None:
    team = api.team()
    manager = team["manager"]
    deal = api.deal(team["member"], amount="250.00")
    r = _patch(api, manager, deal["id"], status="in_progress", stage="proposal")
    assert r.status_code == 200
    entries = _timeline(api, manager, deal["id"])
    assert len(entries) == 2
    by_type = {e["type"]: e for e in entries}
    assert set(by_type) == {"status_changed", "stage_changed"}
    assert by_type["status_changed"]["payload"] == {
        "old_status": "new",
        "new_status": "in_progress",
    }
    assert by_type["stage_changed"]["payload"] == {
        "old_stage": "qualification",
        "new_stage": "proposal",
    }
    for entry in entries:
        assert entry["author_id"] == manager.id
        assert entry["deal_id"] == deal["id"]
        assert set(entry) == {"id", "deal_id", "author_id", "type", "payload", "created_at"}


def test_status_sequence_entries(api: ApiClient) -> None:
    user = api.register()
    deal = api.deal(user, amount="10.00")
    for status in ("in_progress", "won", "lost"):
        assert _patch(api, user, deal["id"], status=status).status_code == 200
    payloads = [e["payload"] for e in _timeline(api, user, deal["id"])]
    assert payloads == [
        {"old_status": "won", "new_status": "lost"},
        {"old_status": "in_progress", "new_status": "won"},
        {"old_status": "new", "new_status": "in_progress"},
    ]


def test_patch_without_change_writes_nothing(api: ApiClient) -> None:
    user = api.register()
    deal = api.deal(user)
    r = _patch(api, user, deal["id"], status="new", stage="qualification", amount=deal["amount"])
    assert r.status_code == 200
    assert r.get_json()["updated_at"] == deal["updated_at"]
    r = _patch(api, user, deal["id"])
    assert r.status_code == 200
    assert _timeline(api, user, deal["id"]) == []
    # A change to other fields is not a timeline event either.
    assert _patch(api, user, deal["id"], title="Other", amount="5.00").status_code == 200
    assert _timeline(api, user, deal["id"]) == []


def test_rejected_patch_writes_no_entry(api: ApiClient) -> None:
    user = api.register()
    deal = api.deal(user, amount="0")
    r = _patch(api, user, deal["id"], status="won", stage="proposal")
    assert r.status_code == 400
    assert error_code(r) == "WON_REQUIRES_POSITIVE_AMOUNT"
    assert _timeline(api, user, deal["id"]) == []
    assert _get(api, user, deal["id"])["stage"] == "qualification"


# --- ownership -------------------------------------------------------------------------------


def test_member_cannot_patch_or_delete_anothers_deal(api: ApiClient) -> None:
    team = api.team()
    member = team["member"]
    deal = api.deal(team["member2"])
    for body in ({"title": "X"}, {"stage": "proposal"}, {"status": "lost"}):
        r = _patch(api, member, deal["id"], **body)
        assert r.status_code == 403, body
        assert error_code(r) == "NOT_OWNER"
    r = api.delete(f"/deals/{deal['id']}", user=member, org=member.org_id)
    assert r.status_code == 403
    assert error_code(r) == "NOT_OWNER"
    assert _get(api, member, deal["id"]) == deal
    assert _timeline(api, member, deal["id"]) == []


def test_member_may_patch_and_delete_own_deal(api: ApiClient) -> None:
    team = api.team()
    member = team["member"]
    deal = api.deal(member, amount="10.00")
    r = _patch(api, member, deal["id"], status="won", title="Mine")
    assert r.status_code == 200
    assert r.get_json()["status"] == "won"
    r = api.delete(f"/deals/{deal['id']}", user=member, org=member.org_id)
    assert r.status_code == 204
    r = api.get(f"/deals/{deal['id']}", user=member, org=member.org_id)
    assert r.status_code == 404
    assert error_code(r) == "DEAL_NOT_FOUND"


def test_member_cannot_change_owner(api: ApiClient) -> None:
    team = api.team()
    member = team["member"]
    deal = api.deal(member)
    r = _patch(api, member, deal["id"], owner_id=team["member2"].id)
    assert r.status_code == 403
    assert error_code(r) == "OWNER_ASSIGN_FORBIDDEN"
    assert _get(api, member, deal["id"])["owner_id"] == member.id
    # Setting oneself again is not a change.
    r = _patch(api, member, deal["id"], owner_id=member.id)
    assert r.status_code == 200


def test_member_cannot_create_deal_for_someone_else(api: ApiClient) -> None:
    team = api.team()
    member = team["member"]
    contact = api.contact(member)
    r = api.post(
        "/deals",
        user=member,
        org=member.org_id,
        json={"contact_id": contact["id"], "title": "T", "owner_id": team["member2"].id},
    )
    assert r.status_code == 403
    assert error_code(r) == "OWNER_ASSIGN_FORBIDDEN"


def test_manager_reassigns_owner(api: ApiClient) -> None:
    team = api.team()
    manager, member = team["manager"], team["member"]
    deal = api.deal(team["owner"])
    r = _patch(api, manager, deal["id"], owner_id=member.id)
    assert r.status_code == 200
    assert r.get_json()["owner_id"] == member.id
    # The member now owns it and may edit it.
    assert _patch(api, member, deal["id"], title="Now mine").status_code == 200
    outsider = api.register()
    r = _patch(api, manager, deal["id"], owner_id=outsider.id)
    assert r.status_code == 404
    assert error_code(r) == "OWNER_NOT_FOUND"
    assert _get(api, manager, deal["id"])["owner_id"] == member.id


def test_manager_creates_deal_for_member(api: ApiClient) -> None:
    team = api.team()
    manager, member = team["manager"], team["member"]
    contact = api.contact(manager)
    r = api.post(
        "/deals",
        user=manager,
        org=manager.org_id,
        json={"contact_id": contact["id"], "title": "T", "owner_id": member.id},
    )
    assert r.status_code == 201
    assert r.get_json()["owner_id"] == member.id
    outsider = api.register()
    r = api.post(
        "/deals",
        user=manager,
        org=manager.org_id,
        json={"contact_id": contact["id"], "title": "T", "owner_id": outsider.id},
    )
    assert r.status_code == 404
    assert error_code(r) == "OWNER_NOT_FOUND"


def test_delete_cascades_tasks_and_timeline(api: ApiClient) -> None:
    user = api.register()
    deal = api.deal(user)
    task = api.task(user, deal["id"])
    assert len(_timeline(api, user, deal["id"])) == 1  # task_created
    r = api.delete(f"/deals/{deal['id']}", user=user, org=user.org_id)
    assert r.status_code == 204
    r = api.get(f"/tasks/{task['id']}", user=user, org=user.org_id)
    assert r.status_code == 404
    assert error_code(r) == "TASK_NOT_FOUND"
    r = api.get(f"/deals/{deal['id']}/activities", user=user, org=user.org_id)
    assert r.status_code == 404
    assert error_code(r) == "DEAL_NOT_FOUND"
    assert api.get("/tasks", user=user, org=user.org_id).get_json()["total"] == 0
    # The contact has no deals any more and may be deleted.
    r = api.delete(f"/contacts/{deal['contact_id']}", user=user, org=user.org_id)
    assert r.status_code == 204


# --- list filters ----------------------------------------------------------------------------


@pytest.fixture
def listing(api: ApiClient) -> dict[str, Any]:
    """A team with five deals of known status, stage, amount and owner (created in id order)."""
    team = api.team()
    owner, member = team["owner"], team["member"]
    contact = api.contact(owner)
    specs = [
        # (creator, amount, status, stage)
        (owner, "100.00", "new", "qualification"),
        (member, "500.00", "in_progress", "proposal"),
        (owner, "1000.00", "won", "closed"),
        (member, "50.00", "lost", "closed"),
        (owner, "500.00", "in_progress", "negotiation"),
    ]
    deals = []
    for creator, amount, status, stage in specs:
        if creator is owner:
            deal = api.deal(owner, contact_id=contact["id"], amount=amount)
        else:
            deal = api.deal(member, amount=amount)
        if status != "new" or stage != "qualification":
            r = _patch(api, creator, deal["id"], status=status, stage=stage)
            assert r.status_code == 200
            deal = r.get_json()
        deals.append(deal)
    return {"team": team, "deals": deals}


def _list(api: ApiClient, user: User, query: Any):
    return api.get("/deals", user=user, org=user.org_id, query=query)


def test_list_default_order_is_newest_first(api: ApiClient, listing: dict) -> None:
    owner = listing["team"]["owner"]
    ids = [d["id"] for d in listing["deals"]]
    r = _list(api, owner, {})
    assert _ids(r) == ids[::-1]
    body = r.get_json()
    assert body["total"] == 5
    assert body["pages"] == 1


def test_list_repeatable_status(api: ApiClient, listing: dict) -> None:
    owner = listing["team"]["owner"]
    d = listing["deals"]
    r = _list(api, owner, [("status", "in_progress"), ("status", "won")])
    assert sorted(_ids(r)) == sorted([d[1]["id"], d[2]["id"], d[4]["id"]])
    assert r.get_json()["total"] == 3
    r = _list(api, owner, {"status": "lost"})
    assert _ids(r) == [d[3]["id"]]


def test_list_stage(api: ApiClient, listing: dict) -> None:
    owner = listing["team"]["owner"]
    d = listing["deals"]
    assert sorted(_ids(_list(api, owner, {"stage": "closed"}))) == sorted([d[2]["id"], d[3]["id"]])
    assert _ids(_list(api, owner, {"stage": "qualification"})) == [d[0]["id"]]


def test_list_amount_bounds_inclusive(api: ApiClient, listing: dict) -> None:
    owner = listing["team"]["owner"]
    d = listing["deals"]
    r = _list(api, owner, {"min_amount": "100", "max_amount": "500"})
    assert sorted(_ids(r)) == sorted([d[0]["id"], d[1]["id"], d[4]["id"]])
    for item in r.get_json()["items"]:
        assert Decimal("100") <= Decimal(item["amount"]) <= Decimal("500")
    r = _list(api, owner, {"min_amount": "500.00"})
    assert sorted(_ids(r)) == sorted([d[1]["id"], d[2]["id"], d[4]["id"]])
    r = _list(api, owner, {"max_amount": "50"})
    assert _ids(r) == [d[3]["id"]]
    r = _list(api, owner, {"min_amount": "500", "max_amount": "500"})
    assert sorted(_ids(r)) == sorted([d[1]["id"], d[4]["id"]])


def test_list_combined_filters(api: ApiClient, listing: dict) -> None:
    owner = listing["team"]["owner"]
    d = listing["deals"]
    r = _list(
        api,
        owner,
        [
            ("status", "in_progress"),
            ("status", "new"),
            ("min_amount", "200"),
            ("stage", "proposal"),
        ],
    )
    assert _ids(r) == [d[1]["id"]]


@pytest.mark.parametrize("role", ["owner", "admin", "manager"])
def test_list_owner_filter(api: ApiClient, listing: dict, role: str) -> None:
    team = listing["team"]
    d = listing["deals"]
    r = _list(api, team[role], {"owner_id": team["member"].id})
    assert _ids(r) == [d[3]["id"], d[1]["id"]]
    r = _list(api, team[role], {"owner_id": team["member2"].id})
    assert _ids(r) == []


def test_list_owner_filter_forbidden_for_member(api: ApiClient, listing: dict) -> None:
    member = listing["team"]["member"]
    r = _list(api, member, {"owner_id": member.id})
    assert r.status_code == 403
    assert error_code(r) == "OWNER_FILTER_FORBIDDEN"
    # Without the filter, a member sees every deal.
    assert len(_ids(_list(api, member, {}))) == 5


def test_list_order_by_amount(api: ApiClient, listing: dict) -> None:
    owner = listing["team"]["owner"]
    for order in ("asc", "desc"):
        r = _list(api, owner, {"order_by": "amount", "order": order})
        amounts = [Decimal(item["amount"]) for item in r.get_json()["items"]]
        assert amounts == sorted(amounts, reverse=order == "desc")
        assert len(amounts) == 5


def test_list_order_by_created_at(api: ApiClient, listing: dict) -> None:
    owner = listing["team"]["owner"]
    ids = [d["id"] for d in listing["deals"]]
    assert _ids(_list(api, owner, {"order_by": "created_at", "order": "asc"})) == ids
    assert _ids(_list(api, owner, {"order_by": "created_at", "order": "desc"})) == ids[::-1]
    r = _list(api, owner, {"order_by": "created_at", "order": "asc"})
    stamps = [dt.datetime.fromisoformat(i["created_at"]) for i in r.get_json()["items"]]
    assert stamps == sorted(stamps)


def test_list_order_by_updated_at(api: ApiClient, listing: dict) -> None:
    owner = listing["team"]["owner"]
    first = listing["deals"][0]
    assert _patch(api, owner, first["id"], title="Touched").status_code == 200
    desc = _ids(_list(api, owner, {"order_by": "updated_at", "order": "desc"}))
    assert desc[0] == first["id"]
    asc = _ids(_list(api, owner, {"order_by": "updated_at", "order": "asc"}))
    assert asc[-1] == first["id"]
    r = _list(api, owner, {"order_by": "updated_at", "order": "asc"})
    stamps = [dt.datetime.fromisoformat(i["updated_at"]) for i in r.get_json()["items"]]
    assert stamps == sorted(stamps)


def test_list_pagination(api: ApiClient, listing: dict) -> None:
    owner = listing["team"]["owner"]
    ids = [d["id"] for d in listing["deals"]][::-1]
    seen = []
    for page in (1, 2, 3):
        r = _list(api, owner, {"page": page, "page_size": 2})
        body = r.get_json()
        assert body["total"] == 5
        assert body["pages"] == 3
        seen += _ids(r)
    assert seen == ids


@pytest.mark.parametrize(
    "query",
    [
        {"min_amount": "500", "max_amount": "100"},
        {"order_by": "title"},
        {"order_by": "amount; drop table deals"},
        {"order": "up"},
        {"status": "open"},
        {"stage": "done"},
        {"min_amount": "-1"},
        {"max_amount": "abc"},
        {"owner_id": "x"},
        {"page": 0},
        {"page_size": 101},
    ],
)
def test_list_invalid_query(api: ApiClient, query: dict) -> None:
    user = api.register()
    r = _list(api, user, query)
    assert r.status_code == 400
    assert error_code(r) == "VALIDATION_ERROR"


def test_list_isolated_per_org(api: ApiClient) -> None:
    alice, bob = api.register(), api.register()
    api.deal(alice)
    assert _list(api, bob, {}).get_json()["total"] == 0
    assert _list(api, alice, {}).get_json()["total"] == 1


# --- ETag / If-Match -------------------------------------------------------------------------


def test_if_match_on_patch_and_delete(api: ApiClient) -> None:
    user = api.register()
    deal = api.deal(user)
    url = f"/deals/{deal['id']}"
    r = api.get(url, user=user, org=user.org_id)
    etag = r.headers["ETag"]
    r = api.get(url, user=user, org=user.org_id, headers={"If-None-Match": etag})
    assert r.status_code == 304

    r = api.patch(
        url, user=user, org=user.org_id, json={"title": "A"}, headers={"If-Match": '"nope"'}
    )
    assert r.status_code == 412
    assert error_code(r) == "PRECONDITION_FAILED"
    assert _get(api, user, deal["id"])["title"] == deal["title"]

    r = api.patch(
        url, user=user, org=user.org_id, json={"stage": "proposal"}, headers={"If-Match": etag}
    )
    assert r.status_code == 200
    new_etag = r.headers["ETag"]
    assert new_etag != etag
    # The stale tag no longer matches; the failed write leaves no timeline entry.
    r = api.patch(
        url, user=user, org=user.org_id, json={"stage": "closed"}, headers={"If-Match": etag}
    )
    assert r.status_code == 412
    assert error_code(r) == "PRECONDITION_FAILED"
    assert len(_timeline(api, user, deal["id"])) == 1

    r = api.delete(url, user=user, org=user.org_id, headers={"If-Match": etag})
    assert r.status_code == 412
    assert error_code(r) == "PRECONDITION_FAILED"
    assert _get(api, user, deal["id"])["stage"] == "proposal"

    r = api.delete(url, user=user, org=user.org_id, headers={"If-Match": new_etag})
    assert r.status_code == 204
