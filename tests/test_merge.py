"""Duplicate contacts over HTTP: GET /contacts/{id}/duplicates finds them (e-mail, phone
digits, similar name), POST /contacts/{id}/merge merges them in one transaction."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, insert, select, text

from crm_domain.db import Database
from crm_domain.models import Contact
from crm_domain.services.records import duplicates, merge

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


def test_duplicates_by_email_phone_and_name_with_reasons_and_scores(
    api: ApiClient, db: Database
) -> None:
    """Without pg_trgm (the embedded build) a similar name is the same name ignoring case."""
    trigrams = _has_similarity(db)
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
    similar_ones = {similar["id"]} if trigrams else set()
    assert set(by_id) == {same_email["id"], same_phone["id"], everything["id"], *similar_ones}
    assert found[0]["contact"] == everything
    assert sorted(by_id[everything["id"]]["reasons"]) == ["email", "name", "phone"]
    assert by_id[same_email["id"]] == {"contact": same_email, "score": 1.0, "reasons": ["email"]}
    assert (
        by_id[same_phone["id"]]["reasons"] == ["phone"] and by_id[same_phone["id"]]["score"] == 0.9
    )
    if trigrams:
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


def _has_similarity(db: Database) -> bool:
    with db.reads() as s:
        return s.scalar(text("SELECT to_regprocedure('contact_name_similar(text, text)')"))


def test_similar_names_are_word_similarity_at_the_threshold_best_then_newest_first(
    api: ApiClient, db: Database
) -> None:
    """Every name at pg_trgm's word similarity threshold or above and none below; the score
    is that similarity; best first, the newest first among equals; at most 20."""
    if not _has_similarity(db):
        pytest.skip("this PostgreSQL has no pg_trgm (the embedded build)")
    user = api.register()
    me = api.contact(user, name="Katherine Johnson", email=None, phone=None)
    names = ["Katherine Jonson", "Katherin Johnsen", "Kate Johnson", "Catherine Johnston"]
    names += ["K. Johnson", "Katherine", "Johnson", "Grace Hopper"]
    made = {api.contact(user, name=n, email=None, phone=None)["id"]: n for n in names}
    same = [api.contact(user, name="Katherine Johnson", email=None, phone=None)["id"]]
    same += [
        api.contact(user, name="katherine johnson", email=None, phone=None)["id"] for _ in range(20)
    ]

    with db.reads() as s:
        threshold = float(s.scalar(text("SHOW pg_trgm.word_similarity_threshold")))
        similarity = {
            i: s.scalar(
                select(func.word_similarity("katherine johnson", Contact.search_text)).where(
                    Contact.id == i
                )
            )
            for i in made
        }
    expected = {i: round(v, 3) for i, v in similarity.items() if v >= threshold}
    assert 0 < len(expected) < len(made)  # some in, some out: the threshold is tested

    found = _duplicates(api, user, me["id"])
    by_id = {d["contact"]["id"]: d for d in found}
    # 20 with the same name (score 1) fill the name reason: the newest 20; none of the rest.
    assert [d["contact"]["id"] for d in found] == sorted(same, reverse=True)[:20]
    assert all(d["score"] == 1.0 and d["reasons"] == ["name"] for d in found)
    assert same[0] not in by_id

    for i in same[:-1]:  # the same name is gone, the similar ones remain
        assert api.delete(f"/contacts/{i}", user=user, org=user.org_id).status_code == 204
    found = _duplicates(api, user, me["id"])
    best_first = sorted(expected, key=lambda i: (-expected[i], -i))
    assert [d["contact"]["id"] for d in found] == [same[-1], *best_first]
    assert {d["contact"]["id"]: d["score"] for d in found[1:]} == expected


def test_similar_names_are_read_from_the_trigram_index(api: ApiClient, db: Database) -> None:
    """Even where PostgreSQL's statistics say many contacts share the name (2,000 of 10,000):
    without `contact_name_similar`'s cost, it weighs a sequential scan cheaper."""
    if not _has_similarity(db):
        pytest.skip("this PostgreSQL has no pg_trgm (the embedded build)")
    user = api.register()
    contact = {"organization_id": user.org_id, "owner_id": user.id}
    rows = [{**contact, "name": "Common Name"}] * 2000
    rows += [{**contact, "name": f"Person {i}"} for i in range(8000)]
    with db.transaction() as s:
        s.execute(insert(Contact), rows)
    with db.transaction() as s:
        s.execute(text("ANALYZE contacts"))
    others = select(Contact).where(Contact.organization_id == user.org_id, Contact.id != 0)
    stmt = duplicates.similar_names_query(others, "common name")
    with db.reads() as s:
        sql = stmt.compile(dialect=s.get_bind().dialect)
        explained = s.connection().exec_driver_sql(f"EXPLAIN {sql}", sql.params)
        plan = "\n".join(explained.scalars())
    assert "Seq Scan" not in plan and "_search_trgm" in plan, plan


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
