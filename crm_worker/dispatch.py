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
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import kombu.exceptions
import redis
from celery import Celery
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from crm_domain import request_id
from crm_domain.db import Database, Publisher
from crm_domain.models import OutboxEvent
from crm_domain.services import events, imports, invitations, outbox, report_emails, webhooks
from crm_domain.services.analytics_cache import AnalyticsCache

from .broker import countdown
from .observability import MeteredDelivery

log = logging.getLogger(__name__)

DRAIN_TASK = "crm.outbox.drain"
REFRESH_TASK = "crm.analytics.refresh"
SWEEP_STALE_TASK = "crm.analytics.sweep_stale"  # beat, every SWEEP_STALE_SECONDS
SWEEP_STALE_SECONDS = 10.0
REPORT_BUILD_TASK = "crm.reports.build"
SEND_MAIL_TASK = "crm.email.send_pending"
SEND_WEBHOOKS_TASK = "crm.webhooks.send"  # queue "webhooks" (task_routes in .app)
SWEEP_WEBHOOKS_TASK = "crm.webhooks.sweep"
IMPORT_TASK = "crm.imports.run"
IMPORT_QUEUE = "imports"
REFRESH_DELAY_SECONDS = 0.3
DRAIN_KEY_TTL_MS = 5000
GATHER_SECONDS = 0.05
# Outages that cost an event no delivery attempt: delivery is retried when they are over
# (the database, Redis, or the broker: kombu's error, or the socket's own on RabbitMQ).
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError,
    redis.RedisError,
    kombu.exceptions.OperationalError,
    ConnectionError,
)
# A publish that finds its pooled broker connection dropped since the last one (a broker
# restart, a load balancer's idle timeout) reconnects and sends once more, at once; a broker
# that stays away fails the publish after that one try (the outbox keeps the work).
PUBLISH_RETRY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}
# Celery options of tasks that must survive a dying worker and ride out an outage.
RESILIENT_TASK: dict[str, Any] = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": True,
    "retry_backoff_max": 60,
    "max_retries": 8,
}

OnDealChanged = Callable[[int], None]
OnWebhooks = Callable[[Iterable[int]], None]  # endpoints with deliveries to send
OnImport = Callable[[int], object]


class DrainFlag:
    """The `SET NX` key that debounces drain tasks (see the module docstring)."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.key = f"{prefix}:outbox:drain"

    def claim(self) -> bool:
        return bool(self.client.set(self.key, "1", nx=True, px=DRAIN_KEY_TTL_MS))

    def clear(self) -> None:
        self.client.delete(self.key)


def publish(name: str, *, app: Celery | None = None, **options: Any) -> None:
    """Send task `name` (to the process's Celery app unless `app`), reconnecting once."""
    if app is None:
        from .app import celery_app

        app = celery_app
    app.send_task(name, retry=True, retry_policy=PUBLISH_RETRY, **options)


def send_drain() -> None:
    publish(DRAIN_TASK)


def deliver(
    db: Database,
    on_deal_changed: OnDealChanged,
    on_report_requested: Callable[[int], None] | None = None,
    on_mail_queued: Callable[[], None] | None = None,
    on_webhooks: OnWebhooks | None = None,
    on_import: OnImport | None = None,
) -> int:
    """Deliver every pending event. One stream, several consumers:
    - every domain event is fanned out to the organization's webhook endpoints (one query per
      batch); once the batches are committed, `on_webhooks` is told which endpoints got
      deliveries (beat's sweep finds them if that fails);
    - deal writes ask for one analytics refresh per organization, and report requests for a
      build (without `on_report_requested`: built right here), before the batch commits, so
      a failure to ask leaves the batch pending;
    - import requests ask for one run each (`on_import`, else the "imports" queue);
    - events that queue e-mail (invitations, weekly reports ready) write `outbound_emails`
      rows in the batch; afterwards `on_mail_queued` wakes the sender (beat's sweep, if it
      cannot).
    A task asked for while a batch is applied carries the request id of the change that asked
    (for a refresh: the organization's latest change in the batch); every delivered event gets
    a log line with its request id and is counted (MeteredDelivery)."""
    to_send: set[int] = set()
    mail_queued = False

    def deal_changed(_session: Session, batch: Sequence[OutboxEvent]) -> None:
        latest = {ev.organization_id: ev.request_id for ev in batch}
        for organization_id in sorted(latest):
            with request_id.bound(latest[organization_id]):
                on_deal_changed(organization_id)

    def fan_out(session: Session, batch: Sequence[OutboxEvent]) -> None:
        to_send.update(webhooks.fan_out_endpoints(session, batch))

    def wake_senders(_session: Session, batch: Sequence[OutboxEvent]) -> None:
        to_send.update(int(ev.payload["endpoint_id"]) for ev in batch)

    def queues_mail(handler: outbox.BatchHandler) -> outbox.BatchHandler:
        def run(session: Session, batch: Sequence[OutboxEvent]) -> None:
            nonlocal mail_queued
            handler(session, batch)
            mail_queued = True

        return run

    handlers: dict[str, outbox.BatchHandler | tuple[outbox.BatchHandler, ...]] = {
        **{event_type: fan_out for event_type in events.EVENT_TYPES},
        **{event_type: (fan_out, deal_changed) for event_type in events.DEAL_WRITE_TYPES},
        events.REPORT_READY: (fan_out, queues_mail(report_emails.queue_emails)),
        outbox.DEAL_CHANGED_TOPIC: deal_changed,
        outbox.WEBHOOK_SEND_TOPIC: wake_senders,
        invitations.INVITATION_TOPIC: queues_mail(invitations.queue_emails),
    }

    def import_requested(_session: Session, batch: Sequence[OutboxEvent]) -> None:
        requested = {ev.payload["import_id"]: ev.request_id for ev in batch}
        for job_id in sorted(requested):
            with request_id.bound(requested[job_id]):
                (on_import or send_import)(job_id)

    handlers[imports.IMPORT_TOPIC] = import_requested
    if on_report_requested is not None:
        report_requested = on_report_requested

        def reports_requested(_session: Session, batch: Sequence[OutboxEvent]) -> None:
            for ev in batch:
                with request_id.bound(ev.request_id):
                    report_requested(ev.payload["report_id"])

        handlers[outbox.REPORT_TOPIC] = reports_requested
    try:
        return outbox.deliver_pending(
            db, handlers, transient=TRANSIENT_ERRORS, observer=MeteredDelivery()
        )
    finally:
        if to_send and on_webhooks is not None:
            try:
                on_webhooks(sorted(to_send))
            except Exception:
                log.warning("could not wake webhook senders; beat's sweep will", exc_info=True)
        if mail_queued and on_mail_queued is not None:
            try:
                on_mail_queued()
            except Exception:
                log.warning("could not wake the e-mail sender; beat's sweep will send")


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


def send_report_build(report_id: int) -> None:
    """Reports are built on the bulk queue, never inside the outbox drain."""
    publish(REPORT_BUILD_TASK, args=[report_id])


def schedule_refresh(cache: AnalyticsCache, organization_id: int) -> None:
    """Debounced: at most one refresh is scheduled per organization at a time."""
    from .app import celery_app

    if cache.claim_refresh(organization_id):
        delay = countdown(celery_app.conf.broker_url, REFRESH_DELAY_SECONDS)
        publish(REFRESH_TASK, args=[organization_id], countdown=delay)


def inline_publisher(
    db: Database, cache: AnalyticsCache, run_import: OnImport | None = None
) -> Publisher:
    """Deliver right after the commit, in-process, refreshing analytics synchronously and
    running requested imports once the delivery is over (`run_import`, else they are left
    to beat's re-queueing). Webhook deliveries are written but not sent
    (crm_worker.webhook_sender sends them)."""

    def refresh_now(organization_id: int) -> None:
        try:
            cache.refresh(organization_id)
        except redis.RedisError:
            log.warning("analytics refresh skipped: Redis unavailable", exc_info=True)

    def publish() -> None:
        requested: list[int] = []
        deliver(db, refresh_now, on_import=requested.append)
        for job_id in requested:
            if run_import is not None:
                run_import(job_id)

    return publish
