"""Routed queues are consumed: by the Procfile's workers, and by a bare `celery worker`; what
the workers do with running tasks when the broker connection drops; which tasks Flower sees."""

from __future__ import annotations

import re

import crm_worker.tasks  # noqa: F401  (registers the tasks)
from crm_worker.app import QUEUE_ROUTES, celery_app
from crm_worker.names import DRAIN_TASK, REFRESH_TASK, REPORT_BUILD_TASK, SEND_WEBHOOKS_TASK
from scripts.procfile import read_procfile


def test_every_routed_queue_has_a_worker_in_the_procfile() -> None:
    """A routed queue nobody consumes fills silently: each one is in some worker's --queues."""
    consumed = {
        queue
        for command in read_procfile().values()
        for listed in re.findall(r"--queues=(\S+)", command)
        for queue in listed.split(",")
    }
    assert set(QUEUE_ROUTES.values()) | {"crm"} <= consumed


def test_a_worker_started_without_queues_consumes_every_queue() -> None:
    """Development and quick tries start `celery -A celery_app worker` with no --queues."""
    declared = set(celery_app.amqp.queues)
    assert set(QUEUE_ROUTES.values()) | {"crm"} <= declared


def test_what_a_broker_connection_loss_does_to_running_tasks_is_chosen() -> None:
    """acks_late tasks lose their ack with the connection; Celery 6 changes the default from
    letting them finish to cancelling them, so the app states its choice (crm_worker/app.py
    says why finishing is safe for each kind of task)."""
    conf = celery_app.conf
    assert conf.task_acks_late
    assert "worker_cancel_long_running_tasks_on_connection_loss" in conf.changes
    assert conf.worker_cancel_long_running_tasks_on_connection_loss is False


def test_the_tasks_that_run_with_every_write_send_no_task_events() -> None:
    """The drain and the analytics refresh run several times a second under writes: no task
    events for them (each would cost the worker three publishes and Flower their handling);
    the other tasks keep theirs whenever Flower switches events on."""
    frequent = {DRAIN_TASK, REFRESH_TASK}
    assert all(celery_app.tasks[name].send_events is False for name in frequent)
    assert celery_app.tasks[SEND_WEBHOOKS_TASK].send_events is True
    assert celery_app.tasks[REPORT_BUILD_TASK].send_events is True
