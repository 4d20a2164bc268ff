"""API keys (personal access tokens): a user's keys for one organization.

A key acts as its user in its organization with the role the user holds there at the time of
each request, never more; a `read` key only reads. It lives as long as the user's membership
(foreign key, ON DELETE CASCADE): a removed member's or a deleted user's keys are gone.

The key is `crm_` + `lookup` (12 hex characters, public: it finds the row and names the key
in lists) + `_` + 43 characters of URL-safe base64 (256 random bits). It is shown once, at
creation. Only its SHA-256 is stored and compared in constant time: with 256 random bits a
fast hash is as safe as a slow one (there is nothing to guess), and it costs microseconds, so
verifying a key costs no more than verifying a JWT (no bcrypt on the request path). A copy
of the database yields no working key.

The request path (crm_api.key_auth) reads a key's facts and its user's role in one query
(`facts`), remembers them for ACCESS_CHECK_CACHE_SECONDS, checks them with `verify` and marks
the key used at most once a minute (`touch`)."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Connection, select, text, update
from sqlalchemy.orm import Session

from ... import audit, rules
from ...context import Actor
from ...enums import ApiKeyScope, Role
from ...errors import NotFound, Unauthorized, ValidationFailed
from ...models import ApiKey
from ...pagination import Ordering, Page, PageRequest, paginate

PREFIX = "crm_"
LOOKUP_BYTES = 6  # 12 hex characters
SECRET_BYTES = 32  # 43 characters of URL-safe base64
_SHAPE = re.compile(r"crm_([0-9a-f]{12})_[A-Za-z0-9_-]{43}")
# last_used_at is written at most this often per key, whatever the traffic.
TOUCH_EVERY = dt.timedelta(minutes=1)

ORDERING = Ordering("id", ApiKey.id, ApiKey.id, descending=True)


def new_key() -> tuple[str, str]:
    """(lookup, key) of a fresh key."""
    lookup = secrets.token_hex(LOOKUP_BYTES)
    return lookup, f"{PREFIX}{lookup}_{secrets.token_urlsafe(SECRET_BYTES)}"


def lookup_of(key: str) -> str | None:
    """The lookup part of a well-formed key, None if the string is not shaped like one."""
    match = _SHAPE.fullmatch(key)
    return match.group(1) if match else None


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def visible_prefix(lookup: str) -> str:
    """How lists name a key: its first, public part."""
    return f"{PREFIX}{lookup}"


# --- the request path ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyFacts:
    """What a request needs to know of a key, read in one query."""

    id: int
    organization_id: int
    user_id: int
    scope: ApiKeyScope
    secret_hash: str
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None
    last_used_at: dt.datetime | None
    role: Role  # the user's role in the key's organization now
    read_at: dt.datetime  # the database's clock when these were read


# Built once (it runs on the request path). The join is the membership the key belongs to:
# without it there is no key (ON DELETE CASCADE).
_FACTS_SQL = text(
    "SELECT k.id, k.organization_id, k.user_id, k.scope, k.secret_hash, k.expires_at,"
    " k.revoked_at, k.last_used_at, m.role, now()"
    " FROM api_keys k JOIN organization_members m"
    " ON m.organization_id = k.organization_id AND m.user_id = k.user_id"
    " WHERE k.lookup = :lookup"
)
_TOUCH_SQL = text(
    "UPDATE api_keys SET last_used_at = now()"
    " WHERE id = :id AND (last_used_at IS NULL OR last_used_at <= now() - :every)"
)


def facts(conn: Connection, lookup: str) -> KeyFacts | None:
    row = conn.execute(_FACTS_SQL, {"lookup": lookup}).one_or_none()
    if row is None:
        return None
    return KeyFacts(
        id=row[0],
        organization_id=row[1],
        user_id=row[2],
        scope=ApiKeyScope(row[3]),
        secret_hash=row[4],
        expires_at=row[5],
        revoked_at=row[6],
        last_used_at=row[7],
        role=Role(row[8]),
        read_at=row[9],
    )


def verify(found: KeyFacts | None, key: str, now: dt.datetime) -> KeyFacts:
    """The key's facts if `key` is the key they describe and it may be used now; 401 with
    API_KEY_INVALID (unknown, or the secret does not match), API_KEY_REVOKED or
    API_KEY_EXPIRED otherwise. Revoked and expired are told only to whoever holds the key."""
    if found is None or not hmac.compare_digest(digest(key), found.secret_hash):
        raise Unauthorized("Invalid API key", code="API_KEY_INVALID")
    if found.revoked_at is not None:
        raise Unauthorized("This API key has been revoked", code="API_KEY_REVOKED")
    if found.expires_at is not None and found.expires_at <= now:
        raise Unauthorized("This API key has expired", code="API_KEY_EXPIRED")
    return found


def needs_touch(found: KeyFacts) -> bool:
    return found.last_used_at is None or found.read_at - found.last_used_at >= TOUCH_EVERY


def touch(conn: Connection, key_id: int) -> None:
    """Mark the key used now, unless it was marked within TOUCH_EVERY (by any process)."""
    conn.execute(_TOUCH_SQL, {"id": key_id, "every": TOUCH_EVERY})


# --- managing keys ---------------------------------------------------------------------------


def create(
    session: Session,
    actor: Actor,
    *,
    name: str,
    scope: ApiKeyScope,
    expires_at: dt.datetime | None = None,
) -> tuple[ApiKey, str]:
    """A new key of the actor's for the actor's organization: (row, key). The key is not
    stored: the caller shows it once."""
    if expires_at is not None and expires_at <= dt.datetime.now(dt.UTC):
        raise ValidationFailed(
            "expires_at must be in the future",
            code="VALIDATION_ERROR",
            details={"errors": {"json": {"expires_at": ["Must be in the future."]}}},
        )
    lookup, key = new_key()
    row = ApiKey(
        organization_id=actor.organization_id,
        user_id=actor.user_id,
        name=name,
        scope=scope,
        lookup=lookup,
        secret_hash=digest(key),
        expires_at=expires_at,
    )
    session.add(row)
    session.flush()
    fields = ("user_id", "name", "scope", "expires_at")
    changes = {f: (None, getattr(row, f)) for f in fields}
    audit.record(session, row.organization_id, "api_key.created", "api_key", row.id, changes)
    return row, key


def _visible(actor: Actor) -> list[ColumnElement[bool]]:
    """Owners and admins see every key of the organization; everyone else their own."""
    where = [
        ApiKey.organization_id == actor.organization_id,
        ApiKey.revoked_at.is_(None),
    ]
    if actor.role not in rules.SETTINGS_ROLES:
        where.append(ApiKey.user_id == actor.user_id)
    return where


def list_keys(session: Session, actor: Actor, request: PageRequest) -> Page[ApiKey]:
    """The keys the actor may see and revoke, newest first (revoked keys are gone)."""
    return paginate(session, select(ApiKey).where(*_visible(actor)), request, ORDERING)


def revoke(session: Session, actor: Actor, key_id: int) -> None:
    """Revoke at once (the next request with it is refused). A key the actor may not see,
    another organization's included, is not found."""
    done = session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, *_visible(actor))
        .values(revoked_at=dt.datetime.now(dt.UTC))
        .returning(ApiKey.id)
        .execution_options(synchronize_session=False)
    ).scalar()
    if done is None:
        raise NotFound("API key not found", code="API_KEY_NOT_FOUND")
    audit.record(session, actor.organization_id, "api_key.revoked", "api_key", key_id)
