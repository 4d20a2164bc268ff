"""Duplicate contacts over HTTP: GET /contacts/{id}/duplicates finds them (e-mail, phone
digits, similar name), POST /contacts/{id}/merge merges them in one transaction."""

from __future__ import annotations

from typing import Any

import pytest

from crm_domain.db import Database
from crm_domain.services.records import merge

from .api import ApiClient, User, error_code
from .test_trash import webhook_endpoint, webhooks_sent


def _duplicates(api: ApiClient, user: User, contact_id: int) -> list[dict[str, Any]]:
    r = api.get(f"/contacts/{contact_id}/duplicates", user=user, org=user.org_id)
    assert r.status_code == 200, r.get_json()
    return r.get_json()["items"]


def _merge(api: ApiClient, user: User, target: int, merge_ids: list[int], **prefer: int):
    body = {"merge_ids": merge_ids, "prefer": prefer}
    return api.post(f"/contacts/{target}/merge", user=user, org=user.org_id, json=body)


# --- duplicates ---------------------------------------------------------------------------------


def test_duplicates_by_email_phone_and_name_with_reasons_and_scores(api: ApiClient) -> None:
    user, other = api.register(), api.register()
    me = api.contact(
        user, name="Margaret Hamilton", email="Maggie@Example.com", phone="+1 555 010 0100"
    )
    same_email = api.contact(user, name="M. H.", email="maggie@example.COM", phone=None)
    same_phone = api.contact(user, name="Someone", email=None, phone="(1) 555-010-0100")
    similar = api.contact(user, name="Margaret Hamiltn", email="mh@elsewhere.org", phone=None)
    everything = api.contact(
        user, name="Margaret Hamilton", email="maggie@example.com", phone="15550100100"
    )
    api.contact(user, name="Grace Hopper", email="grace@example.com", phone="+1 555 999 0000")
    api.contact(other, name="Margaret Hamilton", email="maggie@example.com", phone="15550100100")
    trashed = api.contact(user, name="Margaret Hamilton", email="maggie@example.com")
    assert api.delete(f"/contacts/{trashed['id']}", user=user, org=user.org_id).status_code == 204

    found = _duplicates(api, user, me["id"])
    by_id = {d["contact"]["id"]: d for d in found}
    assert set(by_id) == {same_email["id"], same_phone["id"], similar["id"], everything["id"]}
    assert found[0]["contact"] == everything
    assert sorted(by_id[everything["id"]]["reasons"]) == ["email", "name", "phone"]
    assert by_id[same_email["id"]] == {"contact": same_email, "score": 1.0, "reasons": ["email"]}
    assert (
        by_id[same_phone["id"]]["reasons"] == ["phone"] and by_id[same_phone["id"]]["score"] == 0.9
    )
    assert by_id[similar["id"]]["reasons"] == ["name"]
    assert 0.6 <= by_id[similar["id"]]["score"] < 1.0
    assert [d["score"] for d in found] == sorted((d["score"] for d in found), reverse=True)


def test_duplicates_of_another_orgs_or_a_trashed_contact_are_404(api: ApiClient) -> None:
    user, other = api.register(), api.register()
    theirs = api.contact(other)
    r = api.get(f"/contacts/{theirs['id']}/duplicates", user=user, org=user.org_id)
    assert r.status_code == 404 and error_code(r) == "CONTACT_NOT_FOUND"
    mine = api.contact(user)
    assert api.delete(f"/contacts/{mine['id']}", user=user, org=user.org_id).status_code == 204
    r = api.get(f"/contacts/{mine['id']}/duplicates", user=user, org=user.org_id)
    assert r.status_code == 404


# --- merge --------------------------------------------------------------------------------------


def test_merge_moves_deals_fills_fields_trashes_the_others_and_keeps_analytics(
    api: ApiClient, db: Database
) -> None:
    user = api.register()
    hook = webhook_endpoint(api, user, "contact.merged", "contact.deleted")
    target = api.contact(user, name="Ada Lovelace", email=None, phone=None)
    first = api.contact(user, name="Ada L.", email="ada@example.com", phone=None)
    second = api.contact(
        user, name="A. Lovelace", email="countess@example.com", phone="+44 20 1234"
    )
    live = api.deal(user, contact_id=first["id"], amount="300.00")
    task = api.task(user, live["id"])
    gone = api.deal(user, contact_id=second["id"], amount="50.00")
    assert api.delete(f"/deals/{gone['id']}", user=user, org=user.org_id).status_code == 204
    summary = api.get("/analytics/deals/summary", user=user, org=user.org_id).get_json()

    r = _merge(api, user, target["id"], [first["id"], second["id"]], phone=second["id"])
    assert r.status_code == 200, r.get_json()
    merged = r.get_json()
    assert merged["id"] == target["id"]
    assert (merged["name"], merged["email"], merged["phone"]) == (
        "Ada Lovelace",  # the target's own
        "ada@example.com",  # the first merged contact with one
        "+44 20 1234",  # preferred
    )
    assert api.get(f"/contacts/{target['id']}", user=user, org=user.org_id).get_json() == merged
    moved = api.get(f"/deals/{live['id']}", user=user, org=user.org_id).get_json()
    assert moved["contact_id"] == target["id"]
    assert api.get(f"/tasks/{task['id']}", user=user, org=user.org_id).status_code == 200
    r = api.get(f"/deals/{live['id']}/activities", user=user, org=user.org_id)
    entries = [
        a for a in r.get_json()["items"] if a["payload"].get("event") == merge.TIMELINE_MOVED
    ]
    assert [e["payload"] for e in entries] == [
        {"event": "contact_merged", "old_contact_id": first["id"], "new_contact_id": target["id"]}
    ]
    for c in (first, second):
        assert api.get(f"/contacts/{c['id']}", user=user, org=user.org_id).status_code == 404
    trash = api.get("/trash", user=user, org=user.org_id, query={"entity": "contact"}).get_json()
    assert {(i["id"], i["merged_into_id"]) for i in trash["items"]} == {
        (first["id"], target["id"]),
        (second["id"], target["id"]),
    }
    after = api.get("/analytics/deals/summary", user=user, org=user.org_id).get_json()
    assert after["by_status"] == summary["by_status"]

    # The trashed deal moved too: restored, it belongs to the target.
    r = api.post(f"/trash/deal/{gone['id']}/restore", user=user, org=user.org_id)
    assert r.status_code == 200 and r.get_json()["record"]["contact_id"] == target["id"]
    # A merged contact stays merged.
    r = api.post(f"/trash/contact/{first['id']}/restore", user=user, org=user.org_id)
    assert r.status_code == 409 and error_code(r) == "CONTACT_MERGED"
    assert r.get_json()["error"]["details"] == {"merged_into_id": target["id"]}

    types = [t for t, _ in webhooks_sent(db, hook)]
    assert types == ["contact.deleted", "contact.deleted", "contact.merged"]
    body = webhooks_sent(db, hook)[-1][1]
    assert f'"merged_ids":[{first["id"]},{second["id"]}]' in body.replace(" ", "")


@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("itself", 400, "MERGE_INTO_ITSELF"),
        ("empty", 400, "VALIDATION_ERROR"),
        ("unknown_field", 400, "MERGE_UNKNOWN_FIELD"),
        ("prefer_outside", 400, "MERGE_PREFER_OUTSIDE"),
        ("unknown_id", 404, "CONTACT_NOT_FOUND"),
        ("other_org", 404, "CONTACT_NOT_FOUND"),
        ("trashed", 404, "CONTACT_NOT_FOUND"),
    ],
)
def test_bad_merges_are_clear_4xx_and_change_nothing(
    api: ApiClient, case: str, status: int, code: str
) -> None:
    user, other = api.register(), api.register()
    target, source = api.contact(user, email=None), api.contact(user, email="s@example.com")
    deal = api.deal(user, contact_id=source["id"])
    theirs = api.contact(other)
    trashed = api.contact(user)
    assert api.delete(f"/contacts/{trashed['id']}", user=user, org=user.org_id).status_code == 204
    ids, prefer = {
        "itself": ([target["id"]], {}),
        "empty": ([], {}),
        "unknown_field": ([source["id"]], {"owner_id": source["id"]}),
        "prefer_outside": ([source["id"]], {"email": theirs["id"]}),
        "unknown_id": ([source["id"], 2**31 - 2], {}),
        "other_org": ([source["id"], theirs["id"]], {}),
        "trashed": ([source["id"], trashed["id"]], {}),
    }[case]
    r = _merge(api, user, target["id"], ids, **prefer)
    assert r.status_code == status, r.get_json()
    assert error_code(r) == code
    assert api.get(f"/contacts/{source['id']}", user=user, org=user.org_id).get_json() == source
    assert api.get(f"/contacts/{target['id']}", user=user, org=user.org_id).get_json() == target
    assert api.get(f"/deals/{deal['id']}", user=user, org=user.org_id).get_json() == deal


def test_a_member_merges_only_contacts_they_own(api: ApiClient) -> None:
    team = api.team()
    owner, member = team["owner"], team["member"]
    mine = api.contact(member, org=owner.org_id)
    also_mine = api.contact(member, org=owner.org_id)
    theirs = api.contact(owner)
    r = api.post(
        f"/contacts/{mine['id']}/merge",
        user=member,
        org=owner.org_id,
        json={"merge_ids": [theirs["id"]]},
    )
    assert r.status_code == 403 and error_code(r) == "NOT_OWNER"
    r = api.post(
        f"/contacts/{mine['id']}/merge",
        user=member,
        org=owner.org_id,
        json={"merge_ids": [also_mine["id"]]},
    )
    assert r.status_code == 200, r.get_json()
