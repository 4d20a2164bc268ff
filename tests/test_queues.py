"""Routed queues are consumed: by the Procfile's workers, and by a bare `celery worker`."""

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
