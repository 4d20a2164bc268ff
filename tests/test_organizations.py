"""Organizations: the caller's organizations, creating one, and member management."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
from werkzeug.test import TestResponse

from .api import ApiClient, User, error_code


def _members(api: ApiClient, user: User, org_id: int) -> dict[int, str]:
    r = api.get(f"/organizations/{org_id}/members", user=user)
    assert r.status_code == 200, r.get_json()
    return {m["user_id"]: m["role"] for m in r.get_json()}


def _my_roles(api: ApiClient, user: User) -> dict[int, str]:
    r = api.get("/organizations/me", user=user)
    assert r.status_code == 200, r.get_json()
    return {o["id"]: o["role"] for o in r.get_json()}


def _add(api: ApiClient, actor: User, org_id: int, email: str, role: str | None) -> TestResponse:
    body: dict[str, Any] = {"email": email}
    if role is not None:
        body["role"] = role
    return api.post(f"/organizations/{org_id}/members", user=actor, json=body)


def _patch(api: ApiClient, actor: User, org_id: int, user_id: int, role: Any) -> TestResponse:
    return api.patch(f"/organizations/{org_id}/members/{user_id}", user=actor, json={"role": role})


def _remove(api: ApiClient, actor: User, org_id: int, user_id: int) -> TestResponse:
    return api.delete(f"/organizations/{org_id}/members/{user_id}", user=actor)


def _expect(response: TestResponse, status: int, code: str) -> None:
    assert response.status_code == status, response.get_json()
    assert error_code(response) == code


# --- GET /organizations/me ---------------------------------------------------------------------


def test_my_organizations_lists_only_own_with_role(api: ApiClient) -> None:
    alice = api.register(org_name="Alice Org")
    bob = api.register(org_name="Bob Org")

    r = api.get("/organizations/me", user=alice)
    assert r.status_code == 200
    body = r.get_json()
    assert len(body) == 1
    assert set(body[0]) == {"id", "name", "created_at", "role"}
    assert body[0]["id"] == alice.org_id
    assert body[0]["name"] == "Alice Org"
    assert body[0]["role"] == "owner"
    dt.datetime.fromisoformat(body[0]["created_at"])
    assert bob.org_id not in _my_roles(api, alice)


def test_my_organizations_with_several_roles(api: ApiClient) -> None:
    user = api.register(org_name="Mine")
    other_owners = [api.register(org_name=f"Other {i}") for i in range(3)]
    stranger = api.register(org_name="Stranger Org")
    for owner, role in zip(other_owners, ["admin", "manager", "member"], strict=True):
        api.add_member(owner, owner.org_id, user, role)

    roles = _my_roles(api, user)
    assert roles == {
        user.org_id: "owner",
        other_owners[0].org_id: "admin",
        other_owners[1].org_id: "manager",
        other_owners[2].org_id: "member",
    }
    assert stranger.org_id not in roles
    names = {o["id"]: o["name"] for o in api.get("/organizations/me", user=user).get_json()}
    assert names[other_owners[1].org_id] == "Other 1"


def test_my_organizations_requires_login(api: ApiClient) -> None:
    r = api.get("/organizations/me")
    _expect(r, 401, "UNAUTHORIZED")


# --- POST /organizations -----------------------------------------------------------------------


def test_create_organization_makes_creator_owner(api: ApiClient) -> None:
    user = api.register(org_name="First")
    r = api.post("/organizations", user=user, json={"name": "  Second Org  "})
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    assert set(body) == {"id", "name", "created_at", "role"}
    assert body["name"] == "Second Org"
    assert body["role"] == "owner"
    assert body["id"] != user.org_id

    assert _my_roles(api, user) == {user.org_id: "owner", body["id"]: "owner"}
    assert _members(api, user, body["id"]) == {user.id: "owner"}
    # The new organization works as a tenant right away.
    contact = api.post("/contacts", user=user, org=body["id"], json={"name": "Jane"})
    assert contact.status_code == 201, contact.get_json()
    assert contact.get_json()["organization_id"] == body["id"]


def test_create_organization_invisible_to_others(api: ApiClient) -> None:
    user = api.register()
    other = api.register()
    org_id = api.post("/organizations", user=user, json={"name": "Private"}).get_json()["id"]
    assert org_id not in _my_roles(api, other)
    r = api.get(f"/organizations/{org_id}/members", user=other)
    _expect(r, 403, "NOT_ORGANIZATION_MEMBER")


@pytest.mark.parametrize("body", [{}, {"name": ""}, {"name": "   "}, {"name": "x", "extra": 1}])
def test_create_organization_validation(api: ApiClient, body: dict[str, Any]) -> None:
    user = api.register()
    r = api.post("/organizations", user=user, json=body)
    _expect(r, 400, "VALIDATION_ERROR")
    assert _my_roles(api, user) == {user.org_id: "owner"}


def test_create_organization_requires_login(api: ApiClient) -> None:
    _expect(api.post("/organizations", json={"name": "Nope"}), 401, "UNAUTHORIZED")


# --- listing members ---------------------------------------------------------------------------


def test_any_member_may_list_members(api: ApiClient) -> None:
    team = api.team()
    org_id = team["owner"].org_id
    expected = {
        team["owner"].id: "owner",
        team["admin"].id: "admin",
        team["manager"].id: "manager",
        team["member"].id: "member",
        team["member2"].id: "member",
    }
    for user in team.values():
        assert _members(api, user, org_id) == expected

    r = api.get(f"/organizations/{org_id}/members", user=team["member"])
    row = next(m for m in r.get_json() if m["user_id"] == team["admin"].id)
    assert set(row) == {"user_id", "email", "name", "role", "joined_at"}
    assert row["email"] == team["admin"].email
    assert row["name"] == "Admin"


def test_non_member_cannot_list_members(api: ApiClient) -> None:
    owner = api.register()
    stranger = api.register()
    r = api.get(f"/organizations/{owner.org_id}/members", user=stranger)
    _expect(r, 403, "NOT_ORGANIZATION_MEMBER")
    r = api.get("/organizations/2147483000/members", user=stranger)
    _expect(r, 403, "NOT_ORGANIZATION_MEMBER")


def test_list_members_requires_login(api: ApiClient) -> None:
    owner = api.register()
    _expect(api.get(f"/organizations/{owner.org_id}/members"), 401, "UNAUTHORIZED")


# --- adding members ----------------------------------------------------------------------------


@pytest.mark.parametrize("actor_role", ["owner", "admin"])
def test_owner_and_admin_add_members(api: ApiClient, actor_role: str) -> None:
    team = api.team()
    org_id = team["owner"].org_id
    newcomer = api.register(name="Newcomer")
    r = _add(api, team[actor_role], org_id, newcomer.email.upper(), "manager")
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    assert body["user_id"] == newcomer.id
    assert body["email"] == newcomer.email
    assert body["name"] == "Newcomer"
    assert body["role"] == "manager"
    dt.datetime.fromisoformat(body["joined_at"])

    assert _members(api, team["owner"], org_id)[newcomer.id] == "manager"
    assert _my_roles(api, newcomer)[org_id] == "manager"
    # The newcomer works in the organization with their role.
    r = api.get("/contacts", user=newcomer, org=org_id)
    assert r.status_code == 200


def test_added_member_role_defaults_to_member(api: ApiClient) -> None:
    owner = api.register()
    newcomer = api.register()
    r = _add(api, owner, owner.org_id, newcomer.email, None)
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["role"] == "member"
    assert _my_roles(api, newcomer)[owner.org_id] == "member"


@pytest.mark.parametrize("actor_role", ["manager", "member"])
def test_manager_and_member_cannot_add_members(api: ApiClient, actor_role: str) -> None:
    team = api.team()
    org_id = team["owner"].org_id
    newcomer = api.register()
    r = _add(api, team[actor_role], org_id, newcomer.email, "member")
    _expect(r, 403, "SETTINGS_FORBIDDEN")
    assert newcomer.id not in _members(api, team["owner"], org_id)
    assert org_id not in _my_roles(api, newcomer)


def test_non_member_cannot_add_members(api: ApiClient) -> None:
    owner = api.register()
    stranger = api.register()
    r = _add(api, stranger, owner.org_id, stranger.email, "admin")
    _expect(r, 403, "NOT_ORGANIZATION_MEMBER")
    assert owner.org_id not in _my_roles(api, stranger)


def test_add_unknown_email(api: ApiClient) -> None:
    owner = api.register()
    r = _add(api, owner, owner.org_id, f"ghost-{uuid.uuid4().hex[:8]}@example.com", "member")
    _expect(r, 404, "USER_NOT_FOUND")


def test_add_existing_member_conflicts(api: ApiClient) -> None:
    owner = api.register()
    user = api.register()
    api.add_member(owner, owner.org_id, user, "member")
    r = _add(api, owner, owner.org_id, user.email, "admin")
    _expect(r, 409, "MEMBER_ALREADY_EXISTS")
    assert _members(api, owner, owner.org_id)[user.id] == "member"
    # Adding oneself is also "already a member".
    _expect(_add(api, owner, owner.org_id, owner.email, "member"), 409, "MEMBER_ALREADY_EXISTS")


def test_only_owner_adds_an_owner(api: ApiClient) -> None:
    team = api.team()
    org_id = team["owner"].org_id
    newcomer = api.register()
    r = _add(api, team["admin"], org_id, newcomer.email, "owner")
    _expect(r, 403, "OWNER_ONLY")
    assert newcomer.id not in _members(api, team["owner"], org_id)

    r = _add(api, team["owner"], org_id, newcomer.email, "owner")
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["role"] == "owner"
    assert _my_roles(api, newcomer)[org_id] == "owner"


@pytest.mark.parametrize(
    "body",
    [
        {"email": "x@example.com", "role": "superuser"},
        {"email": "x@example.com", "role": "OWNER"},
        {"email": "x@example.com", "role": ""},
        {"email": "x@example.com", "role": None},
        {"email": "x@example.com", "role": 1},
        {"email": "not-an-email", "role": "member"},
        {"role": "member"},
        {"email": "x@example.com", "role": "member", "extra": True},
    ],
)
def test_add_member_validation(api: ApiClient, body: dict[str, Any]) -> None:
    owner = api.register()
    r = api.post(f"/organizations/{owner.org_id}/members", user=owner, json=body)
    _expect(r, 400, "VALIDATION_ERROR")


# --- changing roles ----------------------------------------------------------------------------


@pytest.mark.parametrize("actor_role", ["owner", "admin"])
def test_owner_and_admin_change_roles(api: ApiClient, actor_role: str) -> None:
    team = api.team()
    org_id = team["owner"].org_id
    target = team["member"]
    r = _patch(api, team[actor_role], org_id, target.id, "manager")
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["user_id"] == target.id
    assert r.get_json()["role"] == "manager"
    assert _my_roles(api, target)[org_id] == "manager"

    r = _patch(api, team[actor_role], org_id, target.id, "admin")
    assert r.status_code == 200
    assert _members(api, team["owner"], org_id)[target.id] == "admin"


@pytest.mark.parametrize("actor_role", ["manager", "member"])
def test_manager_and_member_cannot_change_roles(api: ApiClient, actor_role: str) -> None:
    team = api.team()
    org_id = team["owner"].org_id
    r = _patch(api, team[actor_role], org_id, team["member2"].id, "admin")
    _expect(r, 403, "SETTINGS_FORBIDDEN")
    # Not even their own role.
    r = _patch(api, team[actor_role], org_id, team[actor_role].id, "admin")
    _expect(r, 403, "SETTINGS_FORBIDDEN")
    assert _members(api, team["owner"], org_id)[team["member2"].id] == "member"
    assert _members(api, team["owner"], org_id)[team[actor_role].id] == actor_role


def test_admin_cannot_touch_an_owner(api: ApiClient) -> None:
    team = api.team()
    org_id = team["owner"].org_id
    admin, owner = team["admin"], team["owner"]
    _expect(_patch(api, admin, org_id, owner.id, "member"), 403, "OWNER_ONLY")
    _expect(_patch(api, admin, org_id, team["member"].id, "owner"), 403, "OWNER_ONLY")
    _expect(_patch(api, admin, org_id, admin.id, "owner"), 403, "OWNER_ONLY")
    _expect(_remove(api, admin, org_id, owner.id), 403, "OWNER_ONLY")
    members = _members(api, owner, org_id)
    assert members[owner.id] == "owner"
    assert members[team["member"].id] == "member"
    assert members[admin.id] == "admin"


def test_owner_promotes_to_owner_and_two_owners_can_demote(api: ApiClient) -> None:
    team = api.team()
    org_id = team["owner"].org_id
    owner, admin = team["owner"], team["admin"]

    r = _patch(api, owner, org_id, admin.id, "owner")
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["role"] == "owner"
    assert _my_roles(api, admin)[org_id] == "owner"

    # With two owners, the new owner can demote the original one.
    r = _patch(api, admin, org_id, owner.id, "admin")
    assert r.status_code == 200, r.get_json()
    assert _members(api, admin, org_id)[owner.id] == "admin"

    # Now the promoted user is the last owner and cannot step down.
    _expect(_patch(api, admin, org_id, admin.id, "manager"), 409, "LAST_OWNER")
    # ...and the demoted one (now admin) cannot touch the owner.
    _expect(_patch(api, owner, org_id, admin.id, "member"), 403, "OWNER_ONLY")


def test_owner_can_demote_self_when_another_owner_exists(api: ApiClient) -> None:
    owner = api.register()
    co_owner = api.register()
    api.add_member(owner, owner.org_id, co_owner, "owner")
    r = _patch(api, owner, owner.org_id, owner.id, "member")
    assert r.status_code == 200, r.get_json()
    assert _my_roles(api, owner)[owner.org_id] == "member"
    # As a member the former owner has lost the settings rights.
    _expect(_patch(api, owner, owner.org_id, owner.id, "owner"), 403, "SETTINGS_FORBIDDEN")


def test_last_owner_cannot_demote_self(api: ApiClient) -> None:
    owner = api.register()
    for role in ("admin", "manager", "member"):
        _expect(_patch(api, owner, owner.org_id, owner.id, role), 409, "LAST_OWNER")
    assert _my_roles(api, owner)[owner.org_id] == "owner"


def test_owner_to_owner_is_a_no_op(api: ApiClient) -> None:
    owner = api.register()
    r = _patch(api, owner, owner.org_id, owner.id, "owner")
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["role"] == "owner"


def test_change_role_of_non_member(api: ApiClient) -> None:
    owner = api.register()
    stranger = api.register()
    _expect(_patch(api, owner, owner.org_id, stranger.id, "admin"), 404, "MEMBER_NOT_FOUND")
    _expect(_patch(api, owner, owner.org_id, 2147483000, "admin"), 404, "MEMBER_NOT_FOUND")
    assert owner.org_id not in _my_roles(api, stranger)


def test_change_role_in_foreign_organization(api: ApiClient) -> None:
    owner = api.register()
    other = api.register()
    _expect(_patch(api, other, owner.org_id, owner.id, "member"), 403, "NOT_ORGANIZATION_MEMBER")


@pytest.mark.parametrize("role", ["superuser", "Admin", "", None, 3, ["admin"]])
def test_change_role_validation(api: ApiClient, role: Any) -> None:
    team = api.team()
    org_id = team["owner"].org_id
    r = _patch(api, team["owner"], org_id, team["member"].id, role)
    _expect(r, 400, "VALIDATION_ERROR")
    assert _members(api, team["owner"], org_id)[team["member"].id] == "member"


@pytest.mark.parametrize("body", [{}, {"role": "admin", "email": "x@example.com"}])
def test_change_role_body_validation(api: ApiClient, body: dict[str, Any]) -> None:
    owner = api.register()
    user = api.register()
    api.add_member(owner, owner.org_id, user, "member")
    r = api.patch(f"/organizations/{owner.org_id}/members/{user.id}", user=owner, json=body)
    _expect(r, 400, "VALIDATION_ERROR")


# --- removing members --------------------------------------------------------------------------


def test_admin_removes_member_who_then_loses_access(api: ApiClient) -> None:
    team = api.team()
    org_id = team["owner"].org_id
    gone = team["member"]
    r = _remove(api, team["admin"], org_id, gone.id)
    assert r.status_code == 204
    assert r.data == b""

    assert gone.id not in _members(api, team["owner"], org_id)
    assert org_id not in _my_roles(api, gone)
    _expect(api.get(f"/organizations/{org_id}/members", user=gone), 403, "NOT_ORGANIZATION_MEMBER")
    _expect(api.get("/contacts", user=gone, org=org_id), 403, "NOT_ORGANIZATION_MEMBER")
    _expect(api.get("/deals", user=gone, org=org_id), 403, "NOT_ORGANIZATION_MEMBER")
    # Their own organization is unaffected.
    assert api.get("/contacts", user=gone, org=_own_org(api, gone)).status_code == 200

    # Removing again: not a member any more.
    _expect(_remove(api, team["admin"], org_id, gone.id), 404, "MEMBER_NOT_FOUND")
    # They can be added back.
    assert _add(api, team["owner"], org_id, gone.email, "manager").status_code == 201
    assert _my_roles(api, gone)[org_id] == "manager"


def _own_org(api: ApiClient, user: User) -> int:
    """The organization the user owns (the one created at registration)."""
    owned = [org for org, role in _my_roles(api, user).items() if role == "owner"]
    assert len(owned) == 1
    return owned[0]


def test_member_can_leave_only_via_admin(api: ApiClient) -> None:
    team = api.team()
    org_id = team["owner"].org_id
    _expect(_remove(api, team["member"], org_id, team["member"].id), 403, "SETTINGS_FORBIDDEN")
    _expect(_remove(api, team["manager"], org_id, team["member"].id), 403, "SETTINGS_FORBIDDEN")
    assert team["member"].id in _members(api, team["owner"], org_id)


def test_admin_may_remove_admin_and_self(api: ApiClient) -> None:
    owner = api.register()
    admin1, admin2 = api.register(), api.register()
    api.add_member(owner, owner.org_id, admin1, "admin")
    api.add_member(owner, owner.org_id, admin2, "admin")
    assert _remove(api, admin1, owner.org_id, admin2.id).status_code == 204
    assert _remove(api, admin1, owner.org_id, admin1.id).status_code == 204
    assert _members(api, owner, owner.org_id) == {owner.id: "owner"}


def test_last_owner_cannot_be_removed(api: ApiClient) -> None:
    owner = api.register()
    _expect(_remove(api, owner, owner.org_id, owner.id), 409, "LAST_OWNER")
    assert _my_roles(api, owner)[owner.org_id] == "owner"


def test_owner_removes_co_owner(api: ApiClient) -> None:
    owner = api.register()
    co_owner = api.register()
    api.add_member(owner, owner.org_id, co_owner, "owner")
    assert _remove(api, owner, owner.org_id, co_owner.id).status_code == 204
    assert _members(api, owner, owner.org_id) == {owner.id: "owner"}
    # Now the remaining owner is the last one again.
    _expect(_remove(api, owner, owner.org_id, owner.id), 409, "LAST_OWNER")


def test_owner_can_leave_when_another_owner_remains(api: ApiClient) -> None:
    owner = api.register()
    co_owner = api.register()
    api.add_member(owner, owner.org_id, co_owner, "owner")
    assert _remove(api, owner, owner.org_id, owner.id).status_code == 204
    assert owner.org_id not in _my_roles(api, owner)
    assert _members(api, co_owner, owner.org_id) == {co_owner.id: "owner"}


def test_remove_non_member(api: ApiClient) -> None:
    owner = api.register()
    stranger = api.register()
    _expect(_remove(api, owner, owner.org_id, stranger.id), 404, "MEMBER_NOT_FOUND")
    _expect(_remove(api, owner, owner.org_id, 2147483000), 404, "MEMBER_NOT_FOUND")


def test_remove_in_foreign_organization(api: ApiClient) -> None:
    owner = api.register()
    other = api.register()
    _expect(_remove(api, other, owner.org_id, owner.id), 403, "NOT_ORGANIZATION_MEMBER")
    assert _my_roles(api, owner)[owner.org_id] == "owner"


def test_membership_routes_require_login(api: ApiClient) -> None:
    owner = api.register()
    path = f"/organizations/{owner.org_id}/members"
    _expect(api.post(path, json={"email": owner.email}), 401, "UNAUTHORIZED")
    _expect(api.patch(f"{path}/{owner.id}", json={"role": "member"}), 401, "UNAUTHORIZED")
    _expect(api.delete(f"{path}/{owner.id}"), 401, "UNAUTHORIZED")
