"""Who is calling, and may they act in this organization: the checks every request makes.

Two per-process memos keep them cheap without weakening them:
- `VerifiedTokens`: an access token's claims once its signature and claims checked out, until
  the token expires. The key is the whole token, so only the exact same signed token hits.
- `AccessMemo`: the answer of the login-session + membership query, for at most
  `ACCESS_CHECK_CACHE_SECONDS` (1 s by default). A session revoked or a member removed by
  another process is refused within that time; this process forgets at once
  (`forget_access()` after its own revocations and membership changes)."""

from __future__ import annotations

import threading
import time
from typing import Any, cast

from flask import current_app, g, request
from flask_jwt_extended import verify_jwt_in_request
from flask_jwt_extended.exceptions import JWTDecodeError

from crm_domain.context import Actor
from crm_domain.db import Database
from crm_domain.enums import Role
from crm_domain.errors import Forbidden, Unauthorized, ValidationFailed
from crm_domain.services.records import auth as auth_service

ORG_HEADER = "X-Organization-Id"
MAX_ORG_ID = 2**31 - 1


class VerifiedTokens:
    """Claims of verified access tokens, by token, until they expire (bounded size)."""

    def __init__(self, maxsize: int = 4096) -> None:
        self.maxsize = maxsize
        self._verified: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}

    def get(self, header: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(claims, JWT header) of a verified, unexpired token."""
        hit = self._verified.get(header)
        if hit is not None and hit[0]["exp"] > time.time():
            return hit
        return None

    def put(self, header: str, claims: dict[str, Any], jwt_header: dict[str, Any]) -> None:
        if len(self._verified) >= self.maxsize:
            self._verified.clear()  # rare; simpler and cheaper than LRU bookkeeping
        self._verified[header] = (claims, jwt_header)


class AccessMemo:
    """(session id, user id, organization id) -> (alive, role), for `ttl` seconds."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._answers: dict[tuple[str, int, int], tuple[float, bool, Role | None]] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int, int]) -> tuple[bool, Role | None] | None:
        hit = self._answers.get(key)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1], hit[2]

    def put(self, key: tuple[str, int, int], alive: bool, role: Role | None) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            if len(self._answers) >= 10_000:
                self._answers.clear()
            self._answers[key] = (time.monotonic() + self.ttl, alive, role)

    def forget(self) -> None:
        with self._lock:
            self._answers.clear()


def database() -> Database:
    return cast(Database, current_app.extensions["crm_db"])


def authenticate() -> dict[str, Any]:
    """Verify the request's access token (401 otherwise) and return its claims."""
    header = request.headers.get("Authorization", "")
    tokens: VerifiedTokens = current_app.extensions["crm_verified_tokens"]
    hit = tokens.get(header) if header else None
    if hit is not None:  # what verify_jwt_in_request leaves for get_jwt() and friends
        g._jwt_extended_jwt, g._jwt_extended_jwt_header = hit
        g._jwt_extended_jwt_user = {"loaded_user": None}
        g._jwt_extended_jwt_location = "headers"
        return hit[0]
    verify_jwt_in_request()
    claims = g._jwt_extended_jwt
    sub, sid = claims.get("sub"), claims.get("sid")
    if not (isinstance(sub, str) and sub.isascii() and sub.isdigit() and isinstance(sid, str)):
        raise JWTDecodeError("Token claims are malformed")
    tokens.put(header, claims, g._jwt_extended_jwt_header)
    return claims


def current_user_id() -> int:
    return int(g._jwt_extended_jwt["sub"])


def check_access(organization_id: int | None) -> Role | None:
    """401 if the token's login session was revoked; otherwise the user's role in
    `organization_id` (None if not a member). One query, memoized for a second."""
    claims = g._jwt_extended_jwt
    key = (claims["sid"], int(claims["sub"]), organization_id or 0)
    memo: AccessMemo = current_app.extensions["crm_access_memo"]
    answer = memo.get(key)
    if answer is None:
        with database().autocommit() as conn:
            answer = auth_service.check_access(
                conn, session_id=key[0], user_id=key[1], organization_id=organization_id
            )
        memo.put(key, *answer)
    active, role = answer
    if not active:
        raise Unauthorized("Token has been revoked", code="TOKEN_REVOKED")
    return role


def forget_access() -> None:
    """After this process revoked a session or changed a membership: no stale answers here."""
    cast(AccessMemo, current_app.extensions["crm_access_memo"]).forget()


def resolve_actor(raw_org_id: str | None) -> Actor:
    """401 for a revoked session, then 400 for a missing or malformed header, then 403 when
    the user is not a member of the organization."""
    value = (raw_org_id or "").strip()
    valid = value.isascii() and value.isdigit() and 0 < int(value) <= MAX_ORG_ID
    org_id = int(value) if valid else None
    role = check_access(org_id)  # a revoked token is a 401 whatever the header says
    if not value:
        raise ValidationFailed(
            f"The {ORG_HEADER} header is required", code="ORGANIZATION_HEADER_REQUIRED"
        )
    if org_id is None:
        raise ValidationFailed(
            f"The {ORG_HEADER} header must be a positive integer",
            code="ORGANIZATION_HEADER_INVALID",
        )
    if role is None:
        raise Forbidden("You are not a member of this organization", code="NOT_ORGANIZATION_MEMBER")
    return Actor(user_id=current_user_id(), organization_id=org_id, role=role)
