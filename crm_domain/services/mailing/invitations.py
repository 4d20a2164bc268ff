"""Invitations: an owner or admin invites an e-mail address into the organization with a role;
the invitee accepts once, with the token from the e-mail, as a new user (who then has no
organization of their own) or logged in with the invited address.

Tokens: 256-bit, single use, expiring. Only their SHA-256 is stored (for lookup); the token is
an HMAC of a random nonce under the SECRET_KEY, so the e-mail worker can put it in the e-mail
after the commit while the database alone does not yield a working token. Inviting the same
address again revokes the live invitation and makes a new token. An invitation never grants
more than its inviter may: `owner` only from an owner, and the inviter must still be allowed
to grant the role when it is accepted."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import secrets
from collections.abc import Sequence
from urllib.parse import urlencode

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ... import audit, rules
from ...enums import Role
from ...errors import Conflict, Forbidden, Gone, NotFound
from ...mail.render import Content, render
from ...models import Invitation, Organization, OrganizationMember, OutboundEmail, OutboxEvent, User
from ...pagination import Ordering, Page, PageRequest, paginate
from .._common import get_in_org
from ..delivery import outbox
from ..records import organizations
from ..records.auth import normalize_email
from . import outbound_email

INVITATION_TOPIC = "invitation.created"  # {invitation_id} -> the invitation e-mail
EMAIL_KIND = "invitation"
# Where the e-mail's link points (PUBLIC_BASE_URL + this): shows the invitation.
PREVIEW_PATH = "/api/v1/invitations/preview"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def derive_token(secret_key: str, nonce: str) -> str:
    mac = hmac.new(secret_key.encode(), f"crm-invitation:{nonce}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode("ascii")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def is_live(invitation: Invitation, now: dt.datetime | None = None) -> bool:
    return (
        invitation.accepted_at is None
        and invitation.revoked_at is None
        and invitation.expires_at > (now or _now())
    )


# --- managing (owner/admin) ---------------------------------------------------------------


def invite(
    session: Session,
    *,
    organization_id: int,
    inviter_id: int,
    inviter_role: Role,
    email: str,
    role: Role,
    secret_key: str,
    lifetime: dt.timedelta,
) -> Invitation:
    """Create an invitation (replacing a live one to the same address) and record the event
    that e-mails it."""
    rules.ensure_can_touch_membership(inviter_role, target_role=None, new_role=role)
    email = normalize_email(email)
    member = session.scalar(
        select(OrganizationMember.id)
        .join(User, User.id == OrganizationMember.user_id)
        .where(OrganizationMember.organization_id == organization_id, User.email == email)
    )
    if member is not None:
        raise Conflict("This address belongs to a member already", code="MEMBER_ALREADY_EXISTS")
    now = _now()
    previous = session.scalar(
        select(Invitation)
        .where(
            Invitation.organization_id == organization_id,
            Invitation.email == email,
            Invitation.accepted_at.is_(None),
            Invitation.revoked_at.is_(None),
        )
        .with_for_update()
    )
    if previous is not None:  # replacing an owner invitation is for owners only
        rules.ensure_can_touch_membership(inviter_role, target_role=previous.role, new_role=role)
        previous.revoked_at = now
        _audit(session, previous, "invitation.revoked", {"revoked_at": (None, now)})
    nonce = secrets.token_urlsafe(24)
    invitation = Invitation(
        organization_id=organization_id,
        email=email,
        role=role,
        token_hash=hash_token(derive_token(secret_key, nonce)),
        token_nonce=nonce,
        invited_by=inviter_id,
        expires_at=now + lifetime,
    )
    session.add(invitation)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError as exc:  # a concurrent invitation to the same address won
        raise Conflict(
            "Another invitation to this address was created at the same time",
            code="INVITATION_CONFLICT",
        ) from exc
    outbox.record(session, organization_id, INVITATION_TOPIC, {"invitation_id": invitation.id})
    fields = ("email", "role", "invited_by", "expires_at")
    _audit(
        session,
        invitation,
        "invitation.created",
        {f: (None, getattr(invitation, f)) for f in fields},
    )
    return invitation


def _audit(session: Session, invitation: Invitation, action: str, changes: audit.Changes) -> None:
    audit.record(session, invitation.organization_id, action, "invitation", invitation.id, changes)


def list_pending(
    session: Session, organization_id: int, actor_role: Role, request: PageRequest
) -> Page[Invitation]:
    """Invitations not accepted, revoked or expired; newest first. Owner/admin only."""
    rules.ensure_can_manage_members(actor_role)
    stmt = select(Invitation).where(
        Invitation.organization_id == organization_id,
        Invitation.accepted_at.is_(None),
        Invitation.revoked_at.is_(None),
        Invitation.expires_at > _now(),
    )
    return paginate(session, stmt, request, Ordering("id", Invitation.id, Invitation.id))


def revoke(session: Session, *, organization_id: int, actor_role: Role, invitation_id: int) -> None:
    rules.ensure_can_manage_members(actor_role)
    invitation = get_in_org(
        session, Invitation, organization_id, invitation_id, name="invitation", for_update=True
    )
    if invitation.revoked_at is not None:
        raise NotFound("Invitation not found", code="INVITATION_NOT_FOUND")
    if invitation.accepted_at is not None:
        raise Conflict("The invitation was already accepted", code="INVITATION_ALREADY_ACCEPTED")
    rules.ensure_can_touch_membership(actor_role, target_role=invitation.role, new_role=None)
    invitation.revoked_at = _now()
    _audit(session, invitation, "invitation.revoked", {"revoked_at": (None, invitation.revoked_at)})


# --- using the token ------------------------------------------------------------------------


def find_by_token(session: Session, token: str, *, for_update: bool = False) -> Invitation:
    """The live invitation of `token`: 404 INVITATION_NOT_FOUND, or 410 INVITATION_USED /
    INVITATION_REVOKED / INVITATION_EXPIRED."""
    stmt = select(Invitation).where(Invitation.token_hash == hash_token(token))
    invitation = session.scalar(stmt.with_for_update() if for_update else stmt)
    if invitation is None:
        raise NotFound("No invitation has this token", code="INVITATION_NOT_FOUND")
    if invitation.accepted_at is not None:
        raise Gone("This invitation was already used", code="INVITATION_USED")
    if invitation.revoked_at is not None:
        raise Gone(
            "This invitation was revoked or replaced by a newer one", code="INVITATION_REVOKED"
        )
    if invitation.expires_at <= _now():
        raise Gone(
            "This invitation has expired; ask for a new one",
            code="INVITATION_EXPIRED",
            details={"expired_at": invitation.expires_at.isoformat()},
        )
    return invitation


def preview(session: Session, token: str) -> tuple[Invitation, Organization, User | None]:
    """What the e-mail's link shows: the invitation, its organization and who sent it."""
    invitation = find_by_token(session, token)
    org = session.get(Organization, invitation.organization_id)
    assert org is not None  # the foreign key cascades
    inviter = session.get(User, invitation.invited_by) if invitation.invited_by else None
    return invitation, org, inviter


def _ensure_inviter_may_grant(session: Session, invitation: Invitation) -> None:
    """An inviter demoted or removed since cannot hand out the role any more."""
    role = (
        organizations.role_in(session, invitation.organization_id, invitation.invited_by)
        if invitation.invited_by is not None
        else None
    )
    try:
        if role is None:
            raise Forbidden("The inviter is no longer a member")
        rules.ensure_can_touch_membership(role, target_role=None, new_role=invitation.role)
    except Forbidden as exc:
        raise Gone(
            "Whoever invited you may no longer grant this role; ask for a new invitation",
            code="INVITATION_REVOKED",
        ) from exc


def _join(session: Session, invitation: Invitation, user_id: int) -> tuple[Organization, Role]:
    _ensure_inviter_may_grant(session, invitation)
    organizations.join(
        session, organization_id=invitation.organization_id, user_id=user_id, role=invitation.role
    )
    invitation.accepted_at = _now()
    invitation.accepted_by = user_id
    changes = {"accepted_at": (None, invitation.accepted_at), "accepted_by": (None, user_id)}
    _audit(session, invitation, "invitation.accepted", changes)
    org = session.get(Organization, invitation.organization_id)
    assert org is not None
    return org, invitation.role


def accept_as_new_user(
    session: Session, *, token: str, name: str, hashed_password: str
) -> tuple[User, Organization, Role]:
    """Create the invited address's account (no organization of its own) and join."""
    invitation = find_by_token(session, token, for_update=True)
    already = "An account with this address exists; log in and POST /invitations/accept instead"
    if session.scalar(select(User.id).where(User.email == invitation.email)) is not None:
        raise Conflict(already, code="EMAIL_ALREADY_EXISTS")
    user = User(email=invitation.email, hashed_password=hashed_password, name=name)
    session.add(user)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError as exc:  # registered at the same moment
        raise Conflict(already, code="EMAIL_ALREADY_EXISTS") from exc
    org, role = _join(session, invitation, user.id)
    return user, org, role


def accept_as_user(session: Session, *, token: str, user_id: int) -> tuple[Organization, Role]:
    """Join as the logged-in user, whose e-mail address must be the invited one."""
    invitation = find_by_token(session, token, for_update=True)
    email = session.scalar(select(User.email).where(User.id == user_id))
    if email != invitation.email:
        raise Forbidden(
            "This invitation was sent to another e-mail address than yours",
            code="INVITATION_EMAIL_MISMATCH",
        )
    return _join(session, invitation, user_id)


# --- the e-mail -------------------------------------------------------------------------------


def queue_emails(session: Session, events: Sequence[OutboxEvent]) -> None:
    """Outbox handler: one e-mail per invitation event (keyed by the event)."""
    ids = {ev.payload["invitation_id"] for ev in events}
    emails = dict(
        session.execute(select(Invitation.id, Invitation.email).where(Invitation.id.in_(ids))).all()
    )
    rows = []
    for ev in events:
        invitation_id = ev.payload["invitation_id"]
        if invitation_id not in emails:
            ev.last_error = "invitation no longer exists"
            continue
        rows.append(
            {
                "dedupe_key": f"invitation:{ev.event_key}",
                "kind": EMAIL_KIND,
                "organization_id": ev.organization_id,
                "to_address": emails[invitation_id],
                "params": {"invitation_id": invitation_id},
            }
        )
    outbound_email.enqueue(session, rows)


def compose_email(
    session: Session, row: OutboundEmail, context: outbound_email.MailContext
) -> Content | None:
    invitation = session.get(Invitation, row.params["invitation_id"])
    if invitation is None or not is_live(invitation):
        return None  # revoked, replaced, used or expired before it could be sent
    org = session.get(Organization, invitation.organization_id)
    assert org is not None
    inviter = session.get(User, invitation.invited_by) if invitation.invited_by else None
    token = derive_token(context.secret_key, invitation.token_nonce)
    if hash_token(token) != invitation.token_hash:  # kept on the row: retried, then failed
        raise RuntimeError("the worker's SECRET_KEY is not the one the API used")
    link = f"{context.public_base_url}{PREVIEW_PATH}?{urlencode({'token': token})}"
    inviter_name = inviter.name if inviter is not None else f"Someone at {org.name}"
    return render(
        "invitation",
        f"{inviter_name} invited you to join {org.name}",
        organization=org.name,
        inviter=inviter_name,
        email=invitation.email,
        role=invitation.role.value,
        link=link,
        token=token,
        expires=invitation.expires_at.strftime("%Y-%m-%d %H:%M"),
        secrets=(token,),
    )
