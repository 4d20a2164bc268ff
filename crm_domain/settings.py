"""Settings read from the environment (shared by the API, the workers and the tools)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from environs import Env

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
    import_max_bytes: int = 20 * 1024 * 1024
    import_batch_size: int = 500
    import_stall_seconds: float = 60.0

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
            import_max_bytes=env.int("IMPORT_MAX_BYTES", 20 * 1024 * 1024),
            import_batch_size=env.int("IMPORT_BATCH_SIZE", 500),
            import_stall_seconds=env.float("IMPORT_STALL_SECONDS", 60.0),
        )
        if settings.secret_key == INSECURE_SECRET:
            if settings.environment == "production":
                raise RuntimeError("SECRET_KEY must be set when CRM_ENV=production")
            log.warning("SECRET_KEY is not set: using an insecure development key")
        return settings
