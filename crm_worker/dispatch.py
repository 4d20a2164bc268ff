"""How committed outbox events reach delivery: a debounced wake-up of a Celery drain task
(the API), or delivery right after the commit in-process (tests, tools); and the
`Dispatcher` that delivers them with the registered consumers.

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
from collections.abc import Callable
from typing import Any

import kombu.exceptions
import redis
from sqlalchemy.exc import OperationalError

from crm_domain.db import Database
from crm_domain.services.delivery import outbox

from .observability import MeteredDelivery

log = logging.getLogger(__name__)

DRAIN_KEY_TTL_MS = 5000
GATHER_SECONDS = 0.05
# A waker sends drains at least this far apart: under a stream of commits each drain task
# (its publish, receipt, acknowledgement and transactions) serves ~SPACING worth of them.
SPACING_SECONDS = 0.25
# Outages that cost an event no delivery attempt: delivery is retried when they are over
# (the database, Redis, or the broker: kombu's error, or the socket's own on RabbitMQ).
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError,
    redis.RedisError,
    kombu.exceptions.OperationalError,
    ConnectionError,
)
# Celery options of tasks that must survive a dying worker and ride out an outage.
RESILIENT_TASK: dict[str, Any] = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": True,
    "retry_backoff_max": 60,
    "max_retries": 8,
}


class DrainFlag:
    """The `SET NX` key that debounces drain tasks (see the module docstring)."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.key = f"{prefix}:outbox:drain"

    def claim(self) -> bool:
        return bool(self.client.set(self.key, "1", nx=True, px=DRAIN_KEY_TTL_MS))

    def clear(self) -> None:
        self.client.delete(self.key)


class RunConsumer:
    """A consumer that joins one delivery run: `Dispatcher.deliver` makes a fresh one per run
    (so it may keep state for that run), lets it `register` its handlers on the run's copy of
    the process's registry, and calls `finish` once the run is over."""

    def register(self, registry: outbox.Registry) -> None:
        raise NotImplementedError

    def finish(self, completed: bool) -> None:
        """After the run's last batch; `completed` is False when the run raised (batches
        before the failure are committed). Failures to wake others are logged, not raised."""


class Dispatcher:
    """Delivers every pending event with the handlers registered in the process's outbox
    registry (crm_worker.consumers.install) plus those of the run consumers registered here
    (the worker's: crm_worker.tasks.outbox; in-process: crm_worker.consumers). It names no
    consumer. A task asked for while a batch is applied carries the request id of the change
    that asked; every delivered event gets a log line with its request id and is counted
    (MeteredDelivery)."""

    def __init__(self) -> None:
        self._consumers: list[Callable[[], RunConsumer]] = []

    def register(self, make: Callable[[], RunConsumer]) -> Dispatcher:
        """Each run gets a new `make()`; their handlers join the run in registration order."""
        self._consumers.append(make)
        return self

    def deliver(self, db: Database) -> int:
        run = [make() for make in self._consumers]
        handlers = outbox.registry.copy()
        for consumer in run:
            consumer.register(handlers)
        completed = False
        try:
            delivered = outbox.deliver_pending(
                db, handlers, transient=TRANSIENT_ERRORS, observer=MeteredDelivery()
            )
            completed = True
        finally:
            for consumer in run:
                consumer.finish(completed)
        return delivered


class DrainWaker:
    """The API's publisher: asks for a drain from a daemon thread, so neither Redis nor the
    broker is ever on a request's path. It waits `gather` seconds after the first wake-up so
    that the commits of that moment share one drain, and sends drains at least `spacing`
    seconds apart, so that under a stream of commits each drain delivers that long's worth
    of them (fewer, larger batches: less worker CPU per write, at most `spacing` more until
    the timeline entry exists). After a failure it stays quiet for `cooldown` seconds (the
    events stay pending; beat's re-dispatch sends them) instead of waiting on a broker that
    is away for every commit."""

    def __init__(
        self,
        flag: DrainFlag,
        send: Callable[[], None],
        *,
        gather: float = GATHER_SECONDS,
        spacing: float = SPACING_SECONDS,
        cooldown: float = 5.0,
    ) -> None:
        self._flag = flag
        self._send = send
        self._gather = gather
        self._spacing = spacing
        self._next_send = 0.0  # time.monotonic() before which no drain is sent
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
            time.sleep(max(self._gather, self._next_send - time.monotonic()))
            self._wanted.clear()
            if time.monotonic() < self._down_until:
                continue  # just failed; the re-dispatch will find these events
            try:
                if self.wake():
                    self._next_send = time.monotonic() + self._spacing
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
