"""The end-to-end scenario of the assignment (TZ), driven through HTTP only."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

from .api import PASSWORD, ApiClient, User, error_code


def _register(api: ApiClient, name: str, org_name: str) -> tuple[str, dict[str, Any]]:
    email = f"{name.lower()}-{uuid.uuid4().hex[:10]}@example.com"
    r = api.post(
        "/auth/register",
        json={"email": email, "password": PASSWORD, "name": name, "organization_name": org_name},
    )
    assert r.status_code == 201, r.get_json()
    return email, r.get_json()


def _login(api: ApiClient, email: str, org_id: int) -> User:
    """Log in and return a User whose org_id is the organization we work in."""
    r = api.post("/auth/login", json={"email": email, "password": PASSWORD})
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    me = api.get("/auth/me", token=body["access_token"])
    assert me.status_code == 200
    return User(
        id=me.get_json()["id"],
        email=email,
        token=body["access_token"],
        refresh_token=body["refresh_token"],
        org_id=org_id,
    )


def _activities(api: ApiClient, user: User, deal_id: int) -> list[dict[str, Any]]:
    r = api.get(f"/deals/{deal_id}/activities", user=user, org=user.org_id)
    assert r.status_code == 200, r.get_json()
    return r.get_json()["items"]


def _tomorrow() -> str:
    return (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)).isoformat()


def _stage(funnel: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in funnel["stages"] if s["stage"] == name)


def _team(api: ApiClient) -> tuple[User, User, User, int]:
    """Owner registers, creates a second organization, adds a manager and a member to it;
    everyone logs in. Returns (owner, manager, member, org_id) working in that organization."""
    owner_email, owner_reg = _register(api, "Olga", "Olga's First Org")
    owner_token = owner_reg["access_token"]

    r = api.post("/organizations", token=owner_token, json={"name": "Olga's Sales Team"})
    assert r.status_code == 201, r.get_json()
    org = r.get_json()
    assert org["role"] == "owner"
    org_id = org["id"]
    mine = api.get("/organizations/me", token=owner_token).get_json()
    assert {(o["id"], o["role"]) for o in mine} == {
        (owner_reg["organization"]["id"], "owner"),
        (org_id, "owner"),
    }

    manager_email, _ = _register(api, "Max", "Max's Org")
    member_email, _ = _register(api, "Mia", "Mia's Org")
    for email, role in ((manager_email, "manager"), (member_email, "member")):
        r = api.post(
            f"/organizations/{org_id}/members",
            token=owner_token,
            json={"email": email, "role": role},
        )
        assert r.status_code == 201, r.get_json()
        assert r.get_json()["role"] == role

    owner = _login(api, owner_email, org_id)
    manager = _login(api, manager_email, org_id)
    member = _login(api, member_email, org_id)
    members = api.get(f"/organizations/{org_id}/members", user=member).get_json()
    assert {m["user_id"]: m["role"] for m in members} == {
        owner.id: "owner",
        manager.id: "manager",
        member.id: "member",
    }
    for user, role in ((manager, "manager"), (member, "member")):
        roles = {o["id"]: o["role"] for o in api.get("/organizations/me", user=user).get_json()}
        assert roles[org_id] == role
    return owner, manager, member, org_id


def test_full_crm_scenario(api: ApiClient) -> None:
    owner, manager, member, org_id = _team(api)

    # --- the manager creates a contact and a deal --------------------------------------------
    r = api.post(
        "/contacts",
        user=manager,
        org=org_id,
        json={"name": "John Doe", "email": "john.doe@example.com", "phone": "+123456789"},
    )
    assert r.status_code == 201, r.get_json()
    contact = r.get_json()
    assert contact["owner_id"] == manager.id
    assert contact["organization_id"] == org_id

    r = api.post(
        "/deals",
        user=manager,
        org=org_id,
        json={
            "contact_id": contact["id"],
            "title": "Website redesign",
            "amount": "10000.00",
            "currency": "EUR",
        },
    )
    assert r.status_code == 201, r.get_json()
    deal = r.get_json()
    deal_id = deal["id"]
    assert deal["status"] == "new"
    assert deal["stage"] == "qualification"
    assert deal["owner_id"] == manager.id
    assert Decimal(deal["amount"]) == Decimal("10000.00")
    assert deal["currency"] == "EUR"

    # --- a task writes a task_created entry -----------------------------------------------------
    r = api.post(
        "/tasks",
        user=manager,
        org=org_id,
        json={"deal_id": deal_id, "title": "Call client", "due_date": _tomorrow()},
    )
    assert r.status_code == 201, r.get_json()
    task = r.get_json()
    assert task["is_done"] is False
    assert task["deal_id"] == deal_id

    timeline = _activities(api, manager, deal_id)
    assert len(timeline) == 1
    assert timeline[0]["type"] == "task_created"
    assert timeline[0]["payload"] == {"task_id": task["id"], "task_title": "Call client"}
    assert timeline[0]["author_id"] == manager.id
    assert timeline[0]["deal_id"] == deal_id

    # --- a comment --------------------------------------------------------------------------------
    r = api.post(
        f"/deals/{deal_id}/activities",
        user=manager,
        org=org_id,
        json={"type": "comment", "payload": {"text": "Client asked for an updated proposal"}},
    )
    assert r.status_code == 201, r.get_json()
    comment = r.get_json()
    assert comment["type"] == "comment"
    assert comment["author_id"] == manager.id
    assert comment["payload"] == {"text": "Client asked for an updated proposal"}

    # --- stage -> proposal ------------------------------------------------------------------------
    r = api.patch(f"/deals/{deal_id}", user=manager, org=org_id, json={"stage": "proposal"})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["stage"] == "proposal"
    assert r.get_json()["status"] == "new"
    latest = _activities(api, manager, deal_id)[0]
    assert latest["type"] == "stage_changed"
    assert latest["payload"] == {"old_stage": "qualification", "new_stage": "proposal"}
    assert latest["author_id"] == manager.id

    # --- won + closed in one PATCH ----------------------------------------------------------------
    r = api.patch(
        f"/deals/{deal_id}", user=manager, org=org_id, json={"status": "won", "stage": "closed"}
    )
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["status"] == "won"
    assert r.get_json()["stage"] == "closed"

    # --- the whole timeline, newest first ---------------------------------------------------------
    timeline = _activities(api, owner, deal_id)
    assert len(timeline) == 5
    created = [dt.datetime.fromisoformat(a["created_at"]) for a in timeline]
    assert created == sorted(created, reverse=True)
    # The two entries of the last PATCH come first (same moment, either order).
    last_patch = {a["type"]: a for a in timeline[:2]}
    assert set(last_patch) == {"status_changed", "stage_changed"}
    assert last_patch["status_changed"]["payload"] == {"old_status": "new", "new_status": "won"}
    assert last_patch["stage_changed"]["payload"] == {
        "old_stage": "proposal",
        "new_stage": "closed",
    }
    assert all(a["author_id"] == manager.id for a in timeline)
    assert [a["type"] for a in timeline[2:]] == ["stage_changed", "comment", "task_created"]
    assert timeline[2]["payload"] == {"old_stage": "qualification", "new_stage": "proposal"}
    assert timeline[3]["id"] == comment["id"]
    assert timeline[4]["payload"]["task_id"] == task["id"]

    # --- analytics (any role may read them) ----------------------------------------------------
    r = api.get("/analytics/deals/summary", user=owner, org=org_id)
    assert r.status_code == 200, r.get_json()
    summary = r.get_json()
    assert summary["by_status"]["won"]["count"] == 1
    assert Decimal(summary["by_status"]["won"]["total_amount"]) == Decimal("10000")
    for status in ("new", "in_progress", "lost"):
        assert summary["by_status"][status]["count"] == 0
        assert Decimal(summary["by_status"][status]["total_amount"]) == 0
    assert Decimal(summary["avg_won_amount"]) == Decimal("10000")
    assert summary["total_deals"] == 1
    assert summary["new_deals_last_n_days"] == 1

    r = api.get("/analytics/deals/funnel", user=member, org=org_id)
    assert r.status_code == 200, r.get_json()
    funnel = r.get_json()
    assert [s["stage"] for s in funnel["stages"]] == [
        "qualification",
        "proposal",
        "negotiation",
        "closed",
    ]
    closed = _stage(funnel, "closed")
    assert closed["count"] == 1
    assert closed["reached"] == 1
    assert closed["by_status"]["won"] == 1
    for name in ("qualification", "proposal", "negotiation"):
        assert _stage(funnel, name)["count"] == 0
        assert _stage(funnel, name)["reached"] == 1
    assert [c["rate_percent"] for c in funnel["conversions"]] == [100.0, 100.0, 100.0]

    # The first organization of the owner is untouched by all of this.
    own_org = next(
        o["id"] for o in api.get("/organizations/me", user=owner).get_json() if o["id"] != org_id
    )
    other_summary = api.get("/analytics/deals/summary", user=owner, org=own_org).get_json()
    assert other_summary["total_deals"] == 0
    assert other_summary["avg_won_amount"] is None

    # --- complete the task ------------------------------------------------------------------------
    r = api.patch(f"/tasks/{task['id']}", user=manager, org=org_id, json={"is_done": True})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["is_done"] is True
    r = api.get("/tasks", user=manager, org=org_id, query={"deal_id": deal_id, "only_open": "true"})
    assert r.status_code == 200
    assert r.get_json()["items"] == []

    # --- the contact has a deal: it cannot be deleted ----------------------------------------
    r = api.delete(f"/contacts/{contact['id']}", user=manager, org=org_id)
    assert r.status_code == 409
    assert error_code(r) == "CONTACT_HAS_DEALS"
    assert api.get(f"/contacts/{contact['id']}", user=manager, org=org_id).status_code == 200

    # --- the member sees the manager's deal but may not change it ------------------------------
    r = api.get(f"/deals/{deal_id}", user=member, org=org_id)
    assert r.status_code == 200
    assert r.get_json()["owner_id"] == manager.id
    r = api.patch(f"/deals/{deal_id}", user=member, org=org_id, json={"title": "Hijacked"})
    assert r.status_code == 403
    assert error_code(r) == "NOT_OWNER"
    r = api.post(
        "/tasks",
        user=member,
        org=org_id,
        json={"deal_id": deal_id, "title": "Not mine", "due_date": _tomorrow()},
    )
    assert r.status_code == 403
    assert error_code(r) == "NOT_OWNER"
    assert api.get(f"/deals/{deal_id}", user=owner, org=org_id).get_json()["title"] == (
        "Website redesign"
    )
    assert len(_activities(api, owner, deal_id)) == 5


def test_member_works_on_own_deal(api: ApiClient) -> None:
    owner, manager, member, org_id = _team(api)

    contact = api.contact(member, org_id, name="Small Client", email="small@example.com")
    assert contact["owner_id"] == member.id
    deal = api.deal(member, org_id, contact_id=contact["id"], title="Small deal", amount="2500.50")
    deal_id = deal["id"]
    assert deal["owner_id"] == member.id
    assert (deal["status"], deal["stage"]) == ("new", "qualification")

    task = api.task(member, deal_id, org_id, title="Send quote")
    timeline = _activities(api, member, deal_id)
    assert [a["type"] for a in timeline] == ["task_created"]
    assert timeline[0]["payload"] == {"task_id": task["id"], "task_title": "Send quote"}
    assert timeline[0]["author_id"] == member.id

    r = api.post(
        f"/deals/{deal_id}/activities",
        user=member,
        org=org_id,
        json={"type": "comment", "payload": {"text": "Quote sent"}},
    )
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["author_id"] == member.id

    r = api.patch(f"/deals/{deal_id}", user=member, org=org_id, json={"stage": "negotiation"})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["stage"] == "negotiation"

    # A member may not roll the stage back, even on their own deal.
    r = api.patch(f"/deals/{deal_id}", user=member, org=org_id, json={"stage": "proposal"})
    assert r.status_code == 403
    assert error_code(r) == "STAGE_ROLLBACK_FORBIDDEN"

    r = api.patch(
        f"/deals/{deal_id}",
        user=member,
        org=org_id,
        json={"status": "in_progress", "title": "Small deal (signed soon)"},
    )
    assert r.status_code == 200, r.get_json()
    r = api.patch(
        f"/deals/{deal_id}", user=member, org=org_id, json={"status": "won", "stage": "closed"}
    )
    assert r.status_code == 200, r.get_json()
    assert (r.get_json()["status"], r.get_json()["stage"]) == ("won", "closed")

    timeline = _activities(api, manager, deal_id)
    types = [a["type"] for a in timeline]
    assert sorted(types[:2]) == ["stage_changed", "status_changed"]
    assert types[2:] == ["status_changed", "stage_changed", "comment", "task_created"]
    assert all(a["author_id"] == member.id for a in timeline)
    won = next(a for a in timeline[:2] if a["type"] == "status_changed")
    assert won["payload"] == {"old_status": "in_progress", "new_status": "won"}
    assert timeline[2]["payload"] == {"old_status": "new", "new_status": "in_progress"}
    assert timeline[3]["payload"] == {"old_stage": "qualification", "new_stage": "negotiation"}

    r = api.patch(f"/tasks/{task['id']}", user=member, org=org_id, json={"is_done": True})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["is_done"] is True

    summary = api.get("/analytics/deals/summary", user=member, org=org_id).get_json()
    assert summary["by_status"]["won"]["count"] == 1
    assert Decimal(summary["by_status"]["won"]["total_amount"]) == Decimal("2500.50")
    assert Decimal(summary["avg_won_amount"]) == Decimal("2500.50")

    # The owner (rollback role) reopens the stage; then the member cleans up their own data.
    r = api.patch(f"/deals/{deal_id}", user=owner, org=org_id, json={"stage": "proposal"})
    assert r.status_code == 200, r.get_json()
    r = api.delete(f"/contacts/{contact['id']}", user=member, org=org_id)
    assert r.status_code == 409
    assert error_code(r) == "CONTACT_HAS_DEALS"
    assert api.delete(f"/deals/{deal_id}", user=member, org=org_id).status_code == 204
    assert api.delete(f"/contacts/{contact['id']}", user=member, org=org_id).status_code == 204
    r = api.get(f"/deals/{deal_id}", user=member, org=org_id)
    assert r.status_code == 404
    assert error_code(r) == "DEAL_NOT_FOUND"
    assert (
        api.get("/analytics/deals/summary", user=owner, org=org_id).get_json()["total_deals"] == 0
    )
