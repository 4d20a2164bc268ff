"""Idempotent writes: the first answer to a request sent with an idempotency key, kept for a
day and given again to the same caller instead of doing the work twice.

The row and the change share one transaction. `claim` inserts the key's row as the first
statement of the request's transaction; the request then does its work and `record`s its
answer on the row before that transaction commits. So a committed change always has its
answer stored and an answer never exists without its change: a crash or an error anywhere
before the commit leaves neither.

The unique index on (caller, key) also serializes concurrent requests with one key: a second
INSERT of the same key waits for the first transaction to end (PostgreSQL's check of a unique
index waits on an uncommitted conflicting entry). When the first commits, the second finds
the stored answer and gives it back; when it rolls back, the second inserts and does the
work itself. The wait is bounded by `lock_timeout` (KeyInUse after `wait` seconds: the client
retries later and gets the answer then).

A caller is a user, or one API key of that user, in one organization (`Scope`); a key used by
another caller is another key. Rows expire after `ttl` (`expires_at`); an expired row is
taken over by the next claim, and beat purges them (`purge_expired`)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import CursorResult, text, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from .errors import Conflict, Unprocessable
from .models import IdempotencyKey

LOCK_NOT_AVAILABLE = "55P03"  # SQLSTATE of a lock wait that ran into lock_timeout


@dataclass(frozen=True, slots=True)
class Scope:
    """Whose keys these are: a user, or one of their API keys, in an organization."""

    organization_id: int  # 0: a route outside any organization
    user_id: int
    api_key_id: int = 0  # 0: a login token


@dataclass(frozen=True, slots=True)
class Answer:
    """A stored answer: status, the headers worth repeating, the body's bytes."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class KeyInUse(Conflict):
    """The key's first request is still running (after waiting `wait` seconds for it)."""

    code = "IDEMPOTENCY_KEY_IN_USE"


class KeyReused(Unprocessable):
    """The key was first used for another request (method, path, query or body)."""

    code = "IDEMPOTENCY_KEY_REUSED"


_LOCK_TIMEOUT = text(
    "SELECT current_setting('lock_timeout'), set_config('lock_timeout', :timeout, true)"
)
_RESTORE_LOCK_TIMEOUT = text("SELECT set_config('lock_timeout', :timeout, true)")
_CLAIM = text(
    "INSERT INTO idempotency_keys AS k"
    " (organization_id, user_id, api_key_id, key, fingerprint, expires_at)"
    " VALUES (:organization_id, :user_id, :api_key_id, :key, :fingerprint, now() + :ttl)"
    " ON CONFLICT (organization_id, user_id, api_key_id, key) DO UPDATE"
    " SET fingerprint = excluded.fingerprint, created_at = now(),"
    " expires_at = excluded.expires_at, status = NULL, headers = NULL, body = NULL"
    " WHERE k.expires_at <= now()"
    " RETURNING k.id"
)
_STORED = text(
    "SELECT fingerprint, status, headers, body FROM idempotency_keys"
    " WHERE organization_id = :organization_id AND user_id = :user_id"
    " AND api_key_id = :api_key_id AND key = :key"
)
_PURGE = text(
    "DELETE FROM idempotency_keys WHERE id IN (SELECT id FROM idempotency_keys"
    " WHERE expires_at <= now() ORDER BY expires_at LIMIT :batch FOR UPDATE SKIP LOCKED)"
)


def claim(
    session: Session,
    scope: Scope,
    key: str,
    fingerprint: str,
    *,
    ttl: dt.timedelta,
    wait: float,
) -> int | Answer:
    """Run first in the request's transaction. The row's id when this request is the key's
    first use (do the work, then `record` the answer before committing); the stored Answer
    when an earlier request with the same fingerprint committed one (roll back, answer it).
    KeyReused when that earlier request was another one; KeyInUse when it is still running
    after `wait` seconds."""
    params = {
        "organization_id": scope.organization_id,
        "user_id": scope.user_id,
        "api_key_id": scope.api_key_id,
        "key": key,
    }
    timeout = f"{max(1, round(wait * 1000))}ms"
    previous = session.execute(_LOCK_TIMEOUT, {"timeout": timeout}).one()[0]
    try:
        row_id = session.execute(
            _CLAIM, {**params, "fingerprint": fingerprint, "ttl": ttl}
        ).scalar()
    except OperationalError as exc:
        if getattr(exc.orig, "sqlstate", None) == LOCK_NOT_AVAILABLE:
            raise KeyInUse(
                "A request with this Idempotency-Key is still being processed; retry shortly",
                details={"retry_after": 1},
            ) from exc
        raise
    session.execute(_RESTORE_LOCK_TIMEOUT, {"timeout": previous})
    if row_id is not None:
        return int(row_id)
    stored = session.execute(_STORED, params).one()
    if stored.fingerprint != fingerprint:
        raise KeyReused(
            "This Idempotency-Key was already used for a different request",
            details={"idempotency_key": key},
        )
    if stored.status is None:  # not written by this module: never answered
        raise KeyInUse("This Idempotency-Key has no answer yet; retry shortly")
    return Answer(stored.status, dict(stored.headers or {}), bytes(stored.body or b""))


def record(session: Session, row_id: int, answer: Answer) -> None:
    """Store the answer on the claimed row, in the same transaction as the change."""
    session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.id == row_id)
        .values(status=answer.status, headers=answer.headers, body=answer.body)
    )


def purge_expired(session: Session, *, batch: int = 1000) -> int:
    """Delete up to `batch` expired rows (skipping rows a claim holds); how many went."""
    result = cast(CursorResult[Any], session.execute(_PURGE, {"batch": batch}))
    return result.rowcount or 0
