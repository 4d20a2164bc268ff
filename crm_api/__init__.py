"""The HTTP API: Flask + flask-smorest over the crm_domain services."""

from __future__ import annotations

from typing import Any

import redis
from flask import Flask, redirect, send_from_directory, url_for
from swagger_ui_bundle import swagger_ui_path
from werkzeug.middleware.proxy_fix import ProxyFix

from crm_domain.counting import LargeCountCache
from crm_domain.db import Database
from crm_domain.passwords import PasswordHasher
from crm_domain.services.reporting.analytics_cache import AnalyticsCache
from crm_domain.settings import Settings
from crm_worker import consumers

from . import health
from .access import ORG_HEADER, AccessMemo, VerifiedTokens
from .cli import crm
from .errors import register_error_handlers
from .extensions import (
    API_KEY_SCHEME,
    BEARER_SCHEME,
    IDEMPOTENCY_PARAMETER,
    IDEMPOTENCY_REUSED_RESPONSE,
    ORG_PARAMETER,
    Api,
)
from .idempotency import HEADER as IDEMPOTENCY_HEADER
from .idempotency import MAX_KEY_LENGTH as IDEMPOTENCY_KEY_LENGTH
from .jwt import init_jwt
from .key_auth import KeyVerifier
from .login_backoff import init_login_backoff
from .metrics import init_metrics
from .observability import init_observability
from .openapi import TEXT_RULES, document
from .proxies import ProxyCheck, ProxyWarnings
from .ratelimit import init_rate_limits
from .resources import MODULES
from .routing import IdConverter
from .slow_clients import MAX_CONTENT_LENGTH, init_slow_clients

API_PREFIX = "/api/v1"
SWAGGER_ASSETS = "/api/v1/docs/assets/"


def create_app(settings: Settings | None = None, **config: Any) -> Flask:
    """Build the WSGI app. `config` overrides Flask config keys (tests use this)."""
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=settings.secret_key,
        JWT_SECRET_KEY=settings.secret_key,
        BCRYPT_ROUNDS=settings.bcrypt_rounds,
        REFRESH_REUSE_GRACE_SECONDS=settings.refresh_reuse_grace_seconds,
        RATELIMIT_ENABLED=settings.ratelimit_enabled,
        RATELIMIT_API=settings.ratelimit_api,
        RATELIMIT_LOGIN=settings.ratelimit_login,
        RATELIMIT_LOGIN_FREE_FAILURES=settings.ratelimit_login_free_failures,
        RATELIMIT_LOGIN_MAX_DELAY=settings.ratelimit_login_max_delay,
        RATELIMIT_LOGIN_KNOWN_DAYS=settings.ratelimit_login_known_days,
        RATELIMIT_AUTH_ADDRESS=settings.ratelimit_auth_address,
        RATELIMIT_SYNC_MS=settings.ratelimit_sync_ms,
        OUTBOX_DISPATCH="celery",
        API_TITLE="CRM API",
        API_VERSION="v1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX=API_PREFIX,
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="/docs",
        OPENAPI_SWAGGER_UI_URL=SWAGGER_ASSETS,
        OPENAPI_SWAGGER_UI_CONFIG={"persistAuthorization": True},
        API_SPEC_OPTIONS={
            "security": [{BEARER_SCHEME: []}],
            "info": {
                "description": (
                    "Multi-tenant CRM. Authenticate with `Authorization: Bearer <access_token>`"
                    f" and choose the organization with the `{ORG_HEADER}` header, or with an"
                    " API key (`Authorization: Bearer crm_...`, made with `POST /api-keys`),"
                    " which acts as its user in its own organization. POST and PATCH take an"
                    f" `{IDEMPOTENCY_HEADER}` header (safe retries). " + TEXT_RULES
                )
            },
        },
        MAX_CONTENT_LENGTH=MAX_CONTENT_LENGTH,
    )
    app.config.update(config)
    init_observability(app)  # outermost: request id, metrics and access-log fields
    app.json.sort_keys = False  # type: ignore[attr-defined]

    db = Database.from_settings(settings)
    app.extensions["crm_db"] = db
    app.extensions["crm_settings"] = settings
    app.extensions["crm_verified_tokens"] = VerifiedTokens()
    app.extensions["crm_access_memo"] = AccessMemo(settings.access_check_cache_seconds)
    app.extensions["crm_key_verifier"] = KeyVerifier(db, settings.access_check_cache_seconds)
    app.extensions["crm_passwords"] = PasswordHasher(
        app.config["BCRYPT_ROUNDS"], max_concurrent=settings.password_hash_concurrency
    )
    # Short timeouts: when Redis is down the API answers from the database instead.
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=0.5, socket_timeout=1)
    app.extensions["crm_analytics"] = AnalyticsCache(client, db, settings.redis_key_prefix)
    db.count_cache = LargeCountCache(client, settings.redis_key_prefix, identity=db.identity)
    consumers.install()  # the domain's outbox consumers, for whatever delivers in this process
    _install_outbox_publisher(app, db, client, settings)

    init_jwt(
        app, access_minutes=settings.access_token_minutes, refresh_days=settings.refresh_token_days
    )
    register_error_handlers(app)
    init_slow_clients(app)
    if settings.trusted_proxies > 0:  # the client address is the one these proxies saw
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies)  # type: ignore[method-assign]
    proxy_warnings = ProxyWarnings(client, settings.redis_key_prefix)
    app.extensions["crm_proxy_warnings"] = proxy_warnings
    app.wsgi_app = ProxyCheck(  # type: ignore[method-assign]
        app.wsgi_app, trusted=settings.trusted_proxies, warnings=proxy_warnings
    )
    init_rate_limits(app, redis_url=settings.redis_url, key_prefix=settings.redis_key_prefix)
    init_login_backoff(app, redis_url=settings.redis_url, key_prefix=settings.redis_key_prefix)

    # every `<int:...>` path parameter is an id in 1..2**31-1 (404 otherwise, never a 500)
    app.url_map.converters["int"] = IdConverter
    api = Api(app)
    document(api)
    api.spec.components.security_scheme(
        BEARER_SCHEME, {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    )
    api.spec.components.security_scheme(
        API_KEY_SCHEME,
        {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "crm_ API key",
            "description": "An API key (`crm_...`, from POST /api-keys): acts as its user in"
            " its organization with the user's current role; a `read` key only reads.",
        },
    )
    api.spec.components.parameter(
        ORG_PARAMETER,
        "header",
        {
            "name": ORG_HEADER,
            "required": False,
            "description": "Id of the organization the request acts in: required with an"
            " access token (400 without it); with an API key optional, and if given it must"
            " be the key's organization (403)",
            "schema": {"type": "integer", "minimum": 1},
        },
    )
    api.spec.components.parameter(
        IDEMPOTENCY_PARAMETER,
        "header",
        {
            "name": IDEMPOTENCY_HEADER,
            "required": False,
            "description": "A key of your choosing (a UUID): the same key with the same"
            " request by the same caller within IDEMPOTENCY_KEY_HOURS (24 by default) gets"
            " the first answer again, with `Idempotent-Replayed: true`, and does nothing"
            " twice. The same key with another request: 422 IDEMPOTENCY_KEY_REUSED; while the"
            " first is still running: 409 IDEMPOTENCY_KEY_IN_USE (retry).",
            "schema": {
                "type": "string",
                "minLength": 1,
                "maxLength": IDEMPOTENCY_KEY_LENGTH,
                "pattern": "^[\\x20-\\x7e]+$",
            },
        },
    )
    api.spec.components.response(
        IDEMPOTENCY_REUSED_RESPONSE,
        {
            "description": "The Idempotency-Key was used before with another request"
            " (IDEMPOTENCY_KEY_REUSED)",
            "content": {"application/json": {"schema": api.ERROR_SCHEMA}},
        },
    )
    for module in MODULES:
        api.register_blueprint(module.blp, url_prefix=f"{API_PREFIX}{module.blp.url_prefix}")
    app.register_blueprint(health.bp)
    app.cli.add_command(crm)
    init_metrics(app, settings, db, app.extensions["crm_analytics"])

    @app.get(API_PREFIX, strict_slashes=False)
    def api_index() -> Any:
        """What `/api/v1` is: links to the docs, the OpenAPI document and the probes."""
        return {
            "name": app.config["API_TITLE"],
            "version": app.config["API_VERSION"],
            "links": {
                "docs": f"{API_PREFIX}/docs",
                "openapi": f"{API_PREFIX}/openapi.json",
                "health": url_for("health.health"),
                "ready": url_for("health.ready"),
            },
        }

    @app.get(f"{API_PREFIX}/docs/")
    def swagger_ui_slash() -> Any:
        """`/api/v1/docs/` (a trailing slash) is the same page: a permanent redirect."""
        return redirect(url_for("api-docs.openapi_swagger_ui"), code=308)

    @app.route(f"{SWAGGER_ASSETS}<path:filename>")
    def swagger_assets(filename: str) -> Any:
        """Swagger UI assets from the installed swagger-ui-bundle (works offline)."""
        return send_from_directory(str(swagger_ui_path), filename)

    return app


def _install_outbox_publisher(
    app: Flask, db: Database, client: redis.Redis, settings: Settings
) -> None:
    """How committed outbox events reach delivery: "celery" (a worker's drain task, the
    default: beat asks for it when PostgreSQL notifies the commit, or with OUTBOX_WAKE=publish
    this process does), "inline" (delivered in-process right after the commit; imports run
    there too) or "none" (beat re-dispatch only)."""
    mode = app.config["OUTBOX_DISPATCH"]
    if mode == "inline":
        from crm_worker.bulk_running import run_bulk_action
        from crm_worker.importing import run_import

        db.publisher = consumers.inline_publisher(
            db,
            app.extensions["crm_analytics"],
            lambda job_id: run_import(db, job_id, settings),
            lambda job_id: run_bulk_action(db, job_id, settings),
        )
    elif mode == "celery" and settings.outbox_wake == "publish":
        from crm_worker.dispatch import DrainFlag, DrainWaker

        db.publisher = DrainWaker(DrainFlag(client, settings.redis_key_prefix), _send_drain)
    else:  # "none", or OUTBOX_WAKE=notify: beat hears of the commit (crm_worker.outbox_listener)
        db.publisher = None


def _send_drain() -> None:
    """Publish a drain task through the worker's Celery app, imported on the first wake-up
    (after gunicorn forked its workers)."""
    from crm_worker.publishing import send_drain

    send_drain()
