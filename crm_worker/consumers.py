"""The composition root of the background work: which consumer serves which outbox topic,
and which composer renders which kind of e-mail.

`install()` registers the domain's consumers with the process's outbox registry and the
composers with the mail queue's; the
worker's start-up (crm_worker.app) and the app factory (crm_api.create_app) run it. Those
consumers work inside the delivering transaction only. The consumers that need Celery or
Redis are `RunConsumer`s that join each delivery run of a `Dispatcher`: the drain task's
(crm_worker.tasks.outbox: ask Celery for refreshes, report builds, imports, webhook sends
and e-mail sends) or the in-process one (`inline_publisher`: refresh now, run imports after).

A new consumer (an audit log, a bulk action's events) is one more line here, or a new
RunConsumer registered by the drain task: neither the outbox nor the dispatcher changes."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

import redis
from sqlalchemy.orm import Session

from crm_domain import request_id
from crm_domain.db import Database, Publisher
from crm_domain.models import OutboxEvent
from crm_domain.services.delivery import events, outbox, webhook_fanout, webhooks
from crm_domain.services.mailing import digests, invitations, outbound_email, report_emails
from crm_domain.services.records import custom_fields, timeline
from crm_domain.services.reporting import reports
from crm_domain.services.reporting.analytics_cache import AnalyticsCache
from crm_domain.services.transfer import bulk_actions, imports

from .dispatch import Dispatcher, RunConsumer

log = logging.getLogger(__name__)

# Outbox consumers that queue e-mail: a worker's run that applied one wakes the e-mail sender.
QUEUES_MAIL: tuple[tuple[str, outbox.BatchHandler], ...] = (
    (invitations.INVITATION_TOPIC, invitations.queue_emails),
    (events.REPORT_READY, report_emails.queue_emails),
)


def install() -> None:
    """Register the domain's consumers with the process's outbox registry, and the e-mail
    composers with the mail queue (running it again changes nothing)."""
    registry = outbox.registry
    registry.on(timeline.TIMELINE_TOPIC, timeline.apply_activities)
    registry.on(events.EVENT_TYPES, webhook_fanout.fan_out)
    registry.on(reports.REPORT_TOPIC, reports.build_requested)
    for topic, handler in QUEUES_MAIL:
        registry.on(topic, handler)
    # Their consumers need Celery or Redis: they join each delivery run (RunConsumers below).
    registry.declare((events.DEAL_CHANGED_TOPIC, webhooks.WEBHOOK_SEND_TOPIC, imports.IMPORT_TOPIC))
    registry.declare(custom_fields.CUSTOM_FIELD_DELETED_TOPIC)
    registry.declare((bulk_actions.BULK_ACTION_TOPIC,))
    mail = outbound_email.composers
    mail.on(invitations.EMAIL_KIND, invitations.compose_email)
    mail.on(report_emails.EMAIL_KIND, report_emails.compose_email)
    mail.on(digests.EMAIL_KIND, digests.compose_email)


# --- run consumers ------------------------------------------------------------------------------


class AnalyticsRefresh(RunConsumer):
    """A deal write (or an import's batch of new deals) asks for one refresh of its
    organization's analytics per batch, with the request id of the organization's latest
    change in the batch, before the batch commits: a failure to ask leaves it pending."""

    def __init__(self, refresh: Callable[[int], None]) -> None:
        self.refresh = refresh

    def register(self, registry: outbox.Registry) -> None:
        registry.on((*events.DEAL_WRITE_TYPES, events.DEAL_CHANGED_TOPIC), self.deals_changed)

    def deals_changed(self, _session: Session, batch: Sequence[OutboxEvent]) -> None:
        latest = {ev.organization_id: ev.request_id for ev in batch}
        for organization_id in sorted(latest):
            with request_id.bound(latest[organization_id]):
                self.refresh(organization_id)


class ReportBuilds(RunConsumer):
    """A report request asks for a build (`build(report_id)`: the bulk queue) instead of
    building it in the delivering transaction."""

    def __init__(self, build: Callable[[int], None]) -> None:
        self.build = build

    def register(self, registry: outbox.Registry) -> None:
        registry.replace(reports.build_requested, self.requested)

    def requested(self, _session: Session, batch: Sequence[OutboxEvent]) -> None:
        for ev in batch:
            with request_id.bound(ev.request_id):
                self.build(ev.payload["report_id"])


class ImportRequests(RunConsumer):
    """Each requested import asks for one run (`ask(job_id)`: the "imports" queue) before the
    batch commits."""

    topic, key = imports.IMPORT_TOPIC, "import_id"

    def __init__(self, ask: Callable[[int], object]) -> None:
        self.ask = ask

    def register(self, registry: outbox.Registry) -> None:
        registry.on(self.topic, self.requested)

    def requested(self, _session: Session, batch: Sequence[OutboxEvent]) -> None:
        requested = {ev.payload[self.key]: ev.request_id for ev in batch}
        for job_id in sorted(requested):
            with request_id.bound(requested[job_id]):
                self.ask(job_id)


class CustomFieldPurges(RunConsumer):
    """A deleted custom field asks for the purge of its values (`ask(definition_id)`: the
    bulk queue) before the batch commits."""

    def __init__(self, ask: Callable[[int], object]) -> None:
        self.ask = ask

    def register(self, registry: outbox.Registry) -> None:
        registry.on(custom_fields.CUSTOM_FIELD_DELETED_TOPIC, self.deleted)

    def deleted(self, _session: Session, batch: Sequence[OutboxEvent]) -> None:
        for ev in batch:
            with request_id.bound(ev.request_id):
                self.ask(ev.payload["definition_id"])


class BulkActionRequests(ImportRequests):
    """Each requested bulk action asks for one run (the "imports" queue too)."""

    topic, key = bulk_actions.BULK_ACTION_TOPIC, "bulk_action_id"


class ImportRuns(RunConsumer):
    """Requested imports run in this process (`run(job_id)`) once the whole run completed."""

    topic, key = imports.IMPORT_TOPIC, "import_id"

    def __init__(self, run: Callable[[int], object]) -> None:
        self.run = run
        self.job_ids: list[int] = []

    def register(self, registry: outbox.Registry) -> None:
        registry.on(self.topic, self.requested)

    def requested(self, _session: Session, batch: Sequence[OutboxEvent]) -> None:
        self.job_ids.extend(sorted({ev.payload[self.key] for ev in batch}))

    def finish(self, completed: bool) -> None:
        if completed:
            for job_id in self.job_ids:
                self.run(job_id)


class BulkActionRuns(ImportRuns):
    """Requested bulk actions run in this process once the whole run completed."""

    topic, key = bulk_actions.BULK_ACTION_TOPIC, "bulk_action_id"


class WebhookWakeups(RunConsumer):
    """The fan-out writes every domain event's deliveries (one query per batch); the
    endpoints that got some, and those asked to send (`webhooks.send`: a ping, a
    redelivery), are woken once the run is over (`wake(endpoint_ids)`: a send task each);
    beat's sweep finds them if that fails."""

    def __init__(self, wake: Callable[[Iterable[int]], None]) -> None:
        self.wake = wake
        self.endpoints: set[int] = set()

    def register(self, registry: outbox.Registry) -> None:
        registry.replace(webhook_fanout.fan_out, self.fan_out)
        registry.on(webhooks.WEBHOOK_SEND_TOPIC, self.send_asked)

    def fan_out(self, session: Session, batch: Sequence[OutboxEvent]) -> None:
        self.endpoints.update(webhook_fanout.fan_out_endpoints(session, batch))

    def send_asked(self, _session: Session, batch: Sequence[OutboxEvent]) -> None:
        self.endpoints.update(int(ev.payload["endpoint_id"]) for ev in batch)

    def finish(self, completed: bool) -> None:
        if self.endpoints:
            try:
                self.wake(sorted(self.endpoints))
            except Exception:
                log.warning("could not wake webhook senders; beat's sweep will", exc_info=True)


class MailWakeup(RunConsumer):
    """A run that applied a consumer queueing e-mail (QUEUES_MAIL) wakes the e-mail sender
    once it is over (`wake()`: a send task); beat's sweep sends if that fails."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self.wake = wake
        self.queued = False

    def register(self, registry: outbox.Registry) -> None:
        registry.on([topic for topic, _ in QUEUES_MAIL], self.mail_queued)

    def mail_queued(self, _session: Session, _batch: Sequence[OutboxEvent]) -> None:
        self.queued = True

    def finish(self, completed: bool) -> None:
        if self.queued:
            try:
                self.wake()
            except Exception:
                log.warning("could not wake the e-mail sender; beat's sweep will send")


# --- in-process delivery --------------------------------------------------------------------------


def inline_publisher(
    db: Database,
    cache: AnalyticsCache,
    run_import: Callable[[int], object] | None = None,
    run_bulk_action: Callable[[int], object] | None = None,
) -> Publisher:
    """Deliver right after the commit, in-process, refreshing analytics synchronously and
    running requested imports and bulk actions once the delivery is over (`run_import`,
    `run_bulk_action`; else they are left to beat's re-queueing). Webhook deliveries are
    written but not sent (crm_worker.webhook_sender sends them)."""

    def refresh_now(organization_id: int) -> None:
        try:
            cache.refresh(organization_id)
        except redis.RedisError:
            log.warning("analytics refresh skipped: Redis unavailable", exc_info=True)

    dispatcher = Dispatcher().register(lambda: AnalyticsRefresh(refresh_now))
    if run_import is not None:
        dispatcher.register(lambda: ImportRuns(run_import))
    if run_bulk_action is not None:
        dispatcher.register(lambda: BulkActionRuns(run_bulk_action))

    def publish() -> None:
        dispatcher.deliver(db)

    return publish
