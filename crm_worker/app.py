"""The Celery application, configured from the shared settings."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import redis
from celery import Celery
from celery.schedules import crontab
from celery.signals import worker_process_init

from crm_domain.db import Database
from crm_domain.services.reporting.analytics_cache import AnalyticsCache
from crm_domain.settings import Settings

from . import (
    consumers,
    observability,  # noqa: F401  (logging and request-id signal handlers)
    quiet,
)
from .broker import broker_config
from .dispatch import DrainFlag
from .names import (
    BULK_ACTION_STALLED_TASK,
    IMPORT_QUEUE,
    SEND_MAIL_TASK,
    SWEEP_STALE_SECONDS,
    SWEEP_STALE_TASK,
    SWEEP_WEBHOOKS_TASK,
)
from .webhook_sender import Sender

EMAIL_QUEUE = "email"

consumers.install()  # the domain's outbox consumers, before anything delivers
settings = Settings.from_env()
database = Database.from_settings(settings, pool_size=2)
_cache: AnalyticsCache | None = None
_sender: Sender | None = None


def analytics_cache() -> AnalyticsCache:
    """The analytics cache in Redis (the broker connection is Celery's own)."""
    global _cache
    if _cache is None:
        client = redis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=2, socket_timeout=5
        )
        _cache = AnalyticsCache(client, database, settings.redis_key_prefix)
    return _cache


def webhook_sender() -> Sender:
    """The process's webhook HTTP client (thread-safe; made after fork)."""
    global _sender
    if _sender is None:
        _sender = Sender(
            timeout=settings.webhook_timeout_seconds,
            allow_private=settings.webhooks_allow_private,
        )
    return _sender


def drain_flag() -> DrainFlag:
    cache = analytics_cache()
    assert cache.client is not None
    return DrainFlag(cache.client, settings.redis_key_prefix)


# Queues by kind of work, so a flood of one kind cannot delay another: the Procfile runs one
# worker for the short, latency-sensitive queues (outbox delivery, analytics) and one for
# the bulk ones (reports, reminders). Tasks without a route go to "crm" (the fast worker).
QUEUE_ROUTES = {
    "crm.outbox.*": "outbox",
    "crm.analytics.*": "analytics",
    "crm.reports.*": "bulk",
    "crm.reminders.*": "bulk",
    "crm.idempotency.*": "bulk",
    "crm.custom_fields.*": "bulk",
    "crm.audit.*": "bulk",
    "crm.trash.*": "bulk",
    "crm.email.*": EMAIL_QUEUE,
    # Webhook deliveries wait on other people's servers: a worker of their own.
    "crm.webhooks.*": "webhooks",
    # Imports run long: a worker of their own (Procfile `importer`).
    "crm.imports.*": IMPORT_QUEUE,
    "crm.bulk_actions.*": IMPORT_QUEUE,  # bulk actions: long data transfers too
}

celery_app = Celery("crm", broker=settings.celery_broker_url, include=["crm_worker.tasks"])
celery_app.conf.update(
    task_default_queue="crm",
    task_routes={pattern: {"queue": queue} for pattern, queue in QUEUE_ROUTES.items()},
    # Every queue declared (task_queues), so a worker started without --queues (development,
    # a quick try) consumes them all; the Procfile's workers each take their own with
    # --queues. Quorum queues on RabbitMQ, lists on Redis (crm_worker.broker).
    **broker_config(settings.celery_broker_url, ["crm", *QUEUE_ROUTES.values()]),
    task_serializer="json",
    accept_content=["json"],
    result_backend=None,
    task_ignore_result=True,
    # Tasks are idempotent: ack after the work, give the task back if the worker dies.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    # When the broker connection drops, a running task's ack is lost and its message comes
    # back (RabbitMQ at once, Redis after the visibility timeout). False (set explicitly:
    # Celery 6 makes True the default) lets the running task finish, and the second run finds
    # its work done; True would kill it mid-way, and an e-mail already handed to SMTP would go
    # out twice. Safe for each kind because each tolerates a second, even concurrent, run:
    # outbox drains claim events FOR UPDATE SKIP LOCKED and write with event keys; analytics
    # refreshes are guarded by a generation counter; a report build locks its row and keeps a
    # ready report; reminders and digests write under unique (task, day) / (user, day) keys;
    # e-mail sending claims each row SKIP LOCKED and skips sent ones; an import run holds its
    # job's lease and resumes after the last committed batch; a webhook run holds its
    # endpoint's lease (and a thread pool cannot cancel a task anyway).
    worker_cancel_long_running_tasks_on_connection_loss=False,
    worker_prefetch_multiplier=1,
    task_time_limit=300,
    task_soft_time_limit=240,
    # No task events: each costs broker messages per task. Flower turns them on at run time
    # when someone watches (`celery -A celery_app control enable_events`).
    worker_send_task_events=False,
    task_send_sent_event=False,
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=None,  # keep trying while the broker is away
    timezone="UTC",
    beat_schedule={
        "outbox-redispatch": {
            "task": "crm.outbox.redispatch",
            "schedule": timedelta(seconds=settings.outbox_redispatch_seconds),
            "options": {"expires": settings.outbox_redispatch_seconds},
        },
        "analytics-refresh-all": {
            "task": "crm.analytics.refresh_all",
            "schedule": timedelta(seconds=settings.analytics_refresh_seconds),
            "options": {"expires": settings.analytics_refresh_seconds},
        },
        # Refreshes asked for that never succeeded (a long outage): Redis only, cheap.
        "analytics-sweep-stale": {
            "task": SWEEP_STALE_TASK,
            "schedule": timedelta(seconds=SWEEP_STALE_SECONDS),
            "options": {"expires": SWEEP_STALE_SECONDS},
        },
        "task-reminders": {
            "task": "crm.reminders.send_due",
            "schedule": timedelta(seconds=settings.reminder_interval_seconds),
            "options": {"expires": settings.reminder_interval_seconds},
        },
        "reports-resend-pending": {
            "task": "crm.reports.resend_pending",
            "schedule": timedelta(minutes=5),
            "options": {"expires": 300},
        },
        "webhooks-sweep": {
            "task": SWEEP_WEBHOOKS_TASK,
            "schedule": timedelta(seconds=settings.webhook_dispatch_seconds),
            "options": {"expires": settings.webhook_dispatch_seconds},
        },
        "imports-requeue-stalled": {
            "task": "crm.imports.requeue_stalled",
            "schedule": timedelta(seconds=max(1.0, settings.import_stall_seconds / 2)),
            "options": {"expires": max(1.0, settings.import_stall_seconds / 2)},
        },
        "custom-fields-purge-pending": {
            "task": "crm.custom_fields.purge_pending",
            "schedule": timedelta(minutes=5),
            "options": {"expires": 300},
        },
        "bulk-actions-requeue-stalled": {
            "task": BULK_ACTION_STALLED_TASK,
            "schedule": timedelta(seconds=max(1.0, settings.import_stall_seconds / 2)),
            "options": {"expires": max(1.0, settings.import_stall_seconds / 2)},
        },
        "idempotency-purge": {
            "task": "crm.idempotency.purge_expired",
            "schedule": timedelta(hours=1),
            "options": {"expires": 3600},
        },
        "audit-purge": {
            "task": "crm.audit.purge_expired",
            "schedule": timedelta(hours=1),
            "options": {"expires": 3600},
        },
        "trash-purge": {
            "task": "crm.trash.purge_expired",
            "schedule": timedelta(hours=1),
            "options": {"expires": 3600},
        },
        "weekly-reports": {
            "task": "crm.reports.schedule_weekly",
            "schedule": crontab(minute=0, hour=6, day_of_week=1),
            "options": {"expires": 3600},
        },
        "email-sweep": {
            "task": SEND_MAIL_TASK,
            "schedule": timedelta(seconds=settings.mail.sweep_seconds),
            "options": {"expires": settings.mail.sweep_seconds},
        },
        "email-task-digest": {
            "task": "crm.email.schedule_digests",
            "schedule": crontab(minute=0, hour=settings.mail.digest_hour),
            "options": {"expires": 3600},
        },
    },
)


# Filters on Celery's own loggers: they hold whichever logging setup runs (ours or Celery's).
quiet.install()


@worker_process_init.connect
def _fresh_pool(**_: Any) -> None:
    """Pooled connections must not cross fork()."""
    global _cache, _sender
    database.dispose()
    _cache = None
    _sender = None
