"""How committed outbox events reach delivery: a debounced wake-up of a Celery drain task
(the API), or delivery right after the commit in-process (tests, tools).

The protocol between the API and the drain task, through one Redis key per deployment
(`<prefix>:outbox:drain`):
- after a commit the API sets the key if it is absent (`SET NX`) and, only if it set it,
  sends one `crm.outbox.drain` task. Commits that find the key set send nothing;
- the drain task deletes the key *before* it claims events, then delivers every pending
  event in batches.
So a commit that sends nothing found a drain that has not yet deleted the key, and that
drain claims after the commit: it sees the events. The key expires on its own, in case a
task is lost; whatever is still pending then is found by beat's re-dispatch."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence

import redis
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from crm_domain import request_id
from crm_domain.db import Database, Publisher
from crm_domain.models import OutboxEvent
from crm_domain.services import outbox
from crm_domain.services.analytics_cache import AnalyticsCache

from .observability import MeteredDelivery

log = logging.getLogger(__name__)

DRAIN_TASK = "crm.outbox.drain"
REFRESH_TASK = "crm.analytics.refresh"
REFRESH_DELAY_SECONDS = 0.3
DRAIN_KEY_TTL_MS = 5000
GATHER_SECONDS = 0.05
# Outages that cost an event no delivery attempt: delivery is retried when they are over.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (OperationalError, redis.RedisError)

OnDealChanged = Callable[[int], None]


class DrainFlag:
    """The `SET NX` key that debounces drain tasks (see the module docstring)."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.key = f"{prefix}:outbox:drain"

    def claim(self) -> bool:
        return bool(self.client.set(self.key, "1", nx=True, px=DRAIN_KEY_TTL_MS))

    def clear(self) -> None:
        self.client.delete(self.key)


def send_drain() -> None:
    from .app import celery_app

    celery_app.send_task(DRAIN_TASK, retry=False)


def deliver(db: Database, on_deal_changed: OnDealChanged) -> int:
    """Deliver every pending event. A batch's deal changes ask for one analytics refresh per
    organization before the batch commits, so a failure to ask leaves the batch pending.
    The refresh task carries the request id of the organization's latest change."""

    def deal_changed(_session: Session, events: Sequence[OutboxEvent]) -> None:
        latest = {ev.organization_id: ev.request_id for ev in events}
        for organization_id in sorted(latest):
            token = request_id.bind(latest[organization_id])
            try:
                on_deal_changed(organization_id)
            finally:
                request_id.reset(token)

    return outbox.deliver_pending(
        db,
        {outbox.DEAL_CHANGED_TOPIC: deal_changed},
        transient=TRANSIENT_ERRORS,
        observer=MeteredDelivery(),
    )


class DrainWaker:
    """The API's publisher: asks for a drain from a daemon thread, so neither Redis nor the
    broker is ever on a request's path. It waits `gather` seconds after the first wake-up so
    that the commits of that moment share one drain (fewer, larger batches: less worker CPU
    per write, a few ms more until the timeline entry exists). After a failure it stays
    quiet for `cooldown` seconds (the events stay pending; beat's re-dispatch sends them)
    instead of waiting on a broker that is away for every commit."""

    def __init__(
        self,
        flag: DrainFlag,
        send: Callable[[], None] = send_drain,
        *,
        gather: float = GATHER_SECONDS,
        cooldown: float = 5.0,
    ) -> None:
        self._flag = flag
        self._send = send
        self._gather = gather
        self._cooldown = cooldown
        self._wanted = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._down_until = 0.0

    def __call__(self) -> None:
        self._ensure_thread()
        self._wanted.set()

    def _ensure_thread(self) -> None:
        # A forked child (gunicorn --preload, Celery prefork) inherits no running thread.
        if self._thread is not None and self._pid == os.getpid():
            return
        with self._lock:
            if self._thread is None or self._pid != os.getpid():
                self._wanted = threading.Event()
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="outbox-waker", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            time.sleep(self._gather)
            self._wanted.clear()
            if time.monotonic() < self._down_until:
                continue  # just failed; the re-dispatch will find these events
            try:
                self.wake()
            except Exception:
                self._down_until = time.monotonic() + self._cooldown
                log.warning("could not ask for outbox delivery; left for re-dispatch")

    def wake(self) -> bool:
        """Send a drain task unless one is already due; True if this call sent it."""
        if not self._flag.claim():
            return False
        try:
            self._send()
        except Exception:
            self._flag.clear()  # let the next commit try again
            raise
        return True


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

    def publish() -> None:
        deliver(db, refresh_now)

    return publish
