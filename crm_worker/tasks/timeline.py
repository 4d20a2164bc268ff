"""Deliver outbox events into the deal timeline (idempotent, at least once)."""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy.exc import OperationalError

from crm_domain.services import outbox

from ..app import celery_app, database
from ..dispatch import DELIVER_TASK, celery_publisher

log = logging.getLogger(__name__)


@celery_app.task(
    name=DELIVER_TASK,
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    retry_backoff_max=60,
    max_retries=8,
)
def deliver(event_id: int) -> bool:
    """Deliver one event; a redelivered or already delivered event writes nothing."""
    with database.transaction() as session:
        return outbox.deliver(session, event_id)


@celery_app.task(name="crm.timeline.redispatch", acks_late=True)
def redispatch(min_age_seconds: int = 10, limit: int = 500) -> int:
    """Re-enqueue events that stayed undelivered (broker was down, a worker died)."""
    with database.transaction() as session:
        ids = outbox.pending_ids(
            session, older_than=dt.timedelta(seconds=min_age_seconds), limit=limit
        )
    if ids:
        log.info("re-dispatching %d undelivered outbox events", len(ids))
        celery_publisher(ids)
    return len(ids)
