"""Organizations and their members."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ... import audit, rules
from ...context import Actor
from ...enums import Role
from ...errors import Conflict, Forbidden, NotFound
from ...models import Organization, OrganizationMember, User
from .auth import normalize_email, record_founding


def memberships_of(session: Session, user_id: int) -> Sequence[tuple[Organization, Role]]:
    rows = session.execute(
        select(Organization, OrganizationMember.role)
        .join(OrganizationMember, OrganizationMember.organization_id == Organization.id)
        .where(OrganizationMember.user_id == user_id)
        .order_by(Organization.id)
    ).all()
    return [(org, role) for org, role in rows]


def role_in(session: Session, organization_id: int, user_id: int) -> Role | None:
    return session.scalar(
        select(OrganizationMember.role).where(
            OrganizationMember.organization_id == organization_id,
            OrganizationMember.user_id == user_id,
        )
    )


def require_role(session: Session, organization_id: int, user_id: int) -> Role:
    role = role_in(session, organization_id, user_id)
    if role is None:
        raise Forbidden("You are not a member of this organization", code="NOT_ORGANIZATION_MEMBER")
    return role


def create(session: Session, *, name: str, creator_id: int) -> Organization:
    org = Organization(name=name)
    session.add(org)
    session.flush()
    session.add(OrganizationMember(organization_id=org.id, user_id=creator_id, role=Role.OWNER))
    session.flush()
    record_founding(session, org, creator_id)
    return org


def _audit_member(
    session: Session,
    organization_id: int,
    action: str,
    user_id: int,
    old: Role | None,
    new: Role | None,
) -> None:
    audit.record(session, organization_id, action, "member", user_id, {"role": (old, new)})


def list_members(
    session: Session, organization_id: int
) -> Sequence[tuple[OrganizationMember, User]]:
    rows = session.execute(
        select(OrganizationMember, User)
        .join(User, User.id == OrganizationMember.user_id)
        .where(OrganizationMember.organization_id == organization_id)
        .order_by(OrganizationMember.id)
    ).all()
    return [(m, u) for m, u in rows]


def _member_for_update(session: Session, organization_id: int, user_id: int) -> OrganizationMember:
    member = session.scalar(
        select(OrganizationMember)
        .where(
            OrganizationMember.organization_id == organization_id,
            OrganizationMember.user_id == user_id,
        )
        .with_for_update()
    )
    if member is None:
        raise NotFound("Member not found", code="MEMBER_NOT_FOUND")
    return member


def _lock_owners(session: Session, organization_id: int) -> int:
    """Lock the owner rows (serializes owner changes) and return how many there are."""
    owners = session.scalars(
        select(OrganizationMember.id)
        .where(
            OrganizationMember.organization_id == organization_id,
            OrganizationMember.role == Role.OWNER,
        )
        .with_for_update()
    ).all()
    return len(owners)


def add_member(
    session: Session, *, organization_id: int, actor_role: Role, email: str, role: Role
) -> tuple[OrganizationMember, User]:
    rules.ensure_can_touch_membership(actor_role, target_role=None, new_role=role)
    user = session.scalar(select(User).where(User.email == normalize_email(email)))
    if user is None:
        raise NotFound(
            "No user with this email; invite them instead (POST /organizations/{id}/invitations)",
            code="USER_NOT_FOUND",
        )
    return join(session, organization_id=organization_id, user_id=user.id, role=role), user


def join(session: Session, *, organization_id: int, user_id: int, role: Role) -> OrganizationMember:
    """Make a user a member (409 MEMBER_ALREADY_EXISTS if they are one already)."""
    if role_in(session, organization_id, user_id) is not None:
        raise Conflict("The user is already a member", code="MEMBER_ALREADY_EXISTS")
    member = OrganizationMember(organization_id=organization_id, user_id=user_id, role=role)
    session.add(member)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError as exc:
        raise Conflict("The user is already a member", code="MEMBER_ALREADY_EXISTS") from exc
    _audit_member(session, organization_id, "member.added", user_id, None, role)
    return member


def change_role(
    session: Session, *, organization_id: int, actor_role: Role, user_id: int, role: Role
) -> tuple[OrganizationMember, User]:
    rules.ensure_can_manage_members(actor_role)
    owners = _lock_owners(session, organization_id)
    member = _member_for_update(session, organization_id, user_id)
    rules.ensure_can_touch_membership(actor_role, target_role=member.role, new_role=role)
    if member.role is Role.OWNER and role is not Role.OWNER and owners <= 1:
        raise Conflict("The last owner cannot be demoted", code="LAST_OWNER")
    if member.role is not role:
        _audit_member(session, organization_id, "member.role_changed", user_id, member.role, role)
    member.role = role
    session.flush()
    user = session.get(User, user_id)
    assert user is not None
    return member, user


def remove_member(
    session: Session, *, organization_id: int, actor_role: Role, user_id: int
) -> None:
    rules.ensure_can_manage_members(actor_role)
    owners = _lock_owners(session, organization_id)
    member = _member_for_update(session, organization_id, user_id)
    rules.ensure_can_touch_membership(actor_role, target_role=member.role, new_role=None)
    if member.role is Role.OWNER and owners <= 1:
        raise Conflict("The last owner cannot be removed", code="LAST_OWNER")
    session.delete(member)
    session.flush()
    _audit_member(session, organization_id, "member.removed", user_id, member.role, None)


def ensure_assignable_owner(session: Session, actor: Actor, owner_id: int) -> None:
    """Only manager and above give a record to someone else, who must be in the organization."""
    rules.ensure_can_assign_owner(actor.role, new_owner_id=owner_id, user_id=actor.user_id)
    if owner_id != actor.user_id:
        ensure_member(session, actor.organization_id, owner_id)


def ensure_member(session: Session, organization_id: int, user_id: int) -> None:
    """An assigned owner must belong to the organization (else: a cross-org link, 404)."""
    if role_in(session, organization_id, user_id) is None:
        raise owner_not_found({"owner_id": user_id})


def owner_not_found(details: dict[str, object]) -> NotFound:
    return NotFound(
        "The owner is not a member of this organization", code="OWNER_NOT_FOUND", details=details
    )


def member_ids_by_email(session: Session, organization_id: int) -> dict[str, int]:
    """{lower-case e-mail: user id} of the organization's members."""
    rows = session.execute(
        select(User.email, User.id)
        .join(OrganizationMember, OrganizationMember.user_id == User.id)
        .where(OrganizationMember.organization_id == organization_id)
    )
    return {email.lower(): user_id for email, user_id in rows}
