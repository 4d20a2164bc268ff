"""Pure business rules: no I/O, easy to unit- and property-test."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from .enums import DealStage, DealStatus, Role
from .errors import Forbidden, ValidationFailed

# What a new deal gets when the request leaves amount or currency out.
DEFAULT_AMOUNT = Decimal("0.00")
DEFAULT_CURRENCY = "USD"
MANAGING_ROLES = frozenset({Role.OWNER, Role.ADMIN, Role.MANAGER})
SETTINGS_ROLES = frozenset({Role.OWNER, Role.ADMIN})
ROLLBACK_ROLES = frozenset({Role.OWNER, Role.ADMIN})


def can_manage_all(role: Role) -> bool:
    """Owner, admin and manager may change any contact, deal or task of the organization."""
    return role in MANAGING_ROLES


def can_modify(role: Role, *, owner_id: int, user_id: int) -> bool:
    """A member modifies only what they own; the other roles modify everything."""
    return can_manage_all(role) or owner_id == user_id


def ensure_can_modify(role: Role, *, owner_id: int, user_id: int, what: str) -> None:
    if not can_modify(role, owner_id=owner_id, user_id=user_id):
        raise Forbidden(
            f"Members can only modify their own {what}",
            code="NOT_OWNER",
            details={"owner_id": owner_id},
        )


def ensure_can_filter_by_owner(role: Role) -> None:
    if not can_manage_all(role):
        raise Forbidden(
            "Filtering by owner_id is not allowed for the member role",
            code="OWNER_FILTER_FORBIDDEN",
        )


def ensure_can_assign_owner(role: Role, *, new_owner_id: int, user_id: int) -> None:
    """Only manager and above may give a record to somebody else."""
    if new_owner_id != user_id and not can_manage_all(role):
        raise Forbidden(
            "Members cannot assign records to other users", code="OWNER_ASSIGN_FORBIDDEN"
        )


def is_stage_rollback(current: DealStage, new: DealStage) -> bool:
    return new.order < current.order


def ensure_stage_transition(role: Role, current: DealStage, new: DealStage) -> None:
    """Forward moves (skips included) are free; rolling back needs owner or admin."""
    if is_stage_rollback(current, new) and role not in ROLLBACK_ROLES:
        raise Forbidden(
            "Only owner or admin can roll a deal stage back",
            code="STAGE_ROLLBACK_FORBIDDEN",
            details={"current_stage": current.value, "requested_stage": new.value},
        )


def ensure_won_amount(status: DealStatus, amount: Decimal) -> None:
    """A won deal must have a positive effective amount."""
    if status is DealStatus.WON and amount <= 0:
        raise ValidationFailed(
            "A deal can be won only with an amount greater than 0",
            code="WON_REQUIRES_POSITIVE_AMOUNT",
            details={"amount": str(amount)},
        )


def utc_today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def ensure_due_date(due_date: dt.date, today: dt.date | None = None) -> None:
    today = today or utc_today()
    if due_date < today:
        raise ValidationFailed(
            "due_date cannot be in the past",
            code="DUE_DATE_IN_PAST",
            details={"due_date": due_date.isoformat(), "today": today.isoformat()},
        )


def ensure_settings_role(role: Role, what: str) -> None:
    """Organization settings (members, webhooks) are for owner and admin."""
    if role not in SETTINGS_ROLES:
        raise Forbidden(f"Only owner or admin can manage {what}", code="SETTINGS_FORBIDDEN")


def ensure_can_manage_members(role: Role) -> None:
    ensure_settings_role(role, "organization members")


def ensure_can_manage_webhooks(role: Role) -> None:
    ensure_settings_role(role, "webhooks")


def ensure_can_touch_membership(
    actor_role: Role, *, target_role: Role | None, new_role: Role | None
) -> None:
    """Owner/admin manage members; only an owner grants, changes or removes `owner`."""
    ensure_can_manage_members(actor_role)
    touches_owner = target_role is Role.OWNER or new_role is Role.OWNER
    if touches_owner and actor_role is not Role.OWNER:
        raise Forbidden("Only an owner can grant or remove the owner role", code="OWNER_ONLY")
