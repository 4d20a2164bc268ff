"""The workers' logs and metrics.

Logs: Celery's own logging setup is replaced by ours (`setup_logging`), so the worker and
beat log in the same format as the API (LOG_FORMAT) with the request id on every line.
A task published while a request id is bound (in a request, or in the drain while it
applies one event) carries it in the `x_request_id` header; the worker binds it for the
task's log lines (and any outbox event the task records) and clears it after the task.

Metrics: prometheus-client in multiprocess mode, written to PROMETHEUS_MULTIPROC_DIR like
the API's (one directory per worker service); the API's /metrics exports those that
WORKER_METRICS_DIR lists (same host, or a volume both see)."""

from __future__ import annotations

import logging.config
from collections.abc import Sequence
from typing import Any

from celery.signals import before_task_publish, setup_logging, task_postrun, task_prerun
from prometheus_client import Counter, Histogram

from crm_domain import logs, request_id
from crm_domain.models import OutboxEvent
from crm_domain.services.delivery.outbox import DeliveryObserver
from crm_domain.settings import log_format_from_env

REQUEST_ID_HEADER = "x_request_id"
# Options of the tasks that run several times a second under writes (the outbox drain, the
# analytics refresh): no task events for Flower. Each run would cost the worker three event
# publishes and Flower their handling, and their flood would push every other task out of
# Flower's bounded task list; their runs are counted by task and state here (TASK_RUNS) and
# logged. Every other task keeps its events while Flower watches.
FREQUENT_TASK: dict[str, Any] = {"send_events": False}

OUTBOX_DELIVERED = Counter(
    "crm_outbox_delivered", "Outbox events delivered (committed), by topic", ["topic"]
)
OUTBOX_FAILURES = Counter(
    "crm_outbox_delivery_failures", "Failed outbox delivery attempts, by topic", ["topic"]
)
ANALYTICS_REFRESH = Histogram(
    "crm_analytics_refresh_duration_seconds",
    "Time to recompute and store one organization's analytics",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
TASK_RUNS = Counter(
    "crm_worker_task_runs",
    "Celery task runs by task name and final state (reminders, reports, drains, ...)",
    ["task", "state"],
)
REMINDERS_SENT = Counter("crm_reminders_sent", "Deadline reminders written")
# Webhooks (issue in progress elsewhere): delivery attempts by outcome and their latency go
# here, next to the outbox counters, in the same multiprocess directory.


class MeteredDelivery(DeliveryObserver):
    """The outbox's per-event log lines, plus counters by topic. Counting here, in the
    worker, costs a memory-mapped increment per topic and batch; the same figures from
    the outbox table would be a scan of an ever-growing table at every scrape."""

    def delivered(self, events: Sequence[OutboxEvent]) -> None:
        super().delivered(events)
        by_topic: dict[str, int] = {}
        for ev in events:
            by_topic[ev.topic] = by_topic.get(ev.topic, 0) + 1
        for topic, count in by_topic.items():
            OUTBOX_DELIVERED.labels(topic).inc(count)

    def failed(
        self, event_id: int, topic: str | None, request_id: str | None, error: BaseException
    ) -> None:
        super().failed(event_id, topic, request_id, error)
        OUTBOX_FAILURES.labels(topic or "unknown").inc()


@setup_logging.connect
def _configure_logging(loglevel: int | str | None = None, **_: Any) -> None:
    logging.config.dictConfig(logs.config(log_format_from_env(), loglevel or "INFO"))


@before_task_publish.connect
def _send_request_id(headers: dict[str, Any] | None = None, **_: Any) -> None:
    current = request_id.current()
    if current and headers is not None:
        headers.setdefault(REQUEST_ID_HEADER, current)


@task_prerun.connect
def _bind_request_id(task: Any = None, **_: Any) -> None:
    request_id.bind(getattr(task.request, REQUEST_ID_HEADER, None) if task else None)


@task_postrun.connect
def _after_task(task: Any = None, state: str | None = None, **_: Any) -> None:
    request_id.bind(None)  # a pool process runs the next task with a clean slate
    if task is not None:
        TASK_RUNS.labels(task.name, state or "UNKNOWN").inc()
