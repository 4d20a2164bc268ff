"""Contacts over HTTP: CRUD, validation, search, ownership rules, ETags and pagination."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import insert, or_, select, text

from crm_domain.db import Database
from crm_domain.models import Contact
from crm_domain.services.records import contacts as contacts_service

from .api import ApiClient, User, error_code

CONTACT_KEYS = {
    "id",
    "organization_id",
    "owner_id",
    "name",
    "email",
    "phone",
    "created_at",
    "updated_at",
    "custom_fields",
}


def _names(body: dict) -> set[str]:
    return {item["name"] for item in body["items"]}


# --- CRUD ------------------------------------------------------------------------------------


def test_create_returns_201_with_full_body(api: ApiClient) -> None:
    user = api.register()
    r = api.post(
        "/contacts",
        user=user,
        org=user.org_id,
        json={"name": "  Jane Roe ", "email": "jane@example.com", "phone": "+1 555 0100"},
    )
    assert r.status_code == 201
    body = r.get_json()
    assert set(body) == CONTACT_KEYS
    assert isinstance(body["id"], int)
    assert body["organization_id"] == user.org_id
    assert body["owner_id"] == user.id
    assert body["name"] == "Jane Roe"
    assert body["email"] == "jane@example.com"
    assert body["phone"] == "+1 555 0100"
    assert body["created_at"] and body["updated_at"]


def test_create_with_name_only(api: ApiClient) -> None:
    user = api.register()
    r = api.post("/contacts", user=user, org=user.org_id, json={"name": "Solo"})
    assert r.status_code == 201
    body = r.get_json()
    assert body["email"] is None
    assert body["phone"] is None


def test_get_patch_delete_flow(api: ApiClient) -> None:
    user = api.register()
    contact = api.contact(user, name="Alice", email="alice@example.com")

    r = api.get(f"/contacts/{contact['id']}", user=user, org=user.org_id)
    assert r.status_code == 200
    assert r.get_json() == contact

    r = api.patch(
        f"/contacts/{contact['id']}",
        user=user,
        org=user.org_id,
        json={"name": "Alice Cooper", "phone": "+7 900"},
    )
    assert r.status_code == 200
    patched = r.get_json()
    assert patched["name"] == "Alice Cooper"
    assert patched["phone"] == "+7 900"
    assert patched["email"] == "alice@example.com"  # untouched
    assert patched["id"] == contact["id"]

    r = api.get(f"/contacts/{contact['id']}", user=user, org=user.org_id)
    assert r.get_json()["name"] == "Alice Cooper"

    r = api.delete(f"/contacts/{contact['id']}", user=user, org=user.org_id)
    assert r.status_code == 204
    assert r.data == b""

    r = api.get(f"/contacts/{contact['id']}", user=user, org=user.org_id)
    assert r.status_code == 404
    assert error_code(r) == "CONTACT_NOT_FOUND"

    r = api.delete(f"/contacts/{contact['id']}", user=user, org=user.org_id)
    assert r.status_code == 404
    assert error_code(r) == "CONTACT_NOT_FOUND"


def test_contact_of_another_org_is_404(api: ApiClient) -> None:
    alice, bob = api.register(), api.register()
    contact = api.contact(alice)
    for method in ("get", "patch", "delete"):
        kw = {"json": {"name": "X"}} if method == "patch" else {}
        r = getattr(api, method)(f"/contacts/{contact['id']}", user=bob, org=bob.org_id, **kw)
        assert r.status_code == 404, method
        assert error_code(r) == "CONTACT_NOT_FOUND"
    # Unchanged for the real owner.
    r = api.get(f"/contacts/{contact['id']}", user=alice, org=alice.org_id)
    assert r.get_json()["name"] == contact["name"]


def test_list_envelope_and_isolation(api: ApiClient) -> None:
    alice, bob = api.register(), api.register()
    api.contact(alice, name="A1")
    api.contact(alice, name="A2")
    api.contact(bob, name="B1")
    r = api.get("/contacts", user=alice, org=alice.org_id)
    assert r.status_code == 200
    body = r.get_json()
    assert set(body) == {"items", "total", "page", "page_size", "pages", "next_cursor"}
    assert body["total"] == 2
    assert body["page"] == 1
    assert body["page_size"] == 20
    assert body["pages"] == 1
    assert _names(body) == {"A1", "A2"}


def test_pagination_pages(api: ApiClient) -> None:
    user = api.register()
    for i in range(5):
        api.contact(user, name=f"C{i}")
    r = api.get("/contacts", user=user, org=user.org_id, query={"page": 2, "page_size": 2})
    assert r.status_code == 200
    body = r.get_json()
    assert body["total"] == 5
    assert body["pages"] == 3
    assert body["page"] == 2
    assert body["page_size"] == 2
    assert len(body["items"]) == 2
    r = api.get("/contacts", user=user, org=user.org_id, query={"page": 9, "page_size": 2})
    assert r.status_code == 200
    assert r.get_json()["items"] == []
    assert r.get_json()["total"] == 5
    r = api.get("/contacts", user=user, org=user.org_id, query={"page_size": 100})
    assert r.status_code == 200
    assert len(r.get_json()["items"]) == 5


@pytest.mark.parametrize(
    "query",
    [
        {"page": 0},
        {"page": -1},
        {"page_size": 0},
        {"page_size": 101},
        {"page": "x"},
        {"page_size": "y"},
    ],
)
def test_pagination_bounds_rejected(api: ApiClient, query: dict) -> None:
    user = api.register()
    r = api.get("/contacts", user=user, org=user.org_id, query=query)
    assert r.status_code == 400
    assert error_code(r) == "VALIDATION_ERROR"
    assert r.get_json()["error"]["details"]["errors"]


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"email": "x@example.com"},
        {"name": ""},
        {"name": "   "},
        {"name": None},
        {"name": 123},
        {"name": "x" * 256},
    ],
)
def test_create_name_required_and_not_blank(api: ApiClient, body: dict) -> None:
    user = api.register()
    r = api.post("/contacts", user=user, org=user.org_id, json=body)
    assert r.status_code == 400
    assert error_code(r) == "VALIDATION_ERROR"
    assert "name" in r.get_json()["error"]["details"]["errors"]["json"]


@pytest.mark.parametrize("email", ["not-an-email", "a@", "@b.com", "a b@c.com", 42])
def test_create_invalid_email_rejected(api: ApiClient, email: object) -> None:
    user = api.register()
    r = api.post("/contacts", user=user, org=user.org_id, json={"name": "N", "email": email})
    assert r.status_code == 400
    assert error_code(r) == "VALIDATION_ERROR"
    assert "email" in r.get_json()["error"]["details"]["errors"]["json"]


def test_patch_validation(api: ApiClient) -> None:
    user = api.register()
    contact = api.contact(user)
    url = f"/contacts/{contact['id']}"
    for body in ({"name": ""}, {"name": "  "}, {"email": "nope"}, {"unknown_field": 1}):
        r = api.patch(url, user=user, org=user.org_id, json=body)
        assert r.status_code == 400, body
        assert error_code(r) == "VALIDATION_ERROR"
    r = api.get(url, user=user, org=user.org_id)
    assert r.get_json() == contact


def test_patch_email_to_null(api: ApiClient) -> None:
    user = api.register()
    contact = api.contact(user)
    r = api.patch(f"/contacts/{contact['id']}", user=user, org=user.org_id, json={"email": None})
    assert r.status_code == 200
    assert r.get_json()["email"] is None


# --- search ----------------------------------------------------------------------------------


def test_search_name_and_email_case_insensitive(api: ApiClient) -> None:
    user = api.register()
    api.contact(user, name="Maria Garcia", email="mg@alpha.io")
    api.contact(user, name="Bob Stone", email="bob@MARIADB.org")
    api.contact(user, name="Carl", email="carl@beta.io")
    api.contact(user, name="Nobody", email=None)

    def search(q: str) -> set[str]:
        r = api.get("/contacts", user=user, org=user.org_id, query={"search": q})
        assert r.status_code == 200
        body = r.get_json()
        assert body["total"] == len(body["items"])
        return _names(body)

    assert search("maria") == {"Maria Garcia", "Bob Stone"}
    assert search("MARIA") == {"Maria Garcia", "Bob Stone"}
    assert search("ALPHA.IO") == {"Maria Garcia"}
    assert search("stone") == {"Bob Stone"}
    assert search("zzz") == set()


def test_search_treats_wildcards_literally(api: ApiClient) -> None:
    user = api.register()
    api.contact(user, name="100% Club", email="club@example.com")
    api.contact(user, name="1000 Club", email="k@example.com")
    api.contact(user, name="snake_case", email="s@example.com")
    api.contact(user, name="snakeXcase", email="x@example.com")
    api.contact(user, name="back\\slash", email="b@example.com")

    def search(q: str) -> set[str]:
        r = api.get("/contacts", user=user, org=user.org_id, query={"search": q})
        assert r.status_code == 200
        return _names(r.get_json())

    assert search("%") == {"100% Club"}
    assert search("100%") == {"100% Club"}
    assert search("_") == {"snake_case"}
    assert search("e_c") == {"snake_case"}
    assert search("\\") == {"back\\slash"}


# --- owner_id filter -------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["owner", "admin", "manager"])
def test_owner_filter_allowed_for_manager_and_above(api: ApiClient, role: str) -> None:
    team = api.team()
    api.contact(team["member"], name="Mine")
    api.contact(team["member2"], name="Theirs")
    r = api.get(
        "/contacts", user=team[role], org=team[role].org_id, query={"owner_id": team["member"].id}
    )
    assert r.status_code == 200
    body = r.get_json()
    assert _names(body) == {"Mine"}
    assert all(item["owner_id"] == team["member"].id for item in body["items"])


def test_owner_filter_forbidden_for_member(api: ApiClient) -> None:
    team = api.team()
    member = team["member"]
    api.contact(member)
    for owner_id in (member.id, team["owner"].id):
        r = api.get("/contacts", user=member, org=member.org_id, query={"owner_id": owner_id})
        assert r.status_code == 403
        assert error_code(r) == "OWNER_FILTER_FORBIDDEN"


@pytest.mark.parametrize("owner_id", ["abc", "0", "-3", "1.5", ""])
def test_owner_filter_value_validated(api: ApiClient, owner_id: str) -> None:
    user = api.register()
    r = api.get("/contacts", user=user, org=user.org_id, query={"owner_id": owner_id})
    assert r.status_code == 400
    assert error_code(r) == "VALIDATION_ERROR"


def test_member_sees_everything_in_list(api: ApiClient) -> None:
    team = api.team()
    api.contact(team["owner"], name="O")
    api.contact(team["member2"], name="M2")
    r = api.get("/contacts", user=team["member"], org=team["member"].org_id)
    assert r.status_code == 200
    assert _names(r.get_json()) == {"O", "M2"}


# --- ownership -------------------------------------------------------------------------------


def test_member_may_patch_and_delete_own_contact(api: ApiClient) -> None:
    team = api.team()
    member = team["member"]
    contact = api.contact(member)
    r = api.patch(
        f"/contacts/{contact['id']}", user=member, org=member.org_id, json={"name": "Own"}
    )
    assert r.status_code == 200
    assert r.get_json()["name"] == "Own"
    r = api.delete(f"/contacts/{contact['id']}", user=member, org=member.org_id)
    assert r.status_code == 204


def test_member_may_not_touch_anothers_contact(api: ApiClient) -> None:
    team = api.team()
    member = team["member"]
    contact = api.contact(team["member2"], name="Theirs")
    url = f"/contacts/{contact['id']}"
    r = api.patch(url, user=member, org=member.org_id, json={"name": "Hijacked"})
    assert r.status_code == 403
    assert error_code(r) == "NOT_OWNER"
    r = api.delete(url, user=member, org=member.org_id)
    assert r.status_code == 403
    assert error_code(r) == "NOT_OWNER"
    r = api.get(url, user=member, org=member.org_id)
    assert r.status_code == 200
    assert r.get_json()["name"] == "Theirs"


@pytest.mark.parametrize("role", ["owner", "admin", "manager"])
def test_manager_and_above_may_patch_and_delete_anyones_contact(api: ApiClient, role: str) -> None:
    team = api.team()
    actor = team[role]
    contact = api.contact(team["member"])
    url = f"/contacts/{contact['id']}"
    r = api.patch(url, user=actor, org=actor.org_id, json={"name": "Edited"})
    assert r.status_code == 200
    assert r.get_json()["name"] == "Edited"
    assert r.get_json()["owner_id"] == team["member"].id
    r = api.delete(url, user=actor, org=actor.org_id)
    assert r.status_code == 204


# --- owner_id on create ----------------------------------------------------------------------


def test_manager_assigns_contact_to_member(api: ApiClient) -> None:
    team = api.team()
    manager, member = team["manager"], team["member"]
    r = api.post(
        "/contacts", user=manager, org=manager.org_id, json={"name": "Given", "owner_id": member.id}
    )
    assert r.status_code == 201
    assert r.get_json()["owner_id"] == member.id
    # The new owner, a member, can now edit it.
    r = api.patch(
        f"/contacts/{r.get_json()['id']}", user=member, org=member.org_id, json={"name": "Mine now"}
    )
    assert r.status_code == 200


def test_assign_to_non_member_is_404(api: ApiClient) -> None:
    team = api.team()
    outsider = api.register()
    manager = team["manager"]
    r = api.post(
        "/contacts", user=manager, org=manager.org_id, json={"name": "X", "owner_id": outsider.id}
    )
    assert r.status_code == 404
    assert error_code(r) == "OWNER_NOT_FOUND"
    r = api.get("/contacts", user=manager, org=manager.org_id)
    assert r.get_json()["total"] == 0


def test_member_cannot_assign_to_someone_else(api: ApiClient) -> None:
    team = api.team()
    member = team["member"]
    r = api.post(
        "/contacts",
        user=member,
        org=member.org_id,
        json={"name": "X", "owner_id": team["member2"].id},
    )
    assert r.status_code == 403
    assert error_code(r) == "OWNER_ASSIGN_FORBIDDEN"
    # Naming oneself is fine.
    r = api.post(
        "/contacts", user=member, org=member.org_id, json={"name": "Y", "owner_id": member.id}
    )
    assert r.status_code == 201
    assert r.get_json()["owner_id"] == member.id
    r = api.get("/contacts", user=member, org=member.org_id)
    assert _names(r.get_json()) == {"Y"}


@pytest.mark.parametrize("owner_id", [0, -1, "abc", 1.5, 2**31])
def test_owner_id_type_validation(api: ApiClient, owner_id: object) -> None:
    user = api.register()
    r = api.post("/contacts", user=user, org=user.org_id, json={"name": "X", "owner_id": owner_id})
    assert r.status_code == 400
    assert error_code(r) == "VALIDATION_ERROR"


# --- delete with deals -----------------------------------------------------------------------


def test_delete_contact_with_deals_is_409(api: ApiClient) -> None:
    user = api.register()
    contact = api.contact(user)
    api.deal(user, contact_id=contact["id"])
    r = api.delete(f"/contacts/{contact['id']}", user=user, org=user.org_id)
    assert r.status_code == 409
    assert error_code(r) == "CONTACT_HAS_DEALS"
    r = api.get(f"/contacts/{contact['id']}", user=user, org=user.org_id)
    assert r.status_code == 200
    assert r.get_json() == contact


def test_delete_contact_after_its_deal_is_gone(api: ApiClient) -> None:
    user = api.register()
    contact = api.contact(user)
    deal = api.deal(user, contact_id=contact["id"])
    assert api.delete(f"/deals/{deal['id']}", user=user, org=user.org_id).status_code == 204
    r = api.delete(f"/contacts/{contact['id']}", user=user, org=user.org_id)
    assert r.status_code == 204


def test_member_delete_others_contact_with_deals_is_403_first(api: ApiClient) -> None:
    team = api.team()
    other = team["member2"]
    contact = api.contact(other)
    api.deal(other, contact_id=contact["id"])
    r = api.delete(f"/contacts/{contact['id']}", user=team["member"], org=other.org_id)
    assert r.status_code == 403
    assert error_code(r) == "NOT_OWNER"


# --- ETag ------------------------------------------------------------------------------------


def _get_with_etag(api: ApiClient, user: User, contact_id: int) -> tuple[dict, str]:
    r = api.get(f"/contacts/{contact_id}", user=user, org=user.org_id)
    assert r.status_code == 200
    etag = r.headers.get("ETag")
    assert etag
    return r.get_json(), etag


def test_etag_if_match_flow(api: ApiClient) -> None:
    user = api.register()
    contact = api.contact(user, name="Before")
    url = f"/contacts/{contact['id']}"
    _, etag = _get_with_etag(api, user, contact["id"])
    # Same representation, same ETag.
    assert _get_with_etag(api, user, contact["id"])[1] == etag

    r = api.patch(
        url, user=user, org=user.org_id, json={"name": "After"}, headers={"If-Match": etag}
    )
    assert r.status_code == 200
    new_etag = r.headers.get("ETag")
    assert new_etag and new_etag != etag
    assert r.get_json()["name"] == "After"
    assert _get_with_etag(api, user, contact["id"])[1] == new_etag

    # The old ETag is stale now.
    r = api.patch(
        url, user=user, org=user.org_id, json={"name": "Lost update"}, headers={"If-Match": etag}
    )
    assert r.status_code == 412
    assert error_code(r) == "PRECONDITION_FAILED"
    body, tag = _get_with_etag(api, user, contact["id"])
    assert body["name"] == "After"
    assert tag == new_etag

    r = api.delete(url, user=user, org=user.org_id, headers={"If-Match": etag})
    assert r.status_code == 412
    assert error_code(r) == "PRECONDITION_FAILED"
    assert api.get(url, user=user, org=user.org_id).status_code == 200

    r = api.delete(url, user=user, org=user.org_id, headers={"If-Match": new_etag})
    assert r.status_code == 204


def test_if_none_match(api: ApiClient) -> None:
    user = api.register()
    contact = api.contact(user)
    url = f"/contacts/{contact['id']}"
    _, etag = _get_with_etag(api, user, contact["id"])
    r = api.get(url, user=user, org=user.org_id, headers={"If-None-Match": etag})
    assert r.status_code == 304
    assert r.data == b""
    assert r.headers.get("ETag") == etag
    r = api.get(url, user=user, org=user.org_id, headers={"If-None-Match": '"something-else"'})
    assert r.status_code == 200
    assert r.get_json() == contact


def test_patch_without_if_match_proceeds(api: ApiClient) -> None:
    user = api.register()
    contact = api.contact(user)
    r = api.patch(f"/contacts/{contact['id']}", user=user, org=user.org_id, json={"phone": "1"})
    assert r.status_code == 200
    assert r.headers.get("ETag")


def test_if_match_checked_after_ownership(api: ApiClient) -> None:
    team = api.team()
    contact = api.contact(team["member2"])
    r = api.patch(
        f"/contacts/{contact['id']}",
        user=team["member"],
        org=team["member"].org_id,
        json={"name": "X"},
        headers={"If-Match": '"stale"'},
    )
    assert r.status_code == 403
    assert error_code(r) == "NOT_OWNER"


def test_contact_search_is_served_by_the_trigram_index(db: Database) -> None:
    """The search reads the indexed column: with sequential and plain index scans ruled out,
    the plan reads the trigram index on search_text."""
    with db.transaction() as s:
        if not s.scalar(text("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'")):
            pytest.skip("this PostgreSQL has no pg_trgm (the embedded build)")
        s.execute(text("SET LOCAL enable_seqscan = off"))
        s.execute(text("SET LOCAL enable_indexscan = off"))
        stmt = select(Contact.id).where(contacts_service.matching("Alpha_%"))
        sql = stmt.compile(dialect=s.get_bind().dialect, compile_kwargs={"literal_binds": True})
        plan = "\n".join(s.scalars(text(f"EXPLAIN {sql}")))
    assert "_search_trgm" in plan, plan  # 0019 makes it ix_contacts_org_search_trgm


NAMES = ["Ana Ölund", "BOB_smith", "100% Real", "a/b\\c", "İstanbul Ltd", "line\nbreak", "ß Straße"]
EMAILS = ["ana@x.io", None, "Real_100@EXAMPLE.com", "ab@c.d", "ist@ex.tr", None, "s@s.de"]
terms = st.one_of(
    st.sampled_from(["ana", "_", "%", "/", "\\", "100%", "l_n", "\n", "k\nb", "nd\nana", "ss"]),
    st.text(alphabet="abnrdeio_%/\\ \nİßÖlu@.", max_size=5),
)


@pytest.fixture(scope="module")
def searchable(app) -> tuple[Database, int]:
    api = ApiClient(app.test_client())
    user = api.register()
    db: Database = app.extensions["crm_db"]
    with db.transaction() as s:
        s.execute(
            insert(Contact),
            [
                {"organization_id": user.org_id, "owner_id": user.id, "name": n, "email": e}
                for n, e in zip(NAMES, EMAILS, strict=True)
            ],
        )
    return db, user.org_id


@given(term=terms)
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_search_text_matches_exactly_what_name_or_email_would(searchable, term: str) -> None:
    """search_text (one column) finds the same contacts as matching name and e-mail apart."""
    db, org_id = searchable
    in_org = Contact.organization_id == org_id
    each = or_(
        Contact.name.icontains(term, autoescape=True),
        Contact.email.icontains(term, autoescape=True),
    )
    with db.reads() as s:
        expected = set(s.scalars(select(Contact.id).where(in_org, each)))
        found = set(s.scalars(select(Contact.id).where(in_org, contacts_service.matching(term))))
    assert found == expected
