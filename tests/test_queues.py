"""Routed queues are consumed: by the Procfile's workers, and by a bare `celery worker`; what
the workers do with running tasks when the broker connection drops."""

from __future__ import annotations

import re

from crm_worker.app import QUEUE_ROUTES, celery_app
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
