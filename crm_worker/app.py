"""The Celery application, configured from the shared settings."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import redis
from celery import Celery
from celery.schedules import crontab
from celery.signals import worker_process_init

from crm_domain.db import Database
from crm_domain.services.analytics_cache import AnalyticsCache
from crm_domain.settings import Settings

from . import observability  # noqa: F401  (logging and request-id signal handlers)
from .dispatch import DrainFlag

settings = Settings.from_env()
database = Database(settings.database_url, pool_size=2)
_cache: AnalyticsCache | None = None


def analytics_cache() -> AnalyticsCache:
    """The analytics cache in Redis (the broker connection is Celery's own)."""
    global _cache
    if _cache is None:
        client = redis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=2, socket_timeout=5
        )
        _cache = AnalyticsCache(client, database, settings.redis_key_prefix)
    return _cache


def drain_flag() -> DrainFlag:
    cache = analytics_cache()
    assert cache.client is not None
    return DrainFlag(cache.client, settings.redis_key_prefix)


celery_app = Celery("crm", broker=settings.redis_url, include=["crm_worker.tasks"])
celery_app.conf.update(
    task_default_queue="crm",
    task_serializer="json",
    accept_content=["json"],
    result_backend=None,
    task_ignore_result=True,
    # Tasks are idempotent: ack after the work, give the task back if the worker dies.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_time_limit=300,
    task_soft_time_limit=240,
    # No task events: each costs broker messages per task. Flower turns them on at run time
    # when someone watches (`celery -A celery_app control enable_events`).
    worker_send_task_events=False,
    task_send_sent_event=False,
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=None,  # keep trying while the broker is away
    broker_transport_options={
        "visibility_timeout": 3600,
        "socket_connect_timeout": 2,
        "socket_timeout": 5,
    },
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
        "task-reminders": {
            "task": "crm.reminders.send_due",
            "schedule": timedelta(seconds=settings.reminder_interval_seconds),
            "options": {"expires": settings.reminder_interval_seconds},
        },
        "weekly-reports": {
            "task": "crm.reports.schedule_weekly",
            "schedule": crontab(minute=0, hour=6, day_of_week=1),
            "options": {"expires": 3600},
        },
    },
)


@worker_process_init.connect
def _fresh_pool(**_: Any) -> None:
    """Pooled connections must not cross fork()."""
    global _cache
    database.dispose()
    _cache = None
