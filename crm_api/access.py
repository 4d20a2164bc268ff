"""Who is calling, and may they act in this organization: the checks every request makes.

A request authenticates with an access token (a JWT of a login session) or an API key
(`Bearer crm_...`, crm_api.key_auth). Per-process memos keep the checks cheap without
weakening them:
- `VerifiedTokens`: an access token's claims once its signature and claims checked out, until
  the token expires. The key is the whole token, so only the exact same signed token hits.
- the access memo: the answer of the login-session + membership query, for at most
  `ACCESS_CHECK_CACHE_SECONDS` (1 s by default); an API key's facts and its user's role
  likewise (key_auth). A session or key revoked, a member removed or demoted by another
  process is seen within that time; this process forgets at once (`forget_access()` after
  its own revocations and membership changes).

An API key acts as its user in its own organization only: `X-Organization-Id` may be left
out, another organization's id is a 403, a `read` key gets 403 on every write, and routes
outside an organization (the account's and the organizations' own) take login tokens only."""

from __future__ import annotations

import time
from typing import Any, cast

from flask import current_app, g, request
from flask_jwt_extended import verify_jwt_in_request
from flask_jwt_extended.exceptions import JWTDecodeError

from crm_domain import context
from crm_domain.context import Actor
from crm_domain.db import Database
from crm_domain.enums import ApiKeyScope, Role
from crm_domain.errors import Forbidden, Unauthorized, ValidationFailed
from crm_domain.services.records import auth as auth_service
from crm_domain.services.records.api_keys import KeyFacts

from . import key_auth
from .memo import Memo

ORG_HEADER = "X-Organization-Id"
MAX_ORG_ID = 2**31 - 1
READ_METHODS = frozenset({"GET", "HEAD"})
FORGET_AGAIN = "crm_forget_access_after_commit"  # g: forget once more after a late commit

AccessMemo = Memo[tuple[str, int, int], tuple[bool, Role | None]]


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


def database() -> Database:
    return cast(Database, current_app.extensions["crm_db"])


def authenticate() -> None:
    """Verify the request's access token or API key (401 otherwise) and bind its caller for
    the domain (crm_domain.context.origin)."""
    key = key_auth.request_key()
    if key is not None:
        context.bind_caller(key.user_id, key.id)
        return
    header = request.headers.get("Authorization", "")
    tokens: VerifiedTokens = current_app.extensions["crm_verified_tokens"]
    hit = tokens.get(header) if header else None
    if hit is not None:  # what verify_jwt_in_request leaves for get_jwt() and friends
        g._jwt_extended_jwt, g._jwt_extended_jwt_header = hit
        g._jwt_extended_jwt_user = {"loaded_user": None}
        g._jwt_extended_jwt_location = "headers"
    else:
        verify_jwt_in_request()
        claims = g._jwt_extended_jwt
        sub, sid = claims.get("sub"), claims.get("sid")
        if not (isinstance(sub, str) and sub.isascii() and sub.isdigit() and isinstance(sid, str)):
            raise JWTDecodeError("Token claims are malformed")
        tokens.put(header, claims, g._jwt_extended_jwt_header)
    context.bind_caller(current_user_id())


def request_key() -> KeyFacts | None:
    """The API key the request authenticated with (after `authenticate`), or None."""
    return cast(KeyFacts | None, g.get(key_auth.REQUEST_KEY))


def require_login_token() -> None:
    """403 API_KEY_NOT_ALLOWED when the request authenticated with an API key."""
    if request_key() is not None:
        raise Forbidden(
            "This route needs a login token; API keys are not accepted here",
            code="API_KEY_NOT_ALLOWED",
        )


def current_user_id() -> int:
    key = request_key()
    return key.user_id if key is not None else int(g._jwt_extended_jwt["sub"])


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
        memo.put(key, answer)
    active, role = answer
    if not active:
        raise Unauthorized("Token has been revoked", code="TOKEN_REVOKED")
    return role


def forget_access() -> None:
    """After this process revoked a session or key or changed a membership: no stale answers
    here. (A write held open for its idempotency record forgets once more after its commit.)"""
    cast(AccessMemo, current_app.extensions["crm_access_memo"]).forget()
    key_auth.verifier().forget()
    setattr(g, FORGET_AGAIN, True)


def _org_header(raw_org_id: str | None) -> tuple[str, int | None]:
    value = (raw_org_id or "").strip()
    valid = value.isascii() and value.isdigit() and 0 < int(value) <= MAX_ORG_ID
    return value, int(value) if valid else None


def _check_org_header(value: str, org_id: int | None) -> int:
    if not value:
        raise ValidationFailed(
            f"The {ORG_HEADER} header is required", code="ORGANIZATION_HEADER_REQUIRED"
        )
    if org_id is None:
        raise ValidationFailed(
            f"The {ORG_HEADER} header must be a positive integer",
            code="ORGANIZATION_HEADER_INVALID",
        )
    return org_id


def resolve_actor(raw_org_id: str | None) -> Actor:
    """401 for a revoked session, then 400 for a missing or malformed header, then 403 when
    the user is not a member of the organization."""
    key = request_key()
    if key is not None:
        return _key_actor(key, raw_org_id)
    value, org_id = _org_header(raw_org_id)
    role = check_access(org_id)  # a revoked token is a 401 whatever the header says
    org_id = _check_org_header(value, org_id)
    if role is None:
        raise Forbidden("You are not a member of this organization", code="NOT_ORGANIZATION_MEMBER")
    return Actor(user_id=current_user_id(), organization_id=org_id, role=role)


def _key_actor(key: KeyFacts, raw_org_id: str | None) -> Actor:
    """The key's user in the key's organization. The header may be left out; when given it
    must be well-formed (400) and name the key's organization (403). A read key: 403 on
    every write."""
    value, org_id = _org_header(raw_org_id)
    if value and _check_org_header(value, org_id) != key.organization_id:
        raise Forbidden(
            f"This API key belongs to another organization than {ORG_HEADER} names",
            code="API_KEY_ORGANIZATION_MISMATCH",
        )
    if key.scope is ApiKeyScope.READ and request.method not in READ_METHODS:
        raise Forbidden("This API key may only read", code="API_KEY_READ_ONLY")
    return Actor(
        user_id=key.user_id, organization_id=key.organization_id, role=key.role, api_key_id=key.id
    )
