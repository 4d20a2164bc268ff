"""Asking the workers for work: every task the process publishes goes through `publish`, the
process's Celery app (crm_worker.app) with one quick reconnect."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from celery import Celery

from crm_domain.services.reporting.analytics_cache import AnalyticsCache

from .app import celery_app, drain_flag
from .broker import countdown
from .names import (
    BULK_ACTION_TASK,
    DRAIN_TASK,
    IMPORT_QUEUE,
    IMPORT_TASK,
    PURGE_CUSTOM_FIELD_TASK,
    REFRESH_TASK,
    REPORT_BUILD_TASK,
    SEND_MAIL_TASK,
    SEND_WEBHOOKS_TASK,
)

REFRESH_DELAY_SECONDS = 0.3
# A publish that finds its pooled broker connection dropped since the last one (a broker
# restart, a load balancer's idle timeout) reconnects and sends once more, at once; a broker
# that stays away fails the publish after that one try (the outbox keeps the work).
PUBLISH_RETRY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}


class TaskSender:
    """Sends tasks by name through one Celery app, reconnecting once (PUBLISH_RETRY)."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def __call__(self, name: str, **options: Any) -> None:
        self.app.send_task(name, retry=True, retry_policy=PUBLISH_RETRY, **options)


publish = TaskSender(celery_app)


def send_drain() -> None:
    publish(DRAIN_TASK)


def announce_drain() -> None:
    """A job's batch recorded outbox events: ask for a drain unless one is due."""
    if drain_flag().claim():
        send_drain()


def send_mail_task() -> None:
    """Ask the e-mail worker (queue "email") to send what is due."""
    publish(SEND_MAIL_TASK)


def send_webhooks(endpoint_ids: Iterable[int], *, expires: float | None = None) -> None:
    """One send task per endpoint, on the "webhooks" queue."""
    for endpoint_id in endpoint_ids:
        publish(SEND_WEBHOOKS_TASK, args=[endpoint_id], expires=expires)


def send_import(job_id: int) -> None:
    """Ask the "imports" queue to run a job (the run claims it from the database)."""
    publish(IMPORT_TASK, args=[job_id], queue=IMPORT_QUEUE)


def send_custom_field_purge(definition_id: int) -> None:
    """Purge a deleted custom field's values (the bulk queue)."""
    publish(PURGE_CUSTOM_FIELD_TASK, args=[definition_id])


def send_bulk_action(job_id: int) -> None:
    """Ask the "imports" queue to run a bulk action (the run claims it from the database)."""
    publish(BULK_ACTION_TASK, args=[job_id], queue=IMPORT_QUEUE)


def send_report_build(report_id: int) -> None:
    """Reports are built on the bulk queue, never inside the outbox drain."""
    publish(REPORT_BUILD_TASK, args=[report_id])


def schedule_refresh(cache: AnalyticsCache, organization_id: int) -> None:
    """Debounced: at most one refresh is scheduled per organization at a time, to start
    REFRESH_DELAY_SECONDS from now and no sooner than the cache's minimum interval after
    the organization's previous refresh started."""
    wait = cache.claim_refresh(organization_id)
    if wait is not None:
        delay = countdown(celery_app.conf.broker_url, max(REFRESH_DELAY_SECONDS, wait))
        publish(REFRESH_TASK, args=[organization_id], countdown=delay)
