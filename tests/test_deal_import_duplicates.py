"""Imports and duplicates: a deals row with the contact and title (ignoring case) of a live
deal, or of an earlier row, is skipped or updates that deal as `on_duplicate` says; a record
in the trash (deal or contact) never matches."""

from __future__ import annotations

from typing import Any

import pytest

from .api import ApiClient, User
from .test_imports import _csv, _deals, _import

HEADER = ["title", "amount", "status", "stage", "contact_id"]


def _by_title(api: ApiClient, user: User) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for d in _deals(api, user):
        found.setdefault(d["title"], []).append(d)
    return found


@pytest.mark.parametrize("on_duplicate", ["skip", "update"])
def test_a_row_matching_a_live_deal_is_skipped_or_updates_it(
    api: ApiClient, on_duplicate: str
) -> None:
    owner = api.register()
    contact = api.contact(owner)
    other = api.contact(owner, email="other@example.com")
    kept = api.deal(owner, contact_id=contact["id"], title="Renewal 2027", amount="100.00")
    trashed = api.deal(owner, contact_id=contact["id"], title="Old pilot", amount="5.00")
    assert api.delete(f"/deals/{trashed['id']}", user=owner, org=owner.org_id).status_code == 204
    cid = str(contact["id"])
    content = _csv(
        HEADER,
        [
            ["RENEWAL 2027", "250", "in_progress", "proposal", cid],  # the live deal
            ["Renewal 2027", "900", "won", "closed", str(other["id"])],  # another contact
            ["Old pilot", "7", "", "", cid],  # only a trashed deal has it: a new one
            ["Old pilot", "8", "", "", cid],  # the row above's duplicate
        ],
    )
    job = _import(api, owner, content, kind="deals", on_duplicate=on_duplicate)
    assert job["status"] == "done" and job["error_rows"] == 0, job
    deals = _by_title(api, owner)
    renewal = api.get(f"/deals/{kept['id']}", user=owner, org=owner.org_id).get_json()
    renewals = deals.get("Renewal 2027", []) + deals.get("RENEWAL 2027", [])
    assert sorted(d["contact_id"] for d in renewals) == sorted([contact["id"], other["id"]])
    pilots = deals.pop("Old pilot")
    assert [d["contact_id"] for d in pilots] == [contact["id"]]
    if on_duplicate == "skip":
        assert (job["created"], job["updated"], job["skipped"]) == (2, 0, 2)
        assert renewal == kept
        assert pilots[0]["amount"] == "7.00"
    else:
        assert (job["created"], job["updated"], job["skipped"]) == (2, 2, 0)
        assert (renewal["title"], renewal["amount"], renewal["status"], renewal["stage"]) == (
            "RENEWAL 2027",
            "250.00",
            "in_progress",
            "proposal",
        )
        assert pilots[0]["amount"] == "8.00"
    summary = api.get("/analytics/deals/summary", user=owner, org=owner.org_id).get_json()
    assert summary["total_deals"] == 3


def test_an_update_by_import_meets_the_rules_of_a_patch(api: ApiClient) -> None:
    team = api.team()
    owner, member = team["owner"], team["member"]
    contact = api.contact(owner)
    theirs = api.deal(owner, contact_id=contact["id"], title="Theirs")
    mine = api.deal(member, org=owner.org_id, contact_id=contact["id"], title="Mine")
    r = api.patch(
        f"/deals/{mine['id']}", user=member, org=owner.org_id, json={"stage": "negotiation"}
    )
    assert r.status_code == 200
    cid = str(contact["id"])
    content = _csv(
        HEADER,
        [
            ["Theirs", "1", "", "", cid],  # NOT_OWNER
            ["Mine", "1", "", "qualification", cid],  # a stage rollback: owner/admin only
            ["Mine", "0", "won", "closed", cid],  # won needs an amount
        ],
    )
    job = _import(api, member, content, org=owner.org_id, kind="deals", on_duplicate="update")
    codes = sorted(e["code"] for e in job["errors"])
    assert codes == ["NOT_OWNER", "STAGE_ROLLBACK_FORBIDDEN", "WON_REQUIRES_POSITIVE_AMOUNT"]
    assert (job["created"], job["updated"]) == (0, 0)
    for deal in (theirs, mine):
        got = api.get(f"/deals/{deal['id']}", user=owner, org=owner.org_id).get_json()
        assert got["amount"] == deal["amount"]


def test_a_contact_in_the_trash_is_no_duplicate_for_a_contacts_import(api: ApiClient) -> None:
    owner = api.register()
    trashed = api.contact(owner, name="Gone", email="gone@example.com")
    assert api.delete(f"/contacts/{trashed['id']}", user=owner, org=owner.org_id).status_code == 204
    job = _import(api, owner, _csv(["name", "email"], [["Back", "GONE@example.com"]]))
    assert (job["created"], job["skipped"]) == (1, 0), job
    r = api.get("/contacts", user=owner, org=owner.org_id, query={"search": "gone@"})
    assert [c["name"] for c in r.get_json()["items"]] == ["Back"]
