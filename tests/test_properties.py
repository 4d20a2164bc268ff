"""Property-based tests: the role matrix, stage rollback, the won rule and pagination."""

from __future__ import annotations

import math
import uuid
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crm_domain import rules
from crm_domain.enums import DealStage, DealStatus, Role
from crm_domain.errors import Forbidden, ValidationFailed
from crm_domain.pagination import MAX_PAGE_SIZE, Page, PageRequest

from .api import ApiClient, User

roles = st.sampled_from(list(Role))
stages = st.sampled_from(list(DealStage))
statuses = st.sampled_from(list(DealStatus))
ids = st.integers(min_value=1, max_value=2**31 - 1)

DB_SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


# --- (a) role matrix ---------------------------------------------------------------------------


@given(role=roles, owner_id=ids, user_id=ids)
def test_can_modify_matrix(role: Role, owner_id: int, user_id: int) -> None:
    expected = role in {Role.OWNER, Role.ADMIN, Role.MANAGER} or owner_id == user_id
    assert rules.can_modify(role, owner_id=owner_id, user_id=user_id) is expected
    if expected:
        rules.ensure_can_modify(role, owner_id=owner_id, user_id=user_id, what="deals")
    else:
        with pytest.raises(Forbidden) as info:
            rules.ensure_can_modify(role, owner_id=owner_id, user_id=user_id, what="deals")
        assert info.value.code == "NOT_OWNER"


@given(role=roles, user_id=ids)
def test_can_modify_own_always(role: Role, user_id: int) -> None:
    assert rules.can_modify(role, owner_id=user_id, user_id=user_id) is True


@given(role=roles, new_owner_id=ids, user_id=ids)
def test_assign_owner_matrix(role: Role, new_owner_id: int, user_id: int) -> None:
    allowed = role is not Role.MEMBER or new_owner_id == user_id
    if allowed:
        rules.ensure_can_assign_owner(role, new_owner_id=new_owner_id, user_id=user_id)
    else:
        with pytest.raises(Forbidden) as info:
            rules.ensure_can_assign_owner(role, new_owner_id=new_owner_id, user_id=user_id)
        assert info.value.code == "OWNER_ASSIGN_FORBIDDEN"


# --- (b) stage rollback ------------------------------------------------------------------------


@given(role=roles, current=stages, new=stages)
def test_stage_transition_rule(role: Role, current: DealStage, new: DealStage) -> None:
    is_rollback = new.order < current.order
    assert rules.is_stage_rollback(current, new) is is_rollback
    should_raise = is_rollback and role not in {Role.OWNER, Role.ADMIN}
    if should_raise:
        with pytest.raises(Forbidden) as info:
            rules.ensure_stage_transition(role, current, new)
        assert info.value.code == "STAGE_ROLLBACK_FORBIDDEN"
        assert info.value.details == {"current_stage": current.value, "requested_stage": new.value}
    else:
        assert rules.ensure_stage_transition(role, current, new) is None


@given(role=roles, data=st.data())
def test_forward_or_same_stage_never_raises(role: Role, data: st.DataObject) -> None:
    current = data.draw(stages)
    new = data.draw(st.sampled_from([s for s in DealStage if s.order >= current.order]))
    assert rules.ensure_stage_transition(role, current, new) is None


# --- (c) won rule ------------------------------------------------------------------------------

decimals = st.decimals(
    min_value=Decimal("-1000000000"),
    max_value=Decimal("1000000000"),
    allow_nan=False,
    allow_infinity=False,
)


@given(status=statuses, amount=decimals)
def test_won_rule(status: DealStatus, amount: Decimal) -> None:
    if status is DealStatus.WON and amount <= 0:
        with pytest.raises(ValidationFailed) as info:
            rules.ensure_won_amount(status, amount)
        assert info.value.code == "WON_REQUIRES_POSITIVE_AMOUNT"
        assert info.value.details == {"amount": str(amount)}
    else:
        assert rules.ensure_won_amount(status, amount) is None


@given(amount=st.decimals(min_value=Decimal("0.01"), max_value=Decimal("1e12"), places=2))
def test_won_with_positive_two_place_amounts(amount: Decimal) -> None:
    assert rules.ensure_won_amount(DealStatus.WON, amount) is None
    with pytest.raises(ValidationFailed):
        rules.ensure_won_amount(DealStatus.WON, -amount)


# --- (d) pagination, pure ----------------------------------------------------------------------


@given(
    total=st.integers(min_value=0, max_value=10**6),
    page=st.integers(min_value=1, max_value=10**4),
    page_size=st.integers(min_value=1, max_value=MAX_PAGE_SIZE),
)
def test_page_math(total: int, page: int, page_size: int) -> None:
    p = Page(items=[], total=total, page=page, page_size=page_size)
    assert p.pages == math.ceil(total / page_size)
    assert p.pages * page_size >= total
    if total:
        assert (p.pages - 1) * page_size < total
    request = PageRequest(page=page, page_size=page_size)
    assert request.offset == (page - 1) * page_size
    assert request.offset >= 0


@given(
    total=st.integers(min_value=0, max_value=500),
    page_size=st.integers(min_value=1, max_value=MAX_PAGE_SIZE),
)
def test_page_offsets_partition_the_range(total: int, page_size: int) -> None:
    pages = Page(items=[], total=total, page=1, page_size=page_size).pages
    seen: list[int] = []
    for number in range(1, pages + 1):
        offset = PageRequest(page=number, page_size=page_size).offset
        seen.extend(range(total)[offset : offset + page_size])
    assert seen == list(range(total))
    past = PageRequest(page=pages + 1, page_size=page_size).offset
    assert past >= total


def test_page_request_defaults() -> None:
    assert PageRequest() == PageRequest(page=1, page_size=20)
    assert PageRequest().offset == 0


# --- (d) pagination over the API ---------------------------------------------------------------

N_CONTACTS = 37


@pytest.fixture(scope="module")
def paged_org(app) -> tuple[ApiClient, User, set[int]]:
    api = ApiClient(app.test_client())
    user = api.register(org_name=f"Paging {uuid.uuid4().hex[:6]}")
    ids_ = {
        api.contact(user, name=f"Contact {i:02d}", email=f"c{i}@example.com")["id"]
        for i in range(N_CONTACTS)
    }
    assert len(ids_) == N_CONTACTS
    return api, user, ids_


@DB_SETTINGS
@given(page_size=st.integers(min_value=1, max_value=MAX_PAGE_SIZE))
def test_contacts_pagination_walk(
    paged_org: tuple[ApiClient, User, set[int]], page_size: int
) -> None:
    api, user, expected_ids = paged_org
    expected_pages = math.ceil(N_CONTACTS / page_size)
    seen: list[int] = []
    for page in range(1, expected_pages + 1):
        r = api.get(
            "/contacts", user=user, org=user.org_id, query={"page": page, "page_size": page_size}
        )
        assert r.status_code == 200, r.get_json()
        body = r.get_json()
        assert set(body) == {"items", "total", "page", "page_size", "pages", "next_cursor"}
        assert body["total"] == N_CONTACTS
        assert body["page"] == page
        assert body["page_size"] == page_size
        assert body["pages"] == expected_pages
        remaining = N_CONTACTS - len(seen)
        assert len(body["items"]) == min(page_size, remaining)
        seen.extend(item["id"] for item in body["items"])
    assert len(seen) == N_CONTACTS
    assert set(seen) == expected_ids

    # The same walk by cursor: same items in the same order, no totals, null at the end.
    by_cursor: list[int] = []
    query: dict[str, object] = {"page_size": page_size}
    while True:
        r = api.get("/contacts", user=user, org=user.org_id, query=query)
        assert r.status_code == 200, r.get_json()
        body = r.get_json()
        if "cursor" in query:
            assert (body["total"], body["page"], body["pages"]) == (None, None, None)
        by_cursor.extend(item["id"] for item in body["items"])
        if body["next_cursor"] is None:
            break
        assert len(body["items"]) == page_size
        query = {"page_size": page_size, "cursor": body["next_cursor"]}
    assert by_cursor == seen

    r = api.get(
        "/contacts",
        user=user,
        org=user.org_id,
        query={"page": expected_pages + 1, "page_size": page_size},
    )
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["items"] == []
    assert body["total"] == N_CONTACTS
    assert body["pages"] == expected_pages
    assert body["page"] == expected_pages + 1
