"""A task that holds a worker slot until the test lets it go, for the queue-isolation test;
loaded only by the test stack's bulk worker (`celery worker --include tests.slow_tasks`):
production workers never see it.

`hold(key, limit)` counts itself in `<key>:started` in the worker's Redis, waits until
`<key>:open` exists (or `limit` seconds, should the test never open it) and counts itself in
`<key>:finished`."""

from __future__ import annotations

import time

import redis

from crm_worker.app import celery_app, settings

HOLD_TASK = "tests.hold"


@celery_app.task(name=HOLD_TASK)
def hold(key: str, limit: float) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    try:
        client.incr(f"{key}:started")
        deadline = time.monotonic() + limit
        while not client.exists(f"{key}:open") and time.monotonic() < deadline:
            time.sleep(0.05)
        client.incr(f"{key}:finished")
    finally:
        client.close()
