"""Rate limits: Flask-Limiter over the app's Redis, one Limiter per app.

Every limit is checked before the view runs (Flask-Limiter's before_request hook) and counts
in Redis, so it holds across processes and hosts:

- API: every route, per API key (`Bearer crm_...`), per user of a valid access token, per
  client address without either. Counted in process and synced with Redis every
  RATELIMIT_SYNC_MS (crm_api.ratelimit_storage): exact within a process; across processes
  late by at most one sync interval, plus under 1 % of the limit per process; 0 counts every
  request in Redis, as the other limits always do.
- Login, per account: failed logins (401) per email and client address.
- Login, per email from any address (a distributed guess): progressive delays instead of a
  limit of this kind, so that nobody can lock the owner out (crm_api.login_backoff).
- Auth, per address: every login, register and refresh attempt, per route and client address
  (bcrypt costs the server ~250 ms a try).

The API limit is the application's; the login and auth limits are the auth blueprint's, so
that other requests do not pay Flask-Limiter's bookkeeping for limits they are exempt from.

Emails are keyed by an HMAC under SECRET_KEY of the casefolded address: no addresses in Redis.
When Redis is unreachable the limits are skipped (logged), never the request (fail open).
`RATELIMIT_ENABLED=false` turns it all off (load generators, the test suite).
/health, /ready and the API docs are never limited."""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, current_app, request
from flask_jwt_extended import decode_token
from flask_limiter import ApplicationLimit, Limiter, RateLimitExceeded

from . import key_auth
from .errors import error_response
from .ratelimit_storage import BATCHED
from .resources.auth import blp as auth_blueprint

LOGIN = "auth.Login"
AUTH_ENTRY_POINTS = frozenset({"auth.Login", "auth.Register", "auth.Refresh"})
UNLIMITED_BLUEPRINTS = frozenset({"health", "api-docs"})
UNLIMITED_ENDPOINTS = frozenset({"swagger_assets", "swagger_ui_slash", "static"})


def client_address() -> str:
    """The peer address (the client's when TRUSTED_PROXIES says how many proxies to skip)."""
    return request.remote_addr or "unknown"


def _token_user() -> str | None:
    """The user id of the request's valid access token, or None."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    # The access check's memo of verified tokens saves a decode when it already knows this one.
    verified = current_app.extensions.get("crm_verified_tokens")
    try:
        hit = verified.get(header) if verified is not None else None
        if hit is not None:
            return str(hit[0]["sub"])
    except Exception:  # its shape is not ours to rely on: decode instead
        pass
    try:
        claims = decode_token(token.strip())
    except Exception:  # invalid, expired, malformed: limited by address, answered 401 later
        return None
    sub = claims.get("sub")
    return sub if claims.get("type") == "access" and isinstance(sub, str) else None


def _api_bucket() -> str:
    try:  # verified once per request (the view reuses it); a memo hit costs one SHA-256
        key = key_auth.request_key()
    except Exception:  # a bad key (answered 401 by the view) or no database: by address
        key = None
    if key is not None:
        return f"key:{key.id}"
    user = _token_user()
    return f"user:{user}" if user is not None else f"addr:{client_address()}"


def email_digest() -> str:
    """HMAC of the casefolded email of a JSON body, or "-" when there is none."""
    try:
        body = request.get_json(silent=True)  # parsed once: the view's parser reads the cache
    except RecursionError:
        body = None
    email = body.get("email") if isinstance(body, dict) else None
    if not isinstance(email, str) or not email.strip():
        return "-"
    key = str(current_app.config["SECRET_KEY"]).encode()
    message = email.strip().casefold().encode("utf-8", "surrogatepass")
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:32]


def _account_key() -> str:
    return f"{email_digest()}:{client_address()}"


def _failed_login(response: Response) -> bool:
    return response.status_code == 401


def _not_login() -> bool:
    return request.endpoint != LOGIN


def _not_auth_entry_point() -> bool:
    return request.endpoint not in AUTH_ENTRY_POINTS


def _per_route(scope: str) -> Callable[[str], str]:
    return lambda endpoint: f"{scope}:{endpoint}"


API_SCOPE = "api"


def _storage_uri(redis_url: str, *, batched: bool) -> str:
    if redis_url.startswith("unix://"):
        redis_url = "redis+unix://" + redis_url[len("unix://") :]
    return BATCHED + redis_url if batched else redis_url


def init_rate_limits(app: Flask, *, redis_url: str, key_prefix: str) -> Limiter:
    """Attach the limits to the app, configured by its RATELIMIT_* keys."""
    config = app.config
    storage_options: dict[str, Any] = {
        # A dead Redis must not hold requests up: short timeouts, then the limits are skipped.
        "socket_connect_timeout": 0.25,
        "socket_timeout": 0.25,
    }
    sync_ms = int(config["RATELIMIT_SYNC_MS"])
    if sync_ms > 0:  # the API limit counted in process (crm_api.ratelimit_storage)
        storage_options.update(sync_ms=sync_ms, batched_scopes=API_SCOPE)
    limiter = Limiter(
        client_address,
        application_limits=[
            ApplicationLimit(config["RATELIMIT_API"], key_function=_api_bucket, scope=API_SCOPE)
        ],
        storage_uri=_storage_uri(redis_url, batched=sync_ms > 0),
        storage_options=storage_options,
        strategy="sliding-window-counter",
        key_prefix=f"{key_prefix}:ratelimit",
        swallow_errors=True,
        # X-RateLimit-* on every answer would cost a Redis read per request; a 429 says when.
        headers_enabled=False,
    )

    # The login and auth limits on the auth routes only: every other request would parse and
    # weigh them (Flask-Limiter's bookkeeping per limit and request) to find itself exempt.
    limiter.shared_limit(
        config["RATELIMIT_LOGIN"],
        "login-account",
        key_func=_account_key,
        exempt_when=_not_login,
        deduct_when=_failed_login,
    )(auth_blueprint)
    limiter.shared_limit(
        config["RATELIMIT_AUTH_ADDRESS"],
        _per_route("auth-address"),
        key_func=client_address,
        exempt_when=_not_auth_entry_point,
    )(auth_blueprint)

    @limiter.request_filter
    def _unlimited() -> bool:
        return request.blueprint in UNLIMITED_BLUEPRINTS or request.endpoint in UNLIMITED_ENDPOINTS

    limiter.init_app(app)

    @app.errorhandler(RateLimitExceeded)
    def _rate_limited(error: RateLimitExceeded) -> Response:
        retry_after = _retry_after(limiter, error)
        return error_response(
            429,
            "RATE_LIMITED",
            f"Too many requests; try again in {retry_after} s",
            {"limit": str(error.limit.limit), "retry_after": retry_after},
            {"Retry-After": str(retry_after)},
        )

    return limiter


def _retry_after(limiter: Limiter, error: RateLimitExceeded) -> int:
    """Seconds until the breached limit lets one more request through."""
    try:
        breached = limiter.current_limit
        if breached is not None:
            return max(1, math.ceil(breached.window.reset_time - time.time()))
    except Exception:  # Redis went away meanwhile: the whole window is a safe answer
        pass
    return max(1, error.limit.limit.get_expiry())
