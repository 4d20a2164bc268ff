"""How committed outbox events are delivered: through Celery, or inline (tests, tools)."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence

import redis

from crm_domain.db import Database, Publisher
from crm_domain.services import outbox
from crm_domain.services.analytics_cache import AnalyticsCache

log = logging.getLogger(__name__)

DELIVER_TASK = "crm.outbox.deliver"
REFRESH_TASK = "crm.analytics.refresh"
REFRESH_DELAY_SECONDS = 0.3

OnDealChanged = Callable[[int], None]


def deliver_event(db: Database, event_id: int, on_deal_changed: OnDealChanged) -> bool:
    """Deliver one event in its own transaction. A deal change asks for an analytics refresh
    before the commit, so a failure to ask leaves the event pending for another try."""
    with db.transaction() as session:
        ev = outbox.deliver(
            session,
            event_id,
            {outbox.DEAL_CHANGED_TOPIC: lambda _s, ev: on_deal_changed(ev.organization_id)},
        )
        return ev is not None


def celery_publisher(ids: Sequence[int]) -> None:
    """Enqueue one delivery task per event; fails fast when the broker is down."""
    from .app import celery_app

    for event_id in ids:
        celery_app.send_task(DELIVER_TASK, args=[event_id], retry=False)


class BackgroundPublisher:
    """Publishes committed event ids from a daemon thread, so a slow or unreachable broker
    never delays an API response (kombu can spend seconds failing to connect).

    Whatever it cannot publish stays pending in the outbox and the beat re-dispatch sends it.
    After a failure it drops batches for `cooldown` seconds instead of waiting on the broker
    again for each one."""

    def __init__(
        self,
        publish: Publisher = celery_publisher,
        *,
        maxsize: int = 10_000,
        cooldown: float = 5.0,
    ) -> None:
        self._publish = publish
        self._maxsize = maxsize
        self._cooldown = cooldown
        self._queue: queue.Queue[list[int]] = queue.Queue(maxsize)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._down_until = 0.0

    def __call__(self, ids: Sequence[int]) -> None:
        self._ensure_thread()
        try:
            self._queue.put_nowait(list(ids))
        except queue.Full:
            log.warning("publish queue full; events %s left for re-dispatch", list(ids))

    def _ensure_thread(self) -> None:
        # A forked child (gunicorn --preload, Celery prefork) inherits no running thread.
        if self._thread is not None and self._pid == os.getpid():
            return
        with self._lock:
            if self._thread is None or self._pid != os.getpid():
                self._queue = queue.Queue(self._maxsize)
                self._pid = os.getpid()
                self._thread = threading.Thread(
                    target=self._run, name="outbox-publisher", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            ids = self._queue.get()
            if time.monotonic() < self._down_until:
                continue  # the broker just failed; the re-dispatch will send these
            try:
                self._publish(ids)
            except Exception:
                self._down_until = time.monotonic() + self._cooldown
                log.warning("could not publish outbox events %s; left for re-dispatch", ids)


def schedule_refresh(cache: AnalyticsCache, organization_id: int) -> None:
    """Debounced: at most one refresh is scheduled per organization at a time."""
    from .app import celery_app

    if cache.claim_refresh(organization_id):
        celery_app.send_task(
            REFRESH_TASK, args=[organization_id], countdown=REFRESH_DELAY_SECONDS, retry=False
        )


def inline_publisher(db: Database, cache: AnalyticsCache) -> Publisher:
    """Deliver right after the commit, in-process, refreshing analytics synchronously."""

    def refresh_now(organization_id: int) -> None:
        try:
            cache.refresh(organization_id)
        except redis.RedisError:
            log.warning("analytics refresh skipped: Redis unavailable", exc_info=True)

    def publish(ids: Sequence[int]) -> None:
        for event_id in ids:
            deliver_event(db, event_id, refresh_now)

    return publish
