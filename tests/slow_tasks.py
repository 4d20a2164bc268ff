"""A deliberately slow task for the queue-isolation test, loaded only by the test stack's
bulk worker (`celery worker --include tests.slow_tasks`): production workers never see it."""

from __future__ import annotations

import time

from crm_worker.app import celery_app

SLOW_TASK = "tests.slow"


@celery_app.task(name=SLOW_TASK)
def slow(seconds: float) -> None:
    time.sleep(seconds)
