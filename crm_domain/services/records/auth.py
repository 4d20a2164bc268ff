"""Users, passwords and login sessions (refresh-token families)."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from sqlalchemy import Connection, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ... import audit
from ...enums import Role
from ...errors import Conflict, Unauthorized, ValidationFailed
from ...models import AuthSession, Organization, OrganizationMember, User
from ...passwords import MAX_PASSWORD_BYTES, MIN_PASSWORD_BYTES, PasswordHasher


class TokenReused(Unauthorized):
    """A refresh token older than the family's current one was presented."""


def normalize_email(email: str) -> str:
    return email.strip().lower()


def check_password_length(password: str) -> None:
    size = len(password.encode("utf-8"))
    if not MIN_PASSWORD_BYTES <= size <= MAX_PASSWORD_BYTES:
        raise ValidationFailed(
            f"Password must be {MIN_PASSWORD_BYTES} to {MAX_PASSWORD_BYTES} bytes long",
            code="VALIDATION_ERROR",
            details={"errors": {"password": ["Must be 8 to 72 bytes long."]}},
        )


def hash_new_password(password: str, hasher: PasswordHasher) -> str:
    """Check a new password's length and hash it. Call it before opening the transaction that
    stores it: hashing takes a while, and may wait for a free hashing slot."""
    check_password_length(password)
    return hasher.hash(password)


def register(
    session: Session,
    *,
    email: str,
    hashed_password: str,
    name: str,
    organization_name: str,
) -> tuple[User, Organization]:
    """Create a user, their first organization, and make them its owner."""
    email = normalize_email(email)
    if session.scalar(select(User.id).where(User.email == email)) is not None:
        raise Conflict("A user with this email already exists", code="EMAIL_ALREADY_EXISTS")
    user = User(email=email, hashed_password=hashed_password, name=name)
    org = Organization(name=organization_name)
    session.add_all([user, org])
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError as exc:  # a concurrent registration won the race
        raise Conflict(
            "A user with this email already exists", code="EMAIL_ALREADY_EXISTS"
        ) from exc
    session.add(OrganizationMember(organization_id=org.id, user_id=user.id, role=Role.OWNER))
    session.flush()
    record_founding(session, org, user.id)
    return user, org


def record_founding(session: Session, org: Organization, owner_id: int) -> None:
    """Audit a new organization and its first owner (entries by the system at registration:
    nobody is logged in yet)."""
    audit.record_many(
        session,
        [
            audit.entry(
                org.id, "organization.created", "organization", org.id, {"name": (None, org.name)}
            ),
            audit.entry(org.id, "member.added", "member", owner_id, {"role": (None, Role.OWNER)}),
        ],
    )


@dataclass(frozen=True)
class StoredCredentials:
    user_id: int
    hashed_password: str


def find_credentials(session: Session, email: str) -> StoredCredentials | None:
    """The stored password hash for an email (any casing), or None."""
    row = session.execute(
        select(User.id, User.hashed_password).where(User.email == normalize_email(email))
    ).one_or_none()
    return StoredCredentials(row[0], row[1]) if row is not None else None


def check_credentials(
    stored: StoredCredentials | None, password: str, hasher: PasswordHasher
) -> int:
    """The user id if the password matches, else 401 INVALID_CREDENTIALS. An unknown email
    (`stored` is None) costs one comparison at the configured cost too, so the time taken
    does not tell whether the email is registered. Call it outside any transaction."""
    if stored is None:
        hasher.spend_one_comparison()
        raise Unauthorized("Invalid email or password", code="INVALID_CREDENTIALS")
    if not hasher.verify(password, stored.hashed_password):
        raise Unauthorized("Invalid email or password", code="INVALID_CREDENTIALS")
    return stored.user_id


def get_user(session: Session, user_id: int) -> User | None:
    return session.get(User, user_id)


@dataclass(frozen=True)
class TokenGrant:
    """What a token pair is made of. The same grant always encodes to the same tokens."""

    refresh_jti: str
    access_jti: str
    # The exact time (the grace window counts from it); the tokens carry it in whole seconds,
    # as JWT times are.
    issued_at: dt.datetime


def _new_grant(now: dt.datetime) -> TokenGrant:
    return TokenGrant(str(uuid.uuid4()), str(uuid.uuid4()), now)


def _record_current(auth: AuthSession, grant: TokenGrant) -> None:
    auth.current_jti = grant.refresh_jti
    auth.current_access_jti = grant.access_jti
    auth.current_issued_at = grant.issued_at


def start_session(
    session: Session, *, session_id: str, user_id: int, lifetime: dt.timedelta
) -> TokenGrant:
    """A new login session and its first token pair."""
    now = dt.datetime.now(dt.UTC)
    grant = _new_grant(now)
    auth = AuthSession(id=session_id, user_id=user_id, expires_at=now + lifetime)
    _record_current(auth, grant)
    session.add(auth)
    session.flush()
    return grant


def rotate_session(
    session: Session,
    *,
    session_id: str,
    presented_jti: str,
    grace: dt.timedelta,
    now: dt.datetime | None = None,
) -> TokenGrant:
    """Exchange the family's current refresh token for a new pair.

    The token the current one replaced, presented again within `grace` of that rotation,
    gets the current pair again: concurrent refreshes with one token (two tabs,
    a retried request) all end with the same pair instead of logging the user out. Any
    other token raises TokenReused; the caller then revokes the family with
    `revoke_session` in a transaction of its own (this one rolls back)."""
    now = now or dt.datetime.now(dt.UTC)
    # The row lock serializes concurrent refreshes of one session: the first rotates, the
    # others then read the rotated row and get its pair back.
    auth = session.scalar(select(AuthSession).where(AuthSession.id == session_id).with_for_update())
    if auth is None or auth.revoked_at is not None:
        raise Unauthorized("Refresh token has been revoked", code="TOKEN_REVOKED")
    if auth.expires_at <= now:
        raise Unauthorized("Refresh token has expired", code="TOKEN_EXPIRED")
    if auth.current_jti == presented_jti:
        grant = _new_grant(now)
        auth.previous_jti = presented_jti
        _record_current(auth, grant)
        return grant
    if (
        auth.previous_jti == presented_jti
        and auth.current_access_jti is not None
        and auth.current_issued_at is not None
        and now - auth.current_issued_at <= grace
    ):
        return TokenGrant(auth.current_jti, auth.current_access_jti, auth.current_issued_at)
    raise TokenReused(
        "Refresh token was already used; the session has been revoked", code="TOKEN_REUSED"
    )


def revoke_session(session: Session, session_id: str, reason: str = "logout") -> None:
    session.execute(
        update(AuthSession)
        .where(AuthSession.id == session_id, AuthSession.revoked_at.is_(None))
        .values(revoked_at=dt.datetime.now(dt.UTC), revoked_reason=reason)
    )


# Built once: this runs on every authenticated request, so it skips the ORM statement build.
_ACCESS_SQL = text(
    "SELECT"
    " (SELECT revoked_at IS NULL FROM auth_sessions WHERE id = :sid AND user_id = :uid),"
    " (SELECT role FROM organization_members WHERE organization_id = :org AND user_id = :uid)"
)


def check_access(
    conn: Connection, *, session_id: str, user_id: int, organization_id: int | None
) -> tuple[bool, Role | None]:
    """In one query: is the login session alive, and the user's role in the organization."""
    row = conn.execute(
        _ACCESS_SQL, {"sid": session_id, "uid": user_id, "org": organization_id or 0}
    ).one()
    return bool(row[0]), (Role(row[1]) if row[1] is not None else None)
