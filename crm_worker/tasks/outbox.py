"""Deliver outbox events (timeline entries, analytics refreshes, report builds, webhook
fan-out)."""

from __future__ import annotations

import datetime as dt
import logging

from crm_domain.services.delivery import outbox

from ..app import analytics_cache, celery_app, database, drain_flag, settings
from ..dispatch import (
    DRAIN_TASK,
    RESILIENT_TASK,
    deliver,
    schedule_refresh,
    send_drain,
    send_mail_task,
    send_report_build,
    send_webhooks,
)

log = logging.getLogger(__name__)


@celery_app.task(name=DRAIN_TASK, **RESILIENT_TASK)
def drain() -> int:
    """Deliver every pending event in batches; a redelivered batch writes nothing twice."""
    drain_flag().clear()  # commits from now on ask for another drain (see dispatch)
    delivered = deliver(
        database,
        lambda org: schedule_refresh(analytics_cache(), org),
        on_report_requested=send_report_build,
        on_mail_queued=send_mail_task,
        on_webhooks=send_webhooks,
    )
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
