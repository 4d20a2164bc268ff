"""Deliver outbox events (timeline entries, analytics refreshes, report builds, webhook
fan-out)."""

from __future__ import annotations

import datetime as dt
import logging
from functools import partial
from typing import Any

from celery.signals import beat_init

from crm_domain.services.delivery import outbox

from ..app import analytics_cache, celery_app, database, drain_flag, settings
from ..consumers import (
    AnalyticsRefresh,
    BulkActionRequests,
    CustomFieldPurges,
    ImportRequests,
    MailWakeup,
    ReportBuilds,
    WebhookWakeups,
)
from ..dispatch import RESILIENT_TASK, Dispatcher
from ..names import DRAIN_TASK
from ..observability import FREQUENT_TASK
from ..outbox_listener import start_listener
from ..publishing import (
    schedule_refresh,
    send_bulk_action,
    send_custom_field_purge,
    send_drain,
    send_import,
    send_mail_task,
    send_report_build,
    send_webhooks,
)

log = logging.getLogger(__name__)


def _refresh(organization_id: int) -> None:
    schedule_refresh(analytics_cache(), organization_id)


# The drain's consumers beside the domain's (crm_worker.consumers.install): each asks Celery
# for the work that does not belong in the delivering transaction.
dispatcher = (
    Dispatcher()
    .register(partial(AnalyticsRefresh, _refresh))
    .register(partial(ReportBuilds, send_report_build))
    .register(partial(ImportRequests, send_import))
    .register(partial(CustomFieldPurges, send_custom_field_purge))
    .register(partial(BulkActionRequests, send_bulk_action))
    .register(partial(WebhookWakeups, send_webhooks))
    .register(partial(MailWakeup, send_mail_task))
)


@celery_app.task(name=DRAIN_TASK, **RESILIENT_TASK, **FREQUENT_TASK)
def drain() -> int:
    """Deliver every pending event in batches; a redelivered batch writes nothing twice."""
    drain_flag().clear()  # commits from now on ask for another drain (see dispatch)
    delivered = dispatcher.deliver(database)
    if delivered >= outbox.BATCH_SIZE * 50:  # deliver_pending's cap: more may be waiting
        send_drain()
    return delivered


@celery_app.task(name="crm.outbox.redispatch", acks_late=True)
def redispatch() -> bool:
    """Beat's safety net: ask for a drain when an event waited longer than the normal path
    takes (the broker was down, a worker died mid-batch, a task was lost)."""
    min_age = dt.timedelta(seconds=max(1.0, settings.outbox_redispatch_seconds / 2))
    with database.transaction() as session:
        age = outbox.oldest_pending_age(session)
    if age is None or age < min_age:
        return False
    log.info("outbox events pending for %.0f s; asking for a drain", age.total_seconds())
    send_drain()
    return True


@beat_init.connect
def _listen_for_outbox_events(**_: Any) -> None:
    """Beat hears of committed outbox events and asks for drains (OUTBOX_WAKE=notify)."""
    if settings.outbox_wake == "notify":
        start_listener(settings, drain_flag(), send_drain)
