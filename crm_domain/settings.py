"""Settings read from the environment (shared by the API, the workers and the tools)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from environs import Env
from marshmallow.validate import OneOf

from .logs import FORMATS as LOG_FORMATS

log = logging.getLogger(__name__)

DEFAULT_DATABASE_URL = "postgresql+psycopg://root@127.0.0.1:5432/crm"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
INSECURE_SECRET = "dev-insecure-secret-change-me-0123456789abcdef"
# Seconds before each retry of a webhook delivery (jitter is added): 5 s, 5 min, 30 min, 2 h,
# 5 h, 10 h; the first attempt is immediate, so 7 attempts over about 17.6 hours.
DEFAULT_WEBHOOK_RETRY_SCHEDULE = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0)


def normalize_db_url(url: str) -> str:
    """Make any postgres URL use the psycopg 3 driver."""
    for prefix in ("postgresql+psycopg2://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def read_env() -> Env:
    """The environment, and `.env` in the working directory for what it does not say.

    The working directory, not this package's folder (environs' default start), which an
    installed package (the Docker image's) never has a `.env` in; and no walking up into
    the parent directories."""
    env = Env()
    env.read_env(str(Path.cwd() / ".env"), recurse=False, override=False)
    return env


SMTP_TLS_MODES = ("starttls", "ssl", "none")
DB_POOLS = ("queue", "null")
OUTBOX_WAKES = ("notify", "publish")


@dataclass(frozen=True)
class MailSettings:
    """Outgoing e-mail. Without `smtp_host` messages are written to `mail_dir` and the log."""

    smtp_host: str = ""
    smtp_port: int = 587
    smtp_tls: str = "starttls"  # starttls | ssl | none
    smtp_user: str = ""
    smtp_password: str = ""
    smtp_timeout: float = 10.0
    mail_from: str = "CRM <no-reply@localhost>"
    mail_dir: str = ".data/mail"
    public_base_url: str = "http://127.0.0.1:8000"
    sweep_seconds: float = 60.0
    digest_hour: int = 7

    @classmethod
    def from_env(cls, env: Env) -> MailSettings:
        tls = env.str("SMTP_TLS", "starttls").lower()
        if tls not in SMTP_TLS_MODES:
            raise ValueError(f"SMTP_TLS must be one of {', '.join(SMTP_TLS_MODES)}, not {tls!r}")
        default_port = {"starttls": 587, "ssl": 465, "none": 25}[tls]
        return cls(
            smtp_host=env.str("SMTP_HOST", ""),
            smtp_port=env.int("SMTP_PORT", default_port),
            smtp_tls=tls,
            smtp_user=env.str("SMTP_USER", ""),
            smtp_password=env.str("SMTP_PASSWORD", ""),
            smtp_timeout=env.float("SMTP_TIMEOUT", 10.0),
            mail_from=env.str("MAIL_FROM", cls.mail_from),
            mail_dir=env.str("MAIL_DIR", cls.mail_dir),
            public_base_url=env.str("PUBLIC_BASE_URL", cls.public_base_url).rstrip("/"),
            sweep_seconds=env.float("EMAIL_SWEEP_SECONDS", 60.0),
            digest_hour=env.int("EMAIL_DIGEST_HOUR", 7),
        )


@dataclass(frozen=True)
class ClientDeadlines:
    """How long the web server waits for a slow client (crm_api.web_worker), in seconds. Past
    a deadline the client gets 408 and the connection is closed."""

    header: float = 10.0  # the whole request head (request line and headers), from its first byte
    body_idle: float = 10.0  # each pause between two pieces of a request body
    body_total: float = 120.0  # the whole body, however steadily it trickles

    @classmethod
    def from_env(cls, env: Env) -> ClientDeadlines:
        deadlines = cls(
            header=env.float("HEADER_READ_TIMEOUT", cls.header),
            body_idle=env.float("BODY_READ_TIMEOUT", cls.body_idle),
            body_total=env.float("BODY_TOTAL_TIMEOUT", cls.body_total),
        )
        if min(deadlines.header, deadlines.body_idle, deadlines.body_total) <= 0:
            raise ValueError(
                "HEADER_READ_TIMEOUT, BODY_READ_TIMEOUT and BODY_TOTAL_TIMEOUT must be positive"
            )
        return deadlines


@dataclass(frozen=True)
class Admission:
    """How much one web worker takes on (crm_api.web_worker): it runs at most `max_running`
    complete requests at once and keeps at most `max_queued` more waiting for a turn; past
    that, a request gets 503 with Retry-After before the application sees it. /health and
    /ready are never turned away."""

    max_running: int = 0  # 0: the worker's threads less one (a thread stays free for probes)
    max_queued: int = 4

    @classmethod
    def from_env(cls, env: Env) -> Admission:
        admission = cls(
            max_running=env.int("WEB_MAX_RUNNING", cls.max_running),
            max_queued=env.int("WEB_MAX_QUEUED", cls.max_queued),
        )
        if admission.max_running < 0 or admission.max_queued < 0:
            raise ValueError("WEB_MAX_RUNNING and WEB_MAX_QUEUED must not be negative")
        return admission

    def running_for(self, threads: int) -> int:
        """The number of requests a worker of `threads` threads runs at once."""
        return self.max_running or max(1, threads - 1)


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str = DEFAULT_REDIS_URL
    # Celery's broker: Redis (the default, REDIS_URL) or RabbitMQ (amqp://). Redis stays the
    # analytics store, list-total cache, rate-limit store and outbox drain flag either way.
    celery_broker_url: str = DEFAULT_REDIS_URL
    secret_key: str = INSECURE_SECRET
    mail: MailSettings = field(default_factory=MailSettings)
    invitation_days: int = 7
    access_token_minutes: int = 15
    refresh_token_days: int = 7
    bcrypt_rounds: int = 12
    db_pool_size: int = 5
    # "queue" (a pool per process) or "null" (a connection per checkout: PgBouncer pools).
    db_pool: str = "queue"
    # Server-side prepared statements (psycopg prepares a query after 5 runs). Turn off
    # behind a transaction-mode pooler that cannot track them (PgBouncer < 1.22).
    db_prepared_statements: bool = True
    flower_basic_auth: str = "admin:admin"
    environment: str = "development"
    redis_key_prefix: str = "crm"
    outbox_redispatch_seconds: float = 15.0
    # How the drain hears of new outbox events: "notify" (beat LISTENs for the NOTIFY that a
    # trigger sends at commit: the API publishes nothing) or "publish" (the API asks itself).
    outbox_wake: str = "notify"
    outbox_listen_url: str = ""  # the listener's own connection (LISTEN needs a direct one)
    analytics_refresh_seconds: float = 300.0
    reminder_interval_seconds: float = 3600.0
    access_check_cache_seconds: float = 1.0
    client_deadlines: ClientDeadlines = field(default_factory=ClientDeadlines)
    admission: Admission = field(default_factory=Admission)
    password_hash_concurrency: int = 1
    refresh_reuse_grace_seconds: float = 10.0
    ratelimit_enabled: bool = True
    ratelimit_api: str = "6000/minute"
    ratelimit_login: str = "10/minute"
    # Failed logins per account (crm_api.login_backoff): free ones, then doubling waits.
    ratelimit_login_free_failures: int = 10
    ratelimit_login_max_delay: int = 300
    ratelimit_login_known_days: int = 30
    ratelimit_auth_address: str = "30/minute"
    # The API limit is counted in process and synced to Redis this often (0: every hit in Redis).
    ratelimit_sync_ms: int = 200
    trusted_proxies: int = 0
    installation_check_seconds: float = 5.0
    # Outbound webhooks (see crm_domain.services.delivery.webhooks and crm_worker.webhook_sender).
    webhooks_allow_private: bool = False
    webhook_timeout_seconds: float = 5.0
    webhook_retry_schedule: tuple[float, ...] = DEFAULT_WEBHOOK_RETRY_SCHEDULE
    webhook_dispatch_seconds: float = 5.0
    webhook_disable_after_hours: float = 120.0
    webhook_disable_after_failed_events: int = 50
    import_max_bytes: int = 20 * 1024 * 1024
    import_batch_size: int = 500
    import_stall_seconds: float = 60.0
    # Idempotent writes: how long an answer is kept for its key, how long a request waits for
    # the same key's first request to finish before answering 409.
    idempotency_key_hours: float = 24.0
    idempotency_wait_seconds: float = 5.0
    # The audit log keeps entries this long; beat purges older ones (and the feed loses them).
    audit_retention_days: int = 365
    # Beat purges what has been in the trash longer than this for good (services.records.trash).
    trash_retention_days: float = 30.0
    log_format: str = "text"
    metrics_token: str = ""
    metrics_cache_seconds: float = 5.0
    worker_metrics_dir: str = ""

    @classmethod
    def from_env(cls) -> Settings:
        env = read_env()
        redis_url = env.str("REDIS_URL", DEFAULT_REDIS_URL)
        db_pool = env.str("DB_POOL", "queue").lower()
        if db_pool not in DB_POOLS:
            raise ValueError(f"DB_POOL must be one of {', '.join(DB_POOLS)}, not {db_pool!r}")
        outbox_wake = env.str("OUTBOX_WAKE", "notify").lower()
        if outbox_wake not in OUTBOX_WAKES:
            raise ValueError(
                f"OUTBOX_WAKE must be one of {', '.join(OUTBOX_WAKES)}, not {outbox_wake!r}"
            )
        settings = cls(
            database_url=normalize_db_url(env.str("DATABASE_URL", DEFAULT_DATABASE_URL)),
            redis_url=redis_url,
            celery_broker_url=env.str("CELERY_BROKER_URL", "") or redis_url,
            secret_key=env.str("SECRET_KEY", INSECURE_SECRET),
            mail=MailSettings.from_env(env),
            invitation_days=env.int("INVITATION_DAYS", 7),
            access_token_minutes=env.int("ACCESS_TOKEN_MINUTES", 15),
            refresh_token_days=env.int("REFRESH_TOKEN_DAYS", 7),
            bcrypt_rounds=env.int("BCRYPT_ROUNDS", 12),
            db_pool_size=env.int("DB_POOL_SIZE", 5),
            db_pool=db_pool,
            db_prepared_statements=env.bool("DB_PREPARED_STATEMENTS", True),
            flower_basic_auth=env.str("FLOWER_BASIC_AUTH", "admin:admin"),
            environment=env.str("CRM_ENV", "development"),
            redis_key_prefix=env.str("REDIS_KEY_PREFIX", "crm"),
            outbox_redispatch_seconds=env.float("OUTBOX_REDISPATCH_SECONDS", 15.0),
            outbox_wake=outbox_wake,
            outbox_listen_url=env.str("OUTBOX_LISTEN_URL", ""),
            analytics_refresh_seconds=env.float("ANALYTICS_REFRESH_SECONDS", 300.0),
            reminder_interval_seconds=env.float("REMINDER_INTERVAL_SECONDS", 3600.0),
            access_check_cache_seconds=env.float("ACCESS_CHECK_CACHE_SECONDS", 1.0),
            client_deadlines=ClientDeadlines.from_env(env),
            admission=Admission.from_env(env),
            password_hash_concurrency=env.int("PASSWORD_HASH_CONCURRENCY", 1),
            refresh_reuse_grace_seconds=env.float("REFRESH_REUSE_GRACE_SECONDS", 10.0),
            ratelimit_enabled=env.bool("RATELIMIT_ENABLED", True),
            ratelimit_api=env.str("RATELIMIT_API", "6000/minute"),
            ratelimit_login=env.str("RATELIMIT_LOGIN", "10/minute"),
            ratelimit_login_free_failures=env.int("RATELIMIT_LOGIN_FREE_FAILURES", 10),
            ratelimit_login_max_delay=env.int("RATELIMIT_LOGIN_MAX_DELAY", 300),
            ratelimit_login_known_days=env.int("RATELIMIT_LOGIN_KNOWN_DAYS", 30),
            ratelimit_auth_address=env.str("RATELIMIT_AUTH_ADDRESS", "30/minute"),
            ratelimit_sync_ms=env.int("RATELIMIT_SYNC_MS", 200),
            trusted_proxies=env.int("TRUSTED_PROXIES", 0),
            installation_check_seconds=env.float("INSTALLATION_CHECK_SECONDS", 5.0),
            webhooks_allow_private=env.bool("WEBHOOKS_ALLOW_PRIVATE", False),
            webhook_timeout_seconds=env.float("WEBHOOK_TIMEOUT_SECONDS", 5.0),
            webhook_retry_schedule=tuple(
                env.list(
                    "WEBHOOK_RETRY_SCHEDULE",
                    list(DEFAULT_WEBHOOK_RETRY_SCHEDULE),
                    subcast=float,
                )
            ),
            webhook_dispatch_seconds=env.float("WEBHOOK_DISPATCH_SECONDS", 5.0),
            webhook_disable_after_hours=env.float("WEBHOOK_DISABLE_AFTER_HOURS", 120.0),
            webhook_disable_after_failed_events=env.int("WEBHOOK_DISABLE_AFTER_FAILED_EVENTS", 50),
            import_max_bytes=env.int("IMPORT_MAX_BYTES", 20 * 1024 * 1024),
            import_batch_size=env.int("IMPORT_BATCH_SIZE", 500),
            import_stall_seconds=env.float("IMPORT_STALL_SECONDS", 60.0),
            idempotency_key_hours=env.float("IDEMPOTENCY_KEY_HOURS", 24.0),
            audit_retention_days=env.int("AUDIT_RETENTION_DAYS", 365),
            idempotency_wait_seconds=env.float("IDEMPOTENCY_WAIT_SECONDS", 5.0),
            trash_retention_days=env.float("TRASH_RETENTION_DAYS", 30.0),
            log_format=log_format_from_env(env),
            metrics_token=env.str("METRICS_TOKEN", ""),
            metrics_cache_seconds=env.float("METRICS_CACHE_SECONDS", 5.0),
            worker_metrics_dir=env.str("WORKER_METRICS_DIR", ""),
        )
        if any(delay < 0 for delay in settings.webhook_retry_schedule):
            raise RuntimeError("WEBHOOK_RETRY_SCHEDULE must list non-negative seconds")
        if settings.secret_key == INSECURE_SECRET:
            if settings.environment == "production":
                raise RuntimeError("SECRET_KEY must be set when CRM_ENV=production")
            log.warning("SECRET_KEY is not set: using an insecure development key")
        return settings


def log_format_from_env(env: Env | None = None) -> str:
    """LOG_FORMAT: "text" (default) or "json" (gunicorn.conf.py reads only this)."""
    if env is None:
        env = read_env()
    return str(env.str("LOG_FORMAT", "text", validate=OneOf(LOG_FORMATS)))


def client_deadlines_from_env() -> ClientDeadlines:
    """HEADER_READ_TIMEOUT, BODY_READ_TIMEOUT, BODY_TOTAL_TIMEOUT (the web worker reads only
    these, not the whole Settings)."""
    env = Env()
    env.read_env(override=False)
    return ClientDeadlines.from_env(env)


def admission_from_env() -> Admission:
    """WEB_MAX_RUNNING, WEB_MAX_QUEUED (read by the web worker)."""
    env = Env()
    env.read_env(override=False)
    return Admission.from_env(env)
