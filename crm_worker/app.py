"""The Celery application, configured from the shared settings."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery import Celery
from celery.signals import worker_process_init

from crm_domain.db import Database
from crm_domain.settings import Settings

settings = Settings.from_env()
database = Database(settings.database_url, pool_size=2)

celery_app = Celery("crm", broker=settings.redis_url, include=["crm_worker.tasks"])
celery_app.conf.update(
    task_default_queue="crm",
    task_serializer="json",
    accept_content=["json"],
    result_backend=None,
    task_ignore_result=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_time_limit=120,
    task_soft_time_limit=100,
    broker_connection_retry_on_startup=True,
    broker_transport_options={
        "visibility_timeout": 3600,
        "socket_connect_timeout": 2,
        "socket_timeout": 5,
    },
    timezone="UTC",
    beat_schedule={
        "redispatch-outbox": {
            "task": "crm.timeline.redispatch",
            "schedule": timedelta(seconds=15),
            "options": {"expires": 14},
        },
    },
)


@worker_process_init.connect
def _fresh_pool(**_: Any) -> None:
    """Pooled connections must not cross fork()."""
    database.dispose()
