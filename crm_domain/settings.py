"""Settings read from the environment (shared by the API, the workers and the tools)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from environs import Env
from marshmallow.validate import OneOf

from .logs import FORMATS as LOG_FORMATS

log = logging.getLogger(__name__)

DEFAULT_DATABASE_URL = "postgresql+psycopg://root@127.0.0.1:5432/crm"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
INSECURE_SECRET = "dev-insecure-secret-change-me-0123456789abcdef"


def normalize_db_url(url: str) -> str:
    """Make any postgres URL use the psycopg 3 driver."""
    for prefix in ("postgresql+psycopg2://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str = DEFAULT_REDIS_URL
    secret_key: str = INSECURE_SECRET
    access_token_minutes: int = 15
    refresh_token_days: int = 7
    bcrypt_rounds: int = 12
    db_pool_size: int = 5
    flower_basic_auth: str = "admin:admin"
    environment: str = "development"
    redis_key_prefix: str = "crm"
    outbox_redispatch_seconds: float = 15.0
    analytics_refresh_seconds: float = 300.0
    reminder_interval_seconds: float = 3600.0
    access_check_cache_seconds: float = 1.0
    body_read_timeout: float = 10.0
    log_format: str = "text"
    metrics_token: str = ""
    metrics_cache_seconds: float = 5.0
    worker_metrics_dir: str = ""

    @classmethod
    def from_env(cls) -> Settings:
        env = Env()
        env.read_env(override=False)
        settings = cls(
            database_url=normalize_db_url(env.str("DATABASE_URL", DEFAULT_DATABASE_URL)),
            redis_url=env.str("REDIS_URL", DEFAULT_REDIS_URL),
            secret_key=env.str("SECRET_KEY", INSECURE_SECRET),
            access_token_minutes=env.int("ACCESS_TOKEN_MINUTES", 15),
            refresh_token_days=env.int("REFRESH_TOKEN_DAYS", 7),
            bcrypt_rounds=env.int("BCRYPT_ROUNDS", 12),
            db_pool_size=env.int("DB_POOL_SIZE", 5),
            flower_basic_auth=env.str("FLOWER_BASIC_AUTH", "admin:admin"),
            environment=env.str("CRM_ENV", "development"),
            redis_key_prefix=env.str("REDIS_KEY_PREFIX", "crm"),
            outbox_redispatch_seconds=env.float("OUTBOX_REDISPATCH_SECONDS", 15.0),
            analytics_refresh_seconds=env.float("ANALYTICS_REFRESH_SECONDS", 300.0),
            reminder_interval_seconds=env.float("REMINDER_INTERVAL_SECONDS", 3600.0),
            access_check_cache_seconds=env.float("ACCESS_CHECK_CACHE_SECONDS", 1.0),
            body_read_timeout=env.float("BODY_READ_TIMEOUT", 10.0),
            log_format=log_format_from_env(env),
            metrics_token=env.str("METRICS_TOKEN", ""),
            metrics_cache_seconds=env.float("METRICS_CACHE_SECONDS", 5.0),
            worker_metrics_dir=env.str("WORKER_METRICS_DIR", ""),
        )
        if settings.secret_key == INSECURE_SECRET:
            if settings.environment == "production":
                raise RuntimeError("SECRET_KEY must be set when CRM_ENV=production")
            log.warning("SECRET_KEY is not set: using an insecure development key")
        return settings


def log_format_from_env(env: Env | None = None) -> str:
    """LOG_FORMAT: "text" (default) or "json" (gunicorn.conf.py reads only this)."""
    if env is None:
        env = Env()
        env.read_env(override=False)
    return str(env.str("LOG_FORMAT", "text", validate=OneOf(LOG_FORMATS)))
