"""Unit tests of the pure business rules in crm_domain/rules.py."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from crm_domain import rules
from crm_domain.enums import DealStage, DealStatus, Role
from crm_domain.errors import DomainError, Forbidden, ValidationFailed

ALL_ROLES = list(Role)
MANAGING = [Role.OWNER, Role.ADMIN, Role.MANAGER]
SETTINGS = [Role.OWNER, Role.ADMIN]
NON_SETTINGS = [Role.MANAGER, Role.MEMBER]


# --- can_modify / ensure_can_modify ----------------------------------------------------------


@pytest.mark.parametrize("role", MANAGING)
def test_managing_roles_modify_anything(role: Role) -> None:
    assert rules.can_modify(role, owner_id=1, user_id=2) is True
    assert rules.can_modify(role, owner_id=2, user_id=2) is True


def test_member_modifies_only_own() -> None:
    assert rules.can_modify(Role.MEMBER, owner_id=7, user_id=7) is True
    assert rules.can_modify(Role.MEMBER, owner_id=7, user_id=8) is False


@pytest.mark.parametrize("role", MANAGING)
def test_ensure_can_modify_passes_for_managing_roles(role: Role) -> None:
    assert rules.ensure_can_modify(role, owner_id=1, user_id=2, what="deals") is None


def test_ensure_can_modify_passes_for_member_on_own() -> None:
    assert rules.ensure_can_modify(Role.MEMBER, owner_id=5, user_id=5, what="deals") is None


def test_ensure_can_modify_rejects_member_on_foreign() -> None:
    with pytest.raises(Forbidden) as info:
        rules.ensure_can_modify(Role.MEMBER, owner_id=5, user_id=6, what="contacts")
    err = info.value
    assert err.code == "NOT_OWNER"
    assert err.kind == "forbidden"
    assert err.details == {"owner_id": 5}
    assert "contacts" in err.message
    assert isinstance(err, DomainError)


# --- ensure_can_filter_by_owner ----------------------------------------------------------------


@pytest.mark.parametrize("role", MANAGING)
def test_filter_by_owner_allowed(role: Role) -> None:
    assert rules.ensure_can_filter_by_owner(role) is None


def test_filter_by_owner_forbidden_for_member() -> None:
    with pytest.raises(Forbidden) as info:
        rules.ensure_can_filter_by_owner(Role.MEMBER)
    assert info.value.code == "OWNER_FILTER_FORBIDDEN"


# --- ensure_can_assign_owner -------------------------------------------------------------------


@pytest.mark.parametrize("role", ALL_ROLES)
def test_assign_self_always_allowed(role: Role) -> None:
    assert rules.ensure_can_assign_owner(role, new_owner_id=3, user_id=3) is None


@pytest.mark.parametrize("role", MANAGING)
def test_assign_other_allowed_for_managing(role: Role) -> None:
    assert rules.ensure_can_assign_owner(role, new_owner_id=4, user_id=3) is None


def test_assign_other_forbidden_for_member() -> None:
    with pytest.raises(Forbidden) as info:
        rules.ensure_can_assign_owner(Role.MEMBER, new_owner_id=4, user_id=3)
    assert info.value.code == "OWNER_ASSIGN_FORBIDDEN"


# --- stages ------------------------------------------------------------------------------------


def test_stage_order_is_one_based_in_funnel_order() -> None:
    assert [s.order for s in DealStage] == [1, 2, 3, 4]
    assert DealStage.QUALIFICATION.order == 1
    assert DealStage.CLOSED.order == 4


@pytest.mark.parametrize(
    ("current", "new", "expected"),
    [
        (DealStage.PROPOSAL, DealStage.QUALIFICATION, True),
        (DealStage.CLOSED, DealStage.QUALIFICATION, True),
        (DealStage.CLOSED, DealStage.NEGOTIATION, True),
        (DealStage.QUALIFICATION, DealStage.PROPOSAL, False),
        (DealStage.QUALIFICATION, DealStage.CLOSED, False),
        (DealStage.NEGOTIATION, DealStage.NEGOTIATION, False),
        (DealStage.QUALIFICATION, DealStage.QUALIFICATION, False),
    ],
)
def test_is_stage_rollback(current: DealStage, new: DealStage, expected: bool) -> None:
    assert rules.is_stage_rollback(current, new) is expected


@pytest.mark.parametrize("role", ALL_ROLES)
def test_forward_and_skip_moves_are_free(role: Role) -> None:
    assert rules.ensure_stage_transition(role, DealStage.QUALIFICATION, DealStage.PROPOSAL) is None
    assert rules.ensure_stage_transition(role, DealStage.QUALIFICATION, DealStage.CLOSED) is None
    assert rules.ensure_stage_transition(role, DealStage.PROPOSAL, DealStage.PROPOSAL) is None


@pytest.mark.parametrize("role", SETTINGS)
def test_rollback_allowed_for_owner_and_admin(role: Role) -> None:
    assert rules.ensure_stage_transition(role, DealStage.CLOSED, DealStage.QUALIFICATION) is None
    assert rules.ensure_stage_transition(role, DealStage.PROPOSAL, DealStage.QUALIFICATION) is None


@pytest.mark.parametrize("role", NON_SETTINGS)
def test_rollback_forbidden_for_manager_and_member(role: Role) -> None:
    with pytest.raises(Forbidden) as info:
        rules.ensure_stage_transition(role, DealStage.NEGOTIATION, DealStage.PROPOSAL)
    err = info.value
    assert err.code == "STAGE_ROLLBACK_FORBIDDEN"
    assert err.details == {"current_stage": "negotiation", "requested_stage": "proposal"}


# --- won amount --------------------------------------------------------------------------------


@pytest.mark.parametrize("amount", [Decimal("0"), Decimal("0.00"), Decimal("-0.01"), Decimal("-5")])
def test_won_requires_positive_amount(amount: Decimal) -> None:
    with pytest.raises(ValidationFailed) as info:
        rules.ensure_won_amount(DealStatus.WON, amount)
    err = info.value
    assert err.code == "WON_REQUIRES_POSITIVE_AMOUNT"
    assert err.kind == "invalid"
    assert err.details == {"amount": str(amount)}


@pytest.mark.parametrize("amount", [Decimal("0.01"), Decimal("1"), Decimal("10000.00")])
def test_won_with_positive_amount_passes(amount: Decimal) -> None:
    assert rules.ensure_won_amount(DealStatus.WON, amount) is None


@pytest.mark.parametrize("status", [DealStatus.NEW, DealStatus.IN_PROGRESS, DealStatus.LOST])
def test_other_statuses_accept_zero_amount(status: DealStatus) -> None:
    assert rules.ensure_won_amount(status, Decimal("0")) is None


def test_lost_with_zero_amount_passes() -> None:
    assert rules.ensure_won_amount(DealStatus.LOST, Decimal("0.00")) is None


# --- due date ----------------------------------------------------------------------------------


def test_due_date_today_and_future_accepted_with_default_today() -> None:
    today = rules.utc_today()
    assert rules.ensure_due_date(today) is None
    assert rules.ensure_due_date(today + dt.timedelta(days=1)) is None


def test_due_date_yesterday_rejected_with_default_today() -> None:
    yesterday = rules.utc_today() - dt.timedelta(days=1)
    with pytest.raises(ValidationFailed) as info:
        rules.ensure_due_date(yesterday)
    assert info.value.code == "DUE_DATE_IN_PAST"
    assert info.value.details["due_date"] == yesterday.isoformat()


def test_utc_today_is_utc_date() -> None:
    before = dt.datetime.now(dt.UTC).date()
    value = rules.utc_today()
    after = dt.datetime.now(dt.UTC).date()
    assert before <= value <= after


def test_due_date_with_explicit_today() -> None:
    today = dt.date(2020, 3, 1)
    assert rules.ensure_due_date(dt.date(2020, 3, 1), today=today) is None
    assert rules.ensure_due_date(dt.date(2020, 3, 2), today=today) is None
    # a date in the real past is fine when "today" is even earlier
    assert rules.ensure_due_date(dt.date(2020, 3, 1), today=dt.date(2019, 1, 1)) is None
    with pytest.raises(ValidationFailed) as info:
        rules.ensure_due_date(dt.date(2020, 2, 29), today=today)
    assert info.value.code == "DUE_DATE_IN_PAST"
    assert info.value.details == {"due_date": "2020-02-29", "today": "2020-03-01"}


def test_due_date_explicit_today_in_future_rejects_real_today() -> None:
    real_today = rules.utc_today()
    with pytest.raises(ValidationFailed) as info:
        rules.ensure_due_date(real_today, today=real_today + dt.timedelta(days=1))
    assert info.value.code == "DUE_DATE_IN_PAST"


# --- members -----------------------------------------------------------------------------------


@pytest.mark.parametrize("role", SETTINGS)
def test_manage_members_allowed(role: Role) -> None:
    assert rules.ensure_can_manage_members(role) is None


@pytest.mark.parametrize("role", NON_SETTINGS)
def test_manage_members_forbidden(role: Role) -> None:
    with pytest.raises(Forbidden) as info:
        rules.ensure_can_manage_members(role)
    assert info.value.code == "SETTINGS_FORBIDDEN"


@pytest.mark.parametrize("role", NON_SETTINGS)
def test_touch_membership_requires_settings_role(role: Role) -> None:
    with pytest.raises(Forbidden) as info:
        rules.ensure_can_touch_membership(role, target_role=Role.MEMBER, new_role=Role.MANAGER)
    assert info.value.code == "SETTINGS_FORBIDDEN"
    # the settings check comes first even when the owner role is touched
    with pytest.raises(Forbidden) as info:
        rules.ensure_can_touch_membership(role, target_role=Role.OWNER, new_role=None)
    assert info.value.code == "SETTINGS_FORBIDDEN"


@pytest.mark.parametrize(
    ("target_role", "new_role"),
    [
        (None, Role.MEMBER),  # add a member
        (None, Role.ADMIN),  # add an admin
        (Role.MEMBER, Role.MANAGER),  # change a role
        (Role.ADMIN, Role.MEMBER),  # demote an admin
        (Role.MANAGER, None),  # remove a manager
    ],
)
@pytest.mark.parametrize("actor", SETTINGS)
def test_touch_membership_non_owner_roles(
    actor: Role, target_role: Role | None, new_role: Role | None
) -> None:
    assert (
        rules.ensure_can_touch_membership(actor, target_role=target_role, new_role=new_role) is None
    )


@pytest.mark.parametrize(
    ("target_role", "new_role"),
    [
        (None, Role.OWNER),  # add a new owner
        (Role.MEMBER, Role.OWNER),  # promote to owner
        (Role.OWNER, Role.ADMIN),  # demote an owner
        (Role.OWNER, None),  # remove an owner
        (Role.OWNER, Role.OWNER),
    ],
)
def test_only_owner_touches_owner_role(target_role: Role | None, new_role: Role | None) -> None:
    assert (
        rules.ensure_can_touch_membership(Role.OWNER, target_role=target_role, new_role=new_role)
        is None
    )
    with pytest.raises(Forbidden) as info:
        rules.ensure_can_touch_membership(Role.ADMIN, target_role=target_role, new_role=new_role)
    assert info.value.code == "OWNER_ONLY"


# --- error classes -----------------------------------------------------------------------------


def test_error_class_defaults() -> None:
    assert Forbidden("x").code == "FORBIDDEN"
    assert ValidationFailed("x").code == "VALIDATION_ERROR"
    assert Forbidden("x").details == {}
    assert Forbidden("x", code="CUSTOM").code == "CUSTOM"
    # a custom code on an instance does not leak into the class default
    assert Forbidden.code == "FORBIDDEN"
