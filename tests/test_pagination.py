"""Keyset (cursor) pagination and deep pages."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import insert

from crm_domain.counting import LargeCountCache
from crm_domain.db import Database
from crm_domain.models import Contact, Deal

from .api import ApiClient, User, error_code
from .sql import executed


def walk(api: ApiClient, user: User, path: str, query: dict[str, Any]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    params = dict(query)
    while True:
        r = api.get(path, user=user, org=user.org_id, query=params)
        assert r.status_code == 200, r.get_json()
        body = r.get_json()
        items.extend(body["items"])
        if body["next_cursor"] is None:
            return items
        params = {**query, "cursor": body["next_cursor"]}


@pytest.fixture(scope="module")
def big_org(app) -> tuple[ApiClient, User, Database]:
    """An organization with 1,050 contacts and 240 deals (many sharing an amount and a
    creation time, to exercise the id tie-breaker), inserted directly."""
    api = ApiClient(app.test_client())
    user = api.register(org_name=f"Big {uuid.uuid4().hex[:6]}")
    db: Database = app.extensions["crm_db"]
    base = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    with db.transaction() as s:
        s.execute(
            insert(Contact),
            [
                {"organization_id": user.org_id, "owner_id": user.id, "name": f"Contact {i}"}
                for i in range(1050)
            ],
        )
        contact_id = s.scalars(
            Contact.__table__.select()
            .with_only_columns(Contact.id)
            .where(Contact.organization_id == user.org_id)
            .limit(1)
        ).one()
        s.execute(
            insert(Deal),
            [
                {
                    "organization_id": user.org_id,
                    "owner_id": user.id,
                    "contact_id": contact_id,
                    "title": f"Deal {i}",
                    "amount": Decimal(i % 7) * 100,
                    "currency": "USD",
                    "created_at": base + dt.timedelta(hours=i // 3),
                    "updated_at": base + dt.timedelta(minutes=i % 11),
                }
                for i in range(240)
            ],
        )
    return api, user, db


@pytest.mark.parametrize("order_by", ["created_at", "amount", "updated_at"])
@pytest.mark.parametrize("order", ["asc", "desc"])
def test_cursor_walk_equals_page_walk_for_every_sort(big_org, order_by: str, order: str) -> None:
    api, user, _ = big_org
    query = {"order_by": order_by, "order": order, "page_size": 25}
    pages: list[dict[str, Any]] = []
    for page in range(1, 11):
        r = api.get("/deals", user=user, org=user.org_id, query={**query, "page": page})
        pages.extend(r.get_json()["items"])
    cursor_items = walk(api, user, "/deals", query)
    assert [d["id"] for d in cursor_items] == [d["id"] for d in pages]
    assert len({d["id"] for d in cursor_items}) == 240
    keys = [(Decimal(d["amount"]) if order_by == "amount" else d[order_by], d["id"]) for d in pages]
    assert keys == sorted(keys, reverse=order == "desc")


def test_cursor_with_filters(big_org) -> None:
    api, user, _ = big_org
    query = {"min_amount": "200", "max_amount": "400", "order_by": "amount", "page_size": 7}
    items = walk(api, user, "/deals", query)
    r = api.get("/deals", user=user, org=user.org_id, query={**query, "page_size": 100})
    assert r.get_json()["total"] == len(items)
    assert all(Decimal("200") <= Decimal(d["amount"]) <= Decimal("400") for d in items)


def test_deep_offset_page_matches_cursor_position(big_org) -> None:
    api, user, _ = big_org
    r = api.get("/contacts", user=user, org=user.org_id, query={"page": 52, "page_size": 20})
    body = r.get_json()
    assert body["total"] >= 1050 and body["page"] == 52
    everything = walk(api, user, "/contacts", {"page_size": 100})
    assert [c["id"] for c in body["items"]] == [c["id"] for c in everything[1020:1040]]
    assert [c["id"] for c in everything] == sorted((c["id"] for c in everything), reverse=True)


def test_last_page_has_no_next_cursor(big_org) -> None:
    api, user, _ = big_org
    r = api.get("/deals", user=user, org=user.org_id, query={"page": 3, "page_size": 100})
    body = r.get_json()
    assert len(body["items"]) == 40 and body["next_cursor"] is None
    r = api.get("/deals", user=user, org=user.org_id, query={"page": 2, "page_size": 100})
    assert r.get_json()["next_cursor"] is not None


@pytest.mark.parametrize(
    "cursor", ["garbage", "e30", "eyJvIjoiY3JlYXRlZF9hdDpkZXNjIiwiayI6WzFdfQ", "!!!", "a" * 600]
)
def test_bad_cursor_is_400(big_org, cursor: str) -> None:
    api, user, _ = big_org
    r = api.get("/deals", user=user, org=user.org_id, query={"cursor": cursor})
    assert r.status_code == 400
    assert error_code(r) in {"INVALID_CURSOR", "VALIDATION_ERROR"}


@pytest.mark.parametrize(
    "keys",
    [["1e999999", 1], ["NaN", 1], ["Infinity", 1], ["10.00", 2**70], ["10.00", True], [None, 1]],
)
def test_forged_amount_cursor_is_400_not_500(big_org, keys: list[Any]) -> None:
    import base64
    import json

    api, user, _ = big_org
    raw = json.dumps({"o": "amount:desc", "k": keys}).encode()
    cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    r = api.get(
        "/deals", user=user, org=user.org_id, query={"cursor": cursor, "order_by": "amount"}
    )
    assert r.status_code == 400 and error_code(r) == "INVALID_CURSOR"


def test_cursor_of_another_sort_is_refused(big_org) -> None:
    api, user, _ = big_org
    r = api.get("/deals", user=user, org=user.org_id, query={"page_size": 5})
    cursor = r.get_json()["next_cursor"]
    r = api.get(
        "/deals", user=user, org=user.org_id, query={"cursor": cursor, "order_by": "amount"}
    )
    assert r.status_code == 400 and error_code(r) == "INVALID_CURSOR"


def test_cursor_does_not_cross_tenants(big_org, api: ApiClient) -> None:
    """A cursor is only a position: used in another organization it lists that org's rows."""
    big_api, user, _ = big_org
    cursor = big_api.get(
        "/contacts", user=user, org=user.org_id, query={"page_size": 1}
    ).get_json()["next_cursor"]
    other = api.register()
    api.contact(other)
    r = api.get("/contacts", user=other, org=other.org_id, query={"cursor": cursor})
    assert r.status_code == 200
    assert all(c["organization_id"] == other.org_id for c in r.get_json()["items"])


@pytest.mark.parametrize("path", ["/contacts", "/deals", "/tasks", "/reports", "/notifications"])
def test_every_list_offers_cursors(big_org, path: str) -> None:
    api, user, _ = big_org
    r = api.get(path, user=user, org=user.org_id, query={"page_size": 1})
    assert r.status_code == 200 and "next_cursor" in r.get_json()


def test_a_shallow_page_and_its_total_are_one_statement(big_org) -> None:
    """The page and the list's total come from one scan (count(*) OVER () over the list)."""
    api, user, db = big_org
    everything = walk(api, user, "/contacts", {"page_size": 100, "search": "contact 10"})
    assert len(everything) == 61  # "Contact 10", "Contact 100".."109", "Contact 1000".."1049"
    with executed(db.engine, "FROM contacts") as seen:
        r = api.get(
            "/contacts",
            user=user,
            org=user.org_id,
            query={"search": "contact 10", "page": 2, "page_size": 20},
        )
    body = r.get_json()
    assert body["total"] == 61 and body["pages"] == 4
    assert [c["id"] for c in body["items"]] == [c["id"] for c in everything[20:40]]
    assert len(seen) == 1, seen


@pytest.mark.parametrize("page", [4, 5, 40])
def test_pages_at_and_past_the_end_still_carry_the_total(big_org, page: int) -> None:
    api, user, _ = big_org
    query = {"search": "contact 10", "page": page, "page_size": 20}
    body = api.get("/contacts", user=user, org=user.org_id, query=query).get_json()
    assert body["total"] == 61
    assert len(body["items"]) == (1 if page == 4 else 0)
    assert body["next_cursor"] is None


def test_an_empty_list_is_a_zero_total(big_org) -> None:
    api, user, _ = big_org
    query = {"search": "no such contact"}
    body = api.get("/contacts", user=user, org=user.org_id, query=query).get_json()
    assert body["total"] == 0 and body["items"] == [] and body["pages"] == 0


def test_a_small_list_that_grew_large_is_counted_again(
    api: ApiClient, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A list seen small gets its total from its page's statement; once that total passes
    the exact limit, the list is counted (and from then on treated as large)."""
    cache = LargeCountCache(None, exact_below=50)
    monkeypatch.setattr(db, "count_cache", cache)
    user = api.register()
    with db.transaction() as s:
        s.execute(
            insert(Contact),
            [
                {"organization_id": user.org_id, "owner_id": user.id, "name": f"C{i}"}
                for i in range(45)
            ],
        )
    query = {"page": 2, "page_size": 10}
    assert api.get("/contacts", user=user, org=user.org_id, query=query).get_json()["total"] == 45
    with db.transaction() as s:
        s.execute(
            insert(Contact),
            [
                {"organization_id": user.org_id, "owner_id": user.id, "name": f"D{i}"}
                for i in range(10)
            ],
        )
    with executed(db.engine, "FROM contacts") as seen:
        body = api.get("/contacts", user=user, org=user.org_id, query=query).get_json()
    assert body["total"] == 55 and len(seen) >= 2  # the page's statement, then a count
    everything = walk(api, user, "/contacts", {"page_size": 100})
    assert [c["id"] for c in body["items"]] == [c["id"] for c in everything[10:20]]
    with executed(db.engine, "FROM contacts") as seen:
        body = api.get("/contacts", user=user, org=user.org_id, query=query).get_json()
    assert body["total"] == 55 and "OVER ()" not in seen[0].sql  # now counted, then paged


def test_a_page_of_a_mid_sized_list_carries_a_count_of_its_keys(
    api: ApiClient, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above WINDOW_BELOW rows a list seen small gets its total from a count of its keys in
    the page's statement (not `count(*) OVER ()`): still one statement, and exact with the
    trash, the list's filters and custom-field filters."""
    from crm_domain import pagination

    from .test_custom_fields import define

    monkeypatch.setattr(db, "count_cache", LargeCountCache(None, exact_below=50))
    monkeypatch.setattr(pagination, "WINDOW_BELOW", 5)
    user = api.register()
    options = [{"value": v, "label": v.title()} for v in ("gold", "silver")]
    define(api, user, key="tier", type="single_select", options=options)
    contact_id = api.contact(user)["id"]
    deals = [
        api.deal(
            user,
            contact_id=contact_id,
            title=f"D{i}",
            custom_fields={"tier": "gold" if i % 3 else "silver"},
        )
        for i in range(24)
    ]
    for deal in deals[:4]:  # to the trash: D0 (silver), D1, D2 (gold), D3 (silver)
        assert api.delete(f"/deals/{deal['id']}", user=user, org=user.org_id).status_code == 204

    for query, expected in (({}, 20), ({"cf.tier": "gold"}, 14), ({"stage": "qualification"}, 20)):
        query = {**query, "page": 2, "page_size": 3}
        listed = walk(api, user, "/deals", {k: v for k, v in query.items() if k != "page"})
        assert len(listed) == expected
        first = api.get("/deals", user=user, org=user.org_id, query=query).get_json()
        with executed(db.engine, "FROM deals") as seen:
            body = api.get("/deals", user=user, org=user.org_id, query=query).get_json()
        assert body == first and body["total"] == expected and body["pages"] == -(-expected // 3)
        assert [d["id"] for d in body["items"]] == [d["id"] for d in listed[3:6]]
        assert len(seen) == 1 and "OVER ()" not in seen[0].sql, seen
        assert seen[0].sql.count("deals.deleted_at IS NULL") == 2, seen[0].sql
        with executed(db.engine, "FROM deals") as again:
            api.get("/deals", user=user, org=user.org_id, query=query)
        assert [e.sql for e in again] == [seen[0].sql] and again[0].cached  # compiled once
