"""flask-jwt-extended setup: string identities, session-bound tokens, unified 401 errors."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from flask import Flask, Response, current_app
from flask_jwt_extended import JWTManager, create_access_token, create_refresh_token

from crm_domain.services.records.auth import TokenGrant

from .errors import error_response

jwt = JWTManager()


def issue_tokens(user_id: int, session_id: str, grant: TokenGrant) -> tuple[str, str]:
    """(access_token, refresh_token) bound to the login session. Every claim comes from the
    grant and the configured lifetimes, so one grant always encodes to the same two tokens
    (HS256 is deterministic): a refresh replayed within the grace window gets the very pair
    the first one got."""
    issued = grant.issued_at.replace(microsecond=0)  # JWT times are whole seconds
    config = current_app.config
    common = {"sid": session_id, "iat": issued, "nbf": issued}
    access = create_access_token(
        identity=str(user_id),
        additional_claims={
            **common,
            "jti": grant.access_jti,
            "exp": issued + config["JWT_ACCESS_TOKEN_EXPIRES"],
        },
    )
    refresh = create_refresh_token(
        identity=str(user_id),
        additional_claims={
            **common,
            "jti": grant.refresh_jti,
            "exp": issued + config["JWT_REFRESH_TOKEN_EXPIRES"],
        },
    )
    return access, refresh


def new_session_id() -> str:
    return str(uuid.uuid4())


def user_id_of(claims: dict[str, Any]) -> int | None:
    """The user id in a verified token's `sub`, or None when `sub` is not what issue_tokens
    writes (a string of ASCII digits): a validly signed token can still carry anything."""
    sub = claims.get("sub")
    if isinstance(sub, str) and sub.isascii() and sub.isdigit():
        return int(sub)
    return None


def init_jwt(app: Flask, *, access_minutes: int, refresh_days: int) -> None:
    app.config.setdefault("JWT_ACCESS_TOKEN_EXPIRES", dt.timedelta(minutes=access_minutes))
    app.config.setdefault("JWT_REFRESH_TOKEN_EXPIRES", dt.timedelta(days=refresh_days))
    app.config.setdefault("JWT_TOKEN_LOCATION", ["headers"])
    # Tokens travel in headers only, so there is no cookie to protect, and a random csrf
    # claim would keep a refresh replayed within the grace window from re-issuing the same pair.
    app.config.setdefault("JWT_COOKIE_CSRF_PROTECT", False)
    jwt.init_app(app)

    # Revocation (the token's login session) is checked by the views' decorators, in the same
    # query as the tenant membership: see crm_api.extensions.check_access.

    def unauthorized(code: str, message: str) -> Response:
        return error_response(401, code, message)

    @jwt.unauthorized_loader
    def _missing(reason: str) -> Response:
        return unauthorized("UNAUTHORIZED", f"Authentication required: {reason}")

    @jwt.invalid_token_loader
    def _invalid(reason: str) -> Response:
        return unauthorized("INVALID_TOKEN", f"Invalid token: {reason}")

    @jwt.expired_token_loader
    def _expired(_h: dict[str, Any], _p: dict[str, Any]) -> Response:
        return unauthorized("TOKEN_EXPIRED", "Token has expired")

    @jwt.revoked_token_loader
    def _revoked_cb(_h: dict[str, Any], _p: dict[str, Any]) -> Response:
        return unauthorized("TOKEN_REVOKED", "Token has been revoked")

    @jwt.needs_fresh_token_loader
    def _fresh(_h: dict[str, Any], _p: dict[str, Any]) -> Response:
        return unauthorized("FRESH_TOKEN_REQUIRED", "A fresh token is required")

    @jwt.user_lookup_error_loader
    def _lookup(_h: dict[str, Any], _p: dict[str, Any]) -> Response:
        return unauthorized("UNAUTHORIZED", "User not found")

    @jwt.token_verification_failed_loader
    def _claims(_h: dict[str, Any], _p: dict[str, Any]) -> Response:
        return unauthorized("INVALID_TOKEN", "Token claims verification failed")
