"""Custom fields over HTTP: definitions (roles, limits, immutability, options), values on
contacts, deals and tasks (types, required, merge, ETags, hiding on deletion and the purge),
list filters and sorts with cursors, webhook changes and the deal timeline."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import select, update

from crm_domain.db import Database
from crm_domain.models import CustomFieldDefinition, Deal, OutboxEvent

from .api import ApiClient, User, error_code

SEGMENT_OPTIONS = [
    {"value": "smb", "label": "Small business"},
    {"value": "enterprise", "label": "Enterprise"},
    {"value": "public", "label": "Public sector"},
]


def define(api: ApiClient, user: User, **fields: Any) -> dict[str, Any]:
    body = {"entity": "deal", "label": fields.get("key", "Field").title(), **fields}
    r = api.post("/custom-fields", user=user, org=user.org_id, json=body)
    assert r.status_code == 201, r.get_json()
    return r.get_json()


def errors(response: Any) -> dict[str, Any]:
    assert response.status_code == 400, response.get_json()
    assert error_code(response) == "VALIDATION_ERROR"
    found = response.get_json()["error"]["details"]["errors"]
    # The request schema's errors are under their location; the definitions' checks are not.
    return found.get("json") or found.get("query") or found


def patch_deal(api: ApiClient, user: User, deal_id: int, values: dict[str, Any]) -> Any:
    return api.patch(
        f"/deals/{deal_id}", user=user, org=user.org_id, json={"custom_fields": values}
    )


def listed(api: ApiClient, user: User, path: str = "/deals", **query: Any) -> list[int]:
    r = api.get(path, user=user, org=user.org_id, query=query)
    assert r.status_code == 200, r.get_json()
    return [item["id"] for item in r.get_json()["items"]]


# --- definitions -----------------------------------------------------------------------------


def test_definition_crud_and_member_reads(api: ApiClient) -> None:
    team = api.team()
    owner, member = team["owner"], team["member"]
    made = define(api, owner, key="segment", type="single_select", options=SEGMENT_OPTIONS)
    assert made["entity"] == "deal" and made["required"] is False
    assert made["options"][0] == {"value": "smb", "label": "Small business", "archived": False}
    define(api, owner, entity="contact", key="segment", type="text")  # same key, other entity

    r = api.get("/custom-fields", user=member, org=owner.org_id, query={"entity": "deal"})
    assert [d["key"] for d in r.get_json()["items"]] == ["segment"]
    assert api.get("/custom-fields", user=member, org=owner.org_id).get_json()["total"] == 2
    r = api.get(f"/custom-fields/{made['id']}", user=member, org=owner.org_id)
    assert r.get_json()["key"] == "segment"

    for user in (member, team["manager"]):
        r = api.post(
            "/custom-fields",
            user=user,
            org=owner.org_id,
            json={"entity": "deal", "key": "x", "label": "X", "type": "text"},
        )
        assert r.status_code == 403, r.get_json()
        r = api.patch(
            f"/custom-fields/{made['id']}", user=user, org=owner.org_id, json={"label": "Z"}
        )
        assert r.status_code == 403
        assert (
            api.delete(f"/custom-fields/{made['id']}", user=user, org=owner.org_id).status_code
            == 403
        )

    r = api.patch(
        f"/custom-fields/{made['id']}",
        user=team["admin"],
        org=owner.org_id,
        json={"label": "Market", "description": "Where", "required": True},
    )
    assert r.status_code == 200, r.get_json()
    assert (r.get_json()["label"], r.get_json()["required"]) == ("Market", True)


@pytest.mark.parametrize(
    "body, field",
    [
        ({"key": "k" * 41}, "key"),
        ({"key": "Budget"}, "key"),
        ({"key": "1st"}, "key"),
        ({"type": "money"}, "type"),
        ({"entity": "invoice"}, "entity"),
        ({"label": ""}, "label"),
        ({"type": "text", "options": SEGMENT_OPTIONS}, "options"),
        ({"type": "single_select", "options": [{"value": "a,b", "label": "A"}]}, "options"),
        (
            {"type": "single_select", "options": [{"value": "a", "label": "A"}] * 2},
            "options",
        ),
    ],
)
def test_bad_definitions_are_400(api: ApiClient, body: dict[str, Any], field: str) -> None:
    owner = api.register()
    full = {"entity": "deal", "key": "budget", "label": "Budget", "type": "number", **body}
    r = api.post("/custom-fields", user=owner, org=owner.org_id, json=full)
    assert field in errors(r)


def test_key_is_unique_per_entity_and_key_type_entity_never_change(api: ApiClient) -> None:
    owner = api.register()
    made = define(api, owner, key="budget", type="number")
    r = api.post(
        "/custom-fields",
        user=owner,
        org=owner.org_id,
        json={"entity": "deal", "key": "budget", "label": "Again", "type": "text"},
    )
    assert r.status_code == 409 and error_code(r) == "CUSTOM_FIELD_KEY_TAKEN"
    for change in ({"type": "text"}, {"key": "other"}, {"entity": "contact"}):
        r = api.patch(f"/custom-fields/{made['id']}", user=owner, org=owner.org_id, json=change)
        assert list(errors(r)) == list(change)


def test_at_most_100_definitions_per_entity(api: ApiClient) -> None:
    owner = api.register()
    for i in range(100):
        define(api, owner, key=f"f{i}", type="boolean")
    r = api.post(
        "/custom-fields",
        user=owner,
        org=owner.org_id,
        json={"entity": "deal", "key": "f100", "label": "One too many", "type": "boolean"},
    )
    assert r.status_code == 409 and error_code(r) == "CUSTOM_FIELD_LIMIT_REACHED"
    define(api, owner, entity="task", key="f100", type="boolean")  # another entity's own 100
    first = api.get("/custom-fields", user=owner, org=owner.org_id).get_json()["items"][0]
    api.delete(f"/custom-fields/{first['id']}", user=owner, org=owner.org_id)
    define(api, owner, key="f100", type="boolean")  # room again


def test_options_are_renamed_and_archived_never_removed(api: ApiClient) -> None:
    owner = api.register()
    made = define(api, owner, key="segment", type="single_select", options=SEGMENT_OPTIONS)
    deal = api.deal(owner, custom_fields={"segment": "public"})
    r = api.patch(
        f"/custom-fields/{made['id']}",
        user=owner,
        org=owner.org_id,
        json={"options": SEGMENT_OPTIONS[:2]},
    )
    assert "options" in errors(r)
    renamed = [
        {"value": "smb", "label": "SMB"},
        {"value": "enterprise", "label": "Enterprise"},
        {"value": "public", "label": "Public", "archived": True},
        {"value": "partner", "label": "Partner"},
    ]
    r = api.patch(
        f"/custom-fields/{made['id']}", user=owner, org=owner.org_id, json={"options": renamed}
    )
    assert r.status_code == 200, r.get_json()
    assert [o["archived"] for o in r.get_json()["options"]] == [False, False, True, False]
    # The record keeps its archived option, may write it again; new writes refuse it.
    assert api.get(f"/deals/{deal['id']}", user=owner, org=owner.org_id).get_json()[
        "custom_fields"
    ] == {"segment": "public"}
    assert patch_deal(api, owner, deal["id"], {"segment": "public"}).status_code == 200
    other = api.deal(owner)
    assert (
        "archived"
        in errors(patch_deal(api, owner, other["id"], {"segment": "public"}))["custom_fields"][
            "segment"
        ][0]
    )
    assert patch_deal(api, owner, other["id"], {"segment": "partner"}).status_code == 200


# --- values ------------------------------------------------------------------------------------

TYPES_GOOD_BAD: list[tuple[str, dict[str, Any], list[tuple[Any, Any]], list[Any]]] = [
    ("text", {}, [("  hello  ", "hello"), ("x" * 1000, "x" * 1000)], ["x" * 1001, 5, True]),
    (
        "number",
        {},
        [("12.50", "12.5"), ("-3", "-3"), ("1000", "1000"), ("0.000", "0")],
        [12.5, "1e5", "abc", "1" * 16, True],
    ),
    ("boolean", {}, [(True, True), (False, False)], ["true", 1, 0]),
    ("date", {}, [("2026-02-28", "2026-02-28")], ["2026-02-30", "28/02/2026", 20260228]),
    (
        "datetime",
        {},
        [
            ("2026-12-07T10:30:00+02:00", "2026-12-07T08:30:00+00:00"),
            ("2026-12-07T10:30:00Z", "2026-12-07T10:30:00+00:00"),
        ],
        ["2026-12-07T10:30:00", "yesterday", 1],
    ),
    (
        "single_select",
        {"options": SEGMENT_OPTIONS},
        [("smb", "smb")],
        ["SMB", ["smb"], "nope"],
    ),
    (
        "multi_select",
        {"options": SEGMENT_OPTIONS},
        [(["smb", "public", "smb"], ["smb", "public"])],
        ["smb", ["nope"], [1]],
    ),
    ("url", {}, [("https://example.com/a?b=c", "https://example.com/a?b=c")], ["ftp://x", "nope"]),
    ("email", {}, [("a@example.com", "a@example.com")], ["not-an-email", 3]),
]


@pytest.mark.parametrize(
    "kind, extra, good, bad", TYPES_GOOD_BAD, ids=[t[0] for t in TYPES_GOOD_BAD]
)
def test_values_are_validated_by_type(
    api: ApiClient, kind: str, extra: dict[str, Any], good: list[Any], bad: list[Any]
) -> None:
    owner = api.register()
    define(api, owner, key="f", type=kind, **extra)
    deal = api.deal(owner)
    for sent, stored in good:
        r = patch_deal(api, owner, deal["id"], {"f": sent})
        assert r.status_code == 200, (sent, r.get_json())
        assert r.get_json()["custom_fields"] == {"f": stored}
    for sent in bad:
        assert "f" in errors(patch_deal(api, owner, deal["id"], {"f": sent}))["custom_fields"], sent


def test_user_field_takes_members_only(api: ApiClient) -> None:
    team = api.team()
    owner = team["owner"]
    stranger = api.register()
    define(api, owner, key="rep", type="user")
    deal = api.deal(owner)
    assert patch_deal(api, owner, deal["id"], {"rep": team["member"].id}).status_code == 200
    for bad in (stranger.id, 2**31 - 1, "1", True):
        assert "rep" in errors(patch_deal(api, owner, deal["id"], {"rep": bad}))["custom_fields"]


def test_every_answer_shows_every_live_key(api: ApiClient) -> None:
    owner = api.register()
    define(api, owner, key="budget", type="number")
    define(api, owner, key="won_on", type="date")
    made = api.deal(owner, custom_fields={"budget": "5"})
    expected = {"budget": "5", "won_on": None}
    assert made["custom_fields"] == expected
    assert (
        api.get(f"/deals/{made['id']}", user=owner, org=owner.org_id).get_json()["custom_fields"]
        == expected
    )
    items = api.get("/deals", user=owner, org=owner.org_id).get_json()["items"]
    assert items[0]["custom_fields"] == expected
    r = api.patch(f"/deals/{made['id']}", user=owner, org=owner.org_id, json={"title": "T"})
    assert r.get_json()["custom_fields"] == expected
    # Contacts and tasks have their own definitions (none here): an empty object.
    contact = api.contact(owner)
    assert contact["custom_fields"] == {}


def test_unknown_keys_refused_each_problem_by_key(api: ApiClient) -> None:
    owner = api.register()
    define(api, owner, key="budget", type="number")
    define(api, owner, entity="contact", key="tier", type="text")
    r = api.post(
        "/deals",
        user=owner,
        org=owner.org_id,
        json={
            "contact_id": api.contact(owner)["id"],
            "title": "T",
            "custom_fields": {"budget": "lots", "tier": "gold", "nope": 1},
        },
    )
    assert set(errors(r)["custom_fields"]) == {"budget", "tier", "nope"}
    r = api.post("/deals", user=owner, org=owner.org_id, json={"title": "T", "custom_fields": []})
    assert "custom_fields" in errors(r)


def test_required_on_create_and_when_cleared(api: ApiClient) -> None:
    owner = api.register()
    define(api, owner, key="source", type="text", required=True)
    define(api, owner, key="note", type="text")
    contact = api.contact(owner)
    r = api.post(
        "/deals", user=owner, org=owner.org_id, json={"contact_id": contact["id"], "title": "T"}
    )
    assert errors(r)["custom_fields"] == {"source": ["Missing data for required field."]}
    deal = api.deal(owner, contact_id=contact["id"], custom_fields={"source": "web"})
    assert patch_deal(api, owner, deal["id"], {"note": "x"}).status_code == 200
    for clearing in (None, "", "   "):
        assert (
            "source"
            in errors(patch_deal(api, owner, deal["id"], {"source": clearing}))["custom_fields"]
        )


def test_patch_merges_key_by_key_and_bumps_the_etag(api: ApiClient) -> None:
    owner = api.register()
    define(api, owner, key="budget", type="number")
    define(api, owner, key="note", type="text")
    deal = api.deal(owner, custom_fields={"budget": "10", "note": "first"})
    etag = api.get(f"/deals/{deal['id']}", user=owner, org=owner.org_id).headers["ETag"]
    r = patch_deal(api, owner, deal["id"], {"budget": "11"})
    assert r.get_json()["custom_fields"] == {"budget": "11", "note": "first"}
    assert r.headers["ETag"] != etag
    r = api.patch(
        f"/deals/{deal['id']}",
        user=owner,
        org=owner.org_id,
        json={"custom_fields": {"note": None}},
        headers={"If-Match": etag},
    )
    assert r.status_code == 412  # the old tag no longer matches
    r = patch_deal(api, owner, deal["id"], {"note": None})
    assert r.get_json()["custom_fields"] == {"budget": "11", "note": None}
    with_etag = api.get(f"/deals/{deal['id']}", user=owner, org=owner.org_id)
    assert with_etag.headers["ETag"] == r.headers["ETag"]


def test_contacts_and_tasks_carry_custom_fields(api: ApiClient) -> None:
    owner = api.register()
    define(api, owner, entity="contact", key="tier", type="single_select", options=SEGMENT_OPTIONS)
    define(api, owner, entity="task", key="effort", type="number")
    contact = api.contact(owner, custom_fields={"tier": "smb"})
    assert contact["custom_fields"] == {"tier": "smb"}
    r = api.patch(
        f"/contacts/{contact['id']}",
        user=owner,
        org=owner.org_id,
        json={"custom_fields": {"tier": "enterprise"}},
    )
    assert r.get_json()["custom_fields"] == {"tier": "enterprise"}
    deal = api.deal(owner, contact_id=contact["id"])
    task = api.task(owner, deal["id"], custom_fields={"effort": "2.5"})
    assert task["custom_fields"] == {"effort": "2.5"}
    r = api.patch(
        f"/tasks/{task['id']}",
        user=owner,
        org=owner.org_id,
        json={"custom_fields": {"effort": "x"}},
    )
    assert "effort" in errors(r)["custom_fields"]
    assert listed(api, owner, "/tasks", **{"cf.effort.gte": "2"}) == [task["id"]]
    assert listed(api, owner, "/contacts", **{"cf.tier": "enterprise"}) == [contact["id"]]


def test_member_rules_unchanged(api: ApiClient) -> None:
    team = api.team()
    define(api, team["owner"], key="note", type="text")
    deal = api.deal(team["owner"])
    r = patch_deal(api, team["member"], deal["id"], {"note": "mine now"})
    assert r.status_code == 403


# --- deletion hides at once; the worker purges ---------------------------------------------------


def test_deleting_a_definition_hides_values_then_purge_frees_the_key(
    api: ApiClient, db: Database
) -> None:
    from crm_worker.tasks.custom_fields import run_purge

    owner = api.register()
    made = define(api, owner, key="budget", type="number")
    define(api, owner, key="note", type="text")
    deals = [api.deal(owner, custom_fields={"budget": str(i), "note": "n"}) for i in range(5)]
    r = api.delete(f"/custom-fields/{made['id']}", user=owner, org=owner.org_id)
    assert r.status_code == 204
    got = api.get(f"/deals/{deals[0]['id']}", user=owner, org=owner.org_id).get_json()
    assert got["custom_fields"] == {"note": "n"}
    assert api.get(f"/custom-fields/{made['id']}", user=owner, org=owner.org_id).status_code == 404
    # A write naming the deleted key is refused, others keep working.
    assert (
        "budget" in errors(patch_deal(api, owner, deals[0]["id"], {"budget": "1"}))["custom_fields"]
    )
    r = api.get("/deals", user=owner, org=owner.org_id, query={"cf.budget": "1"})
    assert "cf.budget" in errors(r)
    # The key stays taken until the values are purged.
    body = {"entity": "deal", "key": "budget", "label": "Budget", "type": "text"}
    r = api.post("/custom-fields", user=owner, org=owner.org_id, json=body)
    assert r.status_code == 409 and error_code(r) == "CUSTOM_FIELD_KEY_TAKEN"
    with db.transaction() as s:
        stored = s.scalars(select(Deal.custom_fields).where(Deal.organization_id == owner.org_id))
        assert all("budget" in v for v in stored)

    # Out of time before its first batch: nothing is dropped yet, another run finishes it.
    assert run_purge(db, made["id"], batch=2, budget=-1.0) is False
    with db.transaction() as s:
        assert s.get(CustomFieldDefinition, made["id"]) is not None
    assert run_purge(db, made["id"], batch=2) is True
    with db.transaction() as s:
        stored = list(
            s.scalars(select(Deal.custom_fields).where(Deal.organization_id == owner.org_id))
        )
        assert stored == [{"note": "n"}] * 5
        assert s.get(CustomFieldDefinition, made["id"]) is None
    r = api.post("/custom-fields", user=owner, org=owner.org_id, json=body)
    assert r.status_code == 201, r.get_json()
    assert api.get(f"/deals/{deals[0]['id']}", user=owner, org=owner.org_id).get_json()[
        "custom_fields"
    ] == {"note": "n", "budget": None}


def test_deletion_asks_the_worker_through_the_outbox(api: ApiClient, db: Database) -> None:
    """The drain's run consumer asks for one purge per deleted definition."""
    from crm_worker.consumers import CustomFieldPurges
    from crm_worker.dispatch import Dispatcher

    owner = api.register()
    made = define(api, owner, key="budget", type="number")
    api.delete(f"/custom-fields/{made['id']}", user=owner, org=owner.org_id)
    deleted = (OutboxEvent.organization_id == owner.org_id) & (
        OutboxEvent.topic == "custom_field.deleted"
    )
    with db.transaction() as s:
        assert list(s.scalars(select(OutboxEvent.payload).where(deleted))) == [
            {"definition_id": made["id"]}
        ]
        # Delivered in-process already (no handler there): as the drain would find it.
        s.execute(update(OutboxEvent).where(deleted).values(delivered_at=None, attempts=0))
    asked: list[int] = []
    Dispatcher().register(lambda: CustomFieldPurges(asked.append)).deliver(db)
    assert asked == [made["id"]]


# --- lists ---------------------------------------------------------------------------------------


@pytest.fixture
def catalogue(api: ApiClient) -> tuple[User, dict[str, int]]:
    """Deals with a select, a multi-select, a number, a date, a text and a boolean field."""
    owner = api.register()
    define(api, owner, key="segment", type="single_select", options=SEGMENT_OPTIONS)
    define(api, owner, key="tags", type="multi_select", options=SEGMENT_OPTIONS)
    define(api, owner, key="budget", type="number")
    define(api, owner, key="close_on", type="date")
    define(api, owner, key="note", type="text")
    define(api, owner, key="hot", type="boolean")
    rows = {
        "a": {"segment": "smb", "tags": ["smb"], "budget": "5", "close_on": "2027-01-01"},
        "b": {"segment": "enterprise", "tags": ["enterprise", "public"], "budget": "50"},
        "c": {"segment": "public", "budget": "500", "note": "x", "hot": True},
        "d": {"close_on": "2027-06-01", "hot": False},
    }
    ids = {name: api.deal(owner, title=name, custom_fields=cf)["id"] for name, cf in rows.items()}
    return owner, ids


def test_filters(api: ApiClient, catalogue: tuple[User, dict[str, int]]) -> None:
    owner, ids = catalogue
    by = {v: k for k, v in ids.items()}

    def names(**query: Any) -> set[str]:
        return {by[i] for i in listed(api, owner, **query)}

    assert names(**{"cf.segment": "smb"}) == {"a"}
    assert names(**{"cf.segment": "smb,public"}) == {"a", "c"}
    assert names(**{"cf.tags": "public"}) == {"b"}
    assert names(**{"cf.tags": "smb,public"}) == {"a", "b"}
    assert names(**{"cf.budget": "50.00"}) == {"b"}
    assert names(**{"cf.budget.gte": "50"}) == {"b", "c"}
    assert names(**{"cf.budget.gte": "6", "cf.budget.lte": "499.99"}) == {"b"}
    assert names(**{"cf.close_on.lte": "2027-03-01"}) == {"a"}
    assert names(**{"cf.note": "x"}) == {"c"}
    assert names(**{"cf.hot": "false"}) == {"d"}
    assert names(**{"cf.budget.empty": "true"}) == {"d"}
    assert names(**{"cf.budget.empty": "false"}) == {"a", "b", "c"}
    assert names(**{"cf.segment": "smb,enterprise", "min_amount": "1"}) == {"a", "b"}
    assert names(**{"cf.segment": "smb", "status": "won"}) == set()


@pytest.mark.parametrize(
    "query",
    [
        {"cf.nope": "1"},
        {"cf.note.gte": "a"},
        {"cf.segment.lte": "smb"},
        {"cf.segment": "gold"},
        {"cf.budget": "lots"},
        {"cf.budget.gte": "lots"},
        {"cf.close_on.gte": "soon"},
        {"cf.hot": "yes"},
        {"cf.budget.empty": "maybe"},
        {"cf.budget.between": "1"},
        {"sort": "cf.nope"},
        {"sort": "cf.tags"},
        {"sort": "budget"},
    ],
)
def test_bad_filters_are_400(
    api: ApiClient, catalogue: tuple[User, dict[str, int]], query: dict[str, str]
) -> None:
    owner, _ = catalogue
    r = api.get("/deals", user=owner, org=owner.org_id, query=query)
    assert set(errors(r)) == set(query), r.get_json()


def test_sort_puts_unset_last_both_ways(
    api: ApiClient, catalogue: tuple[User, dict[str, int]]
) -> None:
    owner, ids = catalogue
    by = {v: k for k, v in ids.items()}
    assert [by[i] for i in listed(api, owner, sort="cf.budget")] == ["a", "b", "c", "d"]
    assert [by[i] for i in listed(api, owner, sort="-cf.budget")] == ["c", "b", "a", "d"]
    assert [by[i] for i in listed(api, owner, sort="cf.close_on")][:2] == ["a", "d"]
    assert [by[i] for i in listed(api, owner, sort="-cf.segment")][:3] == ["a", "c", "b"]
    assert [by[i] for i in listed(api, owner, sort="cf.hot")][:2] == ["d", "c"]


@pytest.mark.parametrize("sort", ["cf.score", "-cf.score"])
def test_cursor_pages_over_a_custom_sort_skip_and_repeat_nothing(api: ApiClient, sort: str) -> None:
    owner = api.register()
    define(api, owner, key="score", type="number")
    contact = api.contact(owner)["id"]
    scores = ["1", "2", "2", "2", None, "3", None, "1.5", "2", None, "10"]
    made = []
    for score in scores:
        values = {} if score is None else {"score": score}
        made.append(api.deal(owner, contact_id=contact, custom_fields=values)["id"])
    seen: list[int] = []
    query: dict[str, Any] = {"sort": sort, "page_size": 3, "cursor": None}
    while True:
        r = api.get(
            "/deals",
            user=owner,
            org=owner.org_id,
            query={k: v for k, v in query.items() if v is not None} | {"page": 1},
        )
        assert r.status_code == 200, r.get_json()
        body = r.get_json()
        seen.extend(item["id"] for item in body["items"])
        if not body["next_cursor"]:
            break
        query["cursor"] = body["next_cursor"]
    assert sorted(seen) == sorted(made) and len(seen) == len(made)
    offsets = listed(api, owner, sort=sort, page_size=100)
    assert seen == offsets
    # Wrong sort for the cursor: refused.
    r = api.get(
        "/deals",
        user=owner,
        org=owner.org_id,
        query={"sort": "cf.other", "cursor": body["next_cursor"] or "x"},
    )
    assert r.status_code == 400


# --- events and timeline -------------------------------------------------------------------------


def test_update_event_carries_old_and_new_and_timeline_records_it(
    api: ApiClient, db: Database
) -> None:
    owner = api.register()
    define(api, owner, key="budget", type="number")
    define(api, owner, key="note", type="text")
    deal = api.deal(owner, custom_fields={"budget": "1"})
    r = patch_deal(api, owner, deal["id"], {"budget": "2", "note": "hi"})
    assert r.status_code == 200
    with db.transaction() as s:
        payload = s.scalars(
            select(OutboxEvent.payload)
            .where(OutboxEvent.organization_id == owner.org_id, OutboxEvent.topic == "deal.updated")
            .order_by(OutboxEvent.id.desc())
        ).first()
        created = s.scalars(
            select(OutboxEvent.payload).where(
                OutboxEvent.organization_id == owner.org_id, OutboxEvent.topic == "deal.created"
            )
        ).one()
    assert created["custom_fields"] == {"budget": "1", "note": None}
    assert payload["custom_fields"] == {"budget": "2", "note": "hi"}
    assert payload["changes"] == {
        "custom_fields.budget": {"old": "1", "new": "2"},
        "custom_fields.note": {"old": None, "new": "hi"},
    }
    r = api.get(f"/deals/{deal['id']}/activities", user=owner, org=owner.org_id)
    entries = [a for a in r.get_json()["items"] if a["type"] == "system"]
    assert entries and entries[0]["payload"] == {
        "custom_fields": {
            "budget": {"old": "1", "new": "2"},
            "note": {"old": None, "new": "hi"},
        }
    }


def test_other_organizations_definitions_do_not_apply(api: ApiClient) -> None:
    owner, other = api.register(), api.register()
    define(api, other, key=f"k{uuid.uuid4().hex[:6]}", type="text")
    define(api, owner, key="mine", type="text")
    deal = api.deal(owner)
    assert deal["custom_fields"] == {"mine": None}
    foreign = api.get("/custom-fields", user=other, org=other.org_id).get_json()["items"][0]
    r = api.get(f"/custom-fields/{foreign['id']}", user=owner, org=owner.org_id)
    assert r.status_code == 404 and error_code(r) == "CUSTOM_FIELD_NOT_FOUND"


# --- CSV export and import -------------------------------------------------------------------


def test_export_has_a_column_per_custom_field_and_takes_the_filters(api: ApiClient) -> None:
    owner = api.register()
    define(api, owner, key="tags", type="multi_select", options=SEGMENT_OPTIONS)
    define(api, owner, key="hot", type="boolean")
    define(api, owner, key="budget", type="number")
    contact = api.contact(owner)["id"]
    api.deal(
        owner, contact_id=contact, title="A", custom_fields={"tags": ["smb", "public"], "hot": True}
    )
    api.deal(owner, contact_id=contact, title="B", custom_fields={"budget": "-3"})
    r = api.get("/deals/export.csv", user=owner, org=owner.org_id, query={"sort": "cf.budget"})
    assert r.status_code == 200, r.get_data(as_text=True)
    lines = r.get_data(as_text=True).splitlines()
    assert lines[0].endswith(",owner_email,tags,hot,budget")
    assert lines[1].split(",")[0] == "B" and lines[1].endswith(",,,'-3")
    assert lines[2].startswith("A,") and lines[2].endswith(',"smb,public",true,')
    r = api.get("/deals/export.csv", user=owner, org=owner.org_id, query={"cf.hot": "true"})
    assert len(r.get_data(as_text=True).splitlines()) == 2
    r = api.get("/deals/export.csv", user=owner, org=owner.org_id, query={"cf.nope": "1"})
    assert "cf.nope" in errors(r)


def test_import_maps_key_columns_with_per_row_errors(api: ApiClient) -> None:
    owner = api.register()
    define(api, owner, entity="contact", key="tier", type="single_select", options=SEGMENT_OPTIONS)
    define(api, owner, entity="contact", key="since", type="date")
    define(api, owner, entity="contact", key="vip", type="boolean")
    content = (
        "name,email,tier,since,vip\r\n"
        "Ann,ann@example.com,smb,2020-01-31,true\r\n"
        "Bob,bob@example.com,gold,2020-02-30,\r\n"
        "Cid,cid@example.com,,,FALSE\r\n"
    )
    r = api.upload(owner, content)
    assert r.status_code == 202, r.get_json()
    job = api.get(f"/imports/{r.get_json()['id']}", user=owner, org=owner.org_id).get_json()
    assert job["status"] == "done", job
    assert {(e["row"], e["field"]) for e in job["errors"]} == {(3, "tier"), (3, "since")}
    shown = {
        c["name"]: c["custom_fields"]
        for c in api.get("/contacts", user=owner, org=owner.org_id).get_json()["items"]
    }
    assert shown == {
        "Ann": {"tier": "smb", "since": "2020-01-31", "vip": True},
        "Cid": {"tier": None, "since": None, "vip": False},
    }
    # On a duplicate with on_duplicate=update, the row's values merge into the contact's.
    r = api.upload(owner, "name,email,vip\r\nAnn,ann@example.com,false\r\n", on_duplicate="update")
    assert r.status_code == 202
    ann = api.get("/contacts", user=owner, org=owner.org_id, query={"search": "ann"}).get_json()
    assert ann["items"][0]["custom_fields"] == {"tier": "smb", "since": "2020-01-31", "vip": False}
    # A column that is neither the kind's nor a custom field's key: 400 at upload.
    r = api.upload(owner, "name,email,nope\r\nX,x@example.com,1\r\n")
    assert r.status_code == 400 and error_code(r) == "CSV_UNKNOWN_COLUMNS"


def test_import_of_deals_carries_custom_fields(api: ApiClient) -> None:
    owner = api.register()
    define(api, owner, key="budget", type="number", required=True)
    contact = api.contact(owner)["id"]
    r = api.upload(
        owner,
        f"title,contact_id,budget\r\nA,{contact},12.50\r\nB,{contact},\r\n",
        kind="deals",
    )
    job = api.get(f"/imports/{r.get_json()['id']}", user=owner, org=owner.org_id).get_json()
    assert [(e["row"], e["field"]) for e in job["errors"]] == [(3, "budget")]
    deals = api.get("/deals", user=owner, org=owner.org_id).get_json()["items"]
    assert [(d["title"], d["custom_fields"]) for d in deals] == [("A", {"budget": "12.5"})]


def test_import_update_of_a_matched_deal_carries_custom_fields(api: ApiClient) -> None:
    """on_duplicate=update: the row's custom field cells merge into the matched deal's, key
    by key (an empty cell keeps the value), as a created deal takes them; two rows of one
    file matching the same deal merge in file order."""
    owner = api.register()
    define(api, owner, key="budget", type="number")
    define(api, owner, key="segment", type="single_select", options=SEGMENT_OPTIONS)
    define(api, owner, key="note", type="text")
    contact = api.contact(owner)["id"]
    kept = api.deal(
        owner,
        contact_id=contact,
        title="Renewal",
        custom_fields={"budget": "10", "segment": "smb", "note": "as it was"},
    )
    content = (
        "title,contact_id,budget,segment,note\r\n"
        f"renewal,{contact},99.5,,\r\n"
        f"RENEWAL,{contact},,enterprise,\r\n"
        f"Fresh,{contact},1,public,new one\r\n"
    )
    r = api.upload(owner, content, kind="deals", on_duplicate="update")
    assert r.status_code == 202, r.get_json()
    job = api.get(f"/imports/{r.get_json()['id']}", user=owner, org=owner.org_id).get_json()
    assert (job["status"], job["created"], job["updated"], job["errors"]) == ("done", 1, 2, [])
    deals = {
        d["id"]: d for d in api.get("/deals", user=owner, org=owner.org_id).get_json()["items"]
    }
    assert deals.pop(kept["id"])["custom_fields"] == {
        "budget": "99.5",
        "segment": "enterprise",
        "note": "as it was",
    }
    assert [d["custom_fields"] for d in deals.values()] == [
        {"budget": "1", "segment": "public", "note": "new one"}
    ]


# --- analytics by select field -----------------------------------------------------------------


def _by_field(api: ApiClient, user: User, key: str) -> dict[str, Any]:
    r = api.get(f"/analytics/deals/by-field/{key}", user=user, org=user.org_id)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def test_analytics_by_select_field_precomputed_and_refreshed(
    api: ApiClient, app: Any, db: Database
) -> None:
    owner = api.register()
    define(api, owner, key="segment", type="single_select", options=SEGMENT_OPTIONS)
    define(api, owner, key="tags", type="multi_select", options=SEGMENT_OPTIONS)
    define(api, owner, key="note", type="text")
    contact = api.contact(owner)["id"]
    a = api.deal(
        owner,
        contact_id=contact,
        amount="100.00",
        currency="EUR",
        custom_fields={"segment": "smb", "tags": ["smb", "public"]},
    )
    api.deal(
        owner, contact_id=contact, amount="50.00", currency="USD", custom_fields={"segment": "smb"}
    )
    api.deal(owner, contact_id=contact, amount="7.00", currency="EUR")
    body = _by_field(api, owner, "segment")
    smb = body["options"][0]
    assert [o["value"] for o in body["options"]] == ["smb", "enterprise", "public"]
    assert smb["count"] == 2
    assert smb["by_status"]["new"] == {"count": 2, "total_amount": "150.00"}
    assert smb["by_currency"]["EUR"]["new"] == {"count": 1, "total_amount": "100.00"}
    assert smb["by_currency"]["USD"]["new"] == {"count": 1, "total_amount": "50.00"}
    assert body["none"]["count"] == 1 and body["options"][1]["count"] == 0
    tags = {o["value"]: o["count"] for o in _by_field(api, owner, "tags")["options"]}
    assert tags == {"smb": 1, "enterprise": 0, "public": 1}
    assert _by_field(api, owner, "tags")["none"]["count"] == 2
    # A deal in the trash is not counted; restored, it is again.
    assert api.delete(f"/deals/{a['id']}", user=owner, org=owner.org_id).status_code == 204
    tags = {o["value"]: o["count"] for o in _by_field(api, owner, "tags")["options"]}
    assert tags == {"smb": 0, "enterprise": 0, "public": 0}
    r = api.post(f"/trash/deal/{a['id']}/restore", user=owner, org=owner.org_id)
    assert r.status_code == 200, r.get_json()
    assert _by_field(api, owner, "tags")["options"][0]["count"] == 1

    # Served from Redis (the refresh stored it), and refreshed after a deal write.
    cache = app.extensions["crm_analytics"]
    assert "by_field:segment" in {
        k.decode() for k in cache.client.hkeys(cache.org_key(owner.org_id))
    }
    r = api.patch(
        f"/deals/{a['id']}",
        user=owner,
        org=owner.org_id,
        json={"status": "won", "custom_fields": {"segment": "enterprise"}},
    )
    assert r.status_code == 200, r.get_json()
    enterprise = _by_field(api, owner, "segment")["options"][1]
    assert enterprise["by_status"]["won"] == {"count": 1, "total_amount": "100.00"}

    for key in ("note", "nope"):
        r = api.get(f"/analytics/deals/by-field/{key}", user=owner, org=owner.org_id)
        assert r.status_code == 404 and error_code(r) == "CUSTOM_FIELD_NOT_FOUND"


def test_analytics_by_select_field_give_each_options_label_as_defined_now(
    api: ApiClient,
) -> None:
    owner = api.register()
    made = define(api, owner, key="segment", type="single_select", options=SEGMENT_OPTIONS)
    api.deal(owner, contact_id=api.contact(owner)["id"], custom_fields={"segment": "smb"})
    body = _by_field(api, owner, "segment")
    assert [(o["value"], o["label"]) for o in body["options"]] == [
        ("smb", "Small business"),
        ("enterprise", "Enterprise"),
        ("public", "Public sector"),
    ]
    assert body["options"][0]["count"] == 1 and "label" not in body["none"]
    # A renamed option shows its new label at once (no refresh: the figures are by value).
    renamed = [{**o, "label": "SMB"} if o["value"] == "smb" else o for o in SEGMENT_OPTIONS]
    r = api.patch(
        f"/custom-fields/{made['id']}", user=owner, org=owner.org_id, json={"options": renamed}
    )
    assert r.status_code == 200, r.get_json()
    body = _by_field(api, owner, "segment")
    assert (body["options"][0]["label"], body["options"][0]["count"]) == ("SMB", 1)


def test_apply_custom_fields_for_other_features(api: ApiClient, db: Database) -> None:
    """The function a merge or a bulk update calls: the same checks and key-by-key merge as a
    PATCH, changes for the events, and `keep_archived` for values copied between records."""
    from crm_domain.context import Actor
    from crm_domain.enums import Role
    from crm_domain.errors import ValidationFailed
    from crm_domain.services.records.custom_fields import apply_custom_fields

    owner = api.register()
    made = define(api, owner, key="segment", type="single_select", options=SEGMENT_OPTIONS)
    define(api, owner, key="note", type="text")
    deal = api.deal(owner, custom_fields={"note": "kept"})
    archived = [o | {"archived": o["value"] == "public"} for o in SEGMENT_OPTIONS]
    r = api.patch(
        f"/custom-fields/{made['id']}", user=owner, org=owner.org_id, json={"options": archived}
    )
    assert r.status_code == 200
    actor = Actor(owner.id, owner.org_id, Role.OWNER)
    with db.transaction() as s:
        record = s.get(Deal, deal["id"])
        with pytest.raises(ValidationFailed) as refused:
            apply_custom_fields(s, actor, "deal", record, {"segment": "public"})
        assert "segment" in refused.value.details["errors"]["custom_fields"]
        changed = apply_custom_fields(
            s, actor, "deal", record, {"segment": "public"}, keep_archived=True
        )
        assert changed == {"custom_fields.segment": (None, "public")}
        assert record.custom_fields == {"note": "kept", "segment": "public"}


def test_merge_fills_and_prefers_custom_fields(api: ApiClient) -> None:
    """POST /contacts/{id}/merge: empty custom fields of the target are filled from the
    merged contacts, `prefer: {"cf.<key>": id}` picks the winner, archived options carry over."""
    owner = api.register()
    made = define(
        api, owner, entity="contact", key="tier", type="single_select", options=SEGMENT_OPTIONS
    )
    define(api, owner, entity="contact", key="since", type="date")
    target = api.contact(owner, email="t@example.com", custom_fields={"tier": "smb"})
    source = api.contact(
        owner, email="s@example.com", custom_fields={"tier": "public", "since": "2020-01-01"}
    )
    archived = [o | {"archived": o["value"] == "public"} for o in SEGMENT_OPTIONS]
    api.patch(
        f"/custom-fields/{made['id']}", user=owner, org=owner.org_id, json={"options": archived}
    )
    r = api.post(
        f"/contacts/{target['id']}/merge",
        user=owner,
        org=owner.org_id,
        json={"merge_ids": [source["id"]], "prefer": {"cf.tier": source["id"]}},
    )
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["custom_fields"] == {"tier": "public", "since": "2020-01-01"}


def test_bulk_update_writes_custom_fields_with_the_same_checks(api: ApiClient) -> None:
    """A bulk action's `changes` carry custom fields through the single PATCH's service; its
    `filter` takes the list's `cf.` filters (and refuses what the list refuses)."""
    owner = api.register()
    define(api, owner, key="segment", type="single_select", options=SEGMENT_OPTIONS)
    define(api, owner, key="note", type="text")
    deals = [api.deal(owner, custom_fields={"note": f"n{i}"})["id"] for i in range(3)]
    body = {
        "entity": "deal",
        "action": "update",
        "ids": deals,
        "changes": {"custom_fields": {"segment": "enterprise"}},
    }
    r = api.post("/bulk-actions", user=owner, org=owner.org_id, json=body)
    assert r.status_code == 202, r.get_json()
    done = api.get(f"/bulk-actions/{r.get_json()['id']}", user=owner, org=owner.org_id).get_json()
    assert (done["status"], done["succeeded"]) == ("done", 3), done
    shown = {
        d["id"]: d["custom_fields"]
        for d in api.get("/deals", user=owner, org=owner.org_id).get_json()["items"]
    }
    assert shown == {d: {"segment": "enterprise", "note": f"n{i}"} for i, d in enumerate(deals)}
    bad = dict(body, changes={"custom_fields": {"segment": "gold"}})
    r = api.post("/bulk-actions", user=owner, org=owner.org_id, json=bad)
    if r.status_code == 202:  # checked per record by the run
        done = api.get(f"/bulk-actions/{r.get_json()['id']}", user=owner, org=owner.org_id)
        assert done.get_json()["failed"] == 3, done.get_json()
    else:
        assert r.status_code == 400, r.get_json()
    smb = api.deal(owner, custom_fields={"segment": "smb"})["id"]
    by_filter = {"entity": "deal", "action": "delete", "filter": {"cf.segment": "smb"}}
    r = api.post("/bulk-actions?dry_run=true", user=owner, org=owner.org_id, json=by_filter)
    assert (r.status_code, r.get_json()["matched"]) == (200, 1), r.get_json()
    r = api.post("/bulk-actions", user=owner, org=owner.org_id, json=by_filter)
    assert r.status_code == 202, r.get_json()
    done = api.get(f"/bulk-actions/{r.get_json()['id']}", user=owner, org=owner.org_id).get_json()
    assert (done["status"], done["succeeded"]) == ("done", 1), done
    assert api.get(f"/deals/{smb}", user=owner, org=owner.org_id).status_code == 404
    assert all(
        api.get(f"/deals/{d}", user=owner, org=owner.org_id).status_code == 200 for d in deals
    )
    for refused in ({"cf.nope": "x"}, {"cf.note.gte": "a"}):
        bad_filter = dict(by_filter, filter=refused)
        r = api.post("/bulk-actions", user=owner, org=owner.org_id, json=bad_filter)
        assert r.status_code == 400, r.get_json()
        assert "filter" in r.get_json()["error"]["details"]["errors"], r.get_json()
