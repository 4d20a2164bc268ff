"""Deliver outbox events (timeline entries, analytics refresh requests, report builds)."""

from __future__ import annotations

import datetime as dt
import logging

import redis
from sqlalchemy.exc import OperationalError

from crm_domain.services import outbox

from ..app import analytics_cache, celery_app, database, settings
from ..dispatch import DELIVER_TASK, celery_publisher, deliver_event, schedule_refresh

log = logging.getLogger(__name__)


@celery_app.task(
    name=DELIVER_TASK,
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(OperationalError, redis.RedisError),
    retry_backoff=True,
    retry_backoff_max=60,
    max_retries=8,
)
def deliver(event_id: int) -> bool:
    """Deliver one event; a redelivered or already delivered event writes nothing."""
    return deliver_event(database, event_id, lambda org: schedule_refresh(analytics_cache(), org))


@celery_app.task(name="crm.outbox.redispatch", acks_late=True)
def redispatch(limit: int = 1000) -> int:
    """Re-enqueue events that stayed undelivered (broker was down, a worker died)."""
    min_age = dt.timedelta(seconds=max(1.0, settings.outbox_redispatch_seconds / 2))
    with database.transaction() as session:
        ids = outbox.pending_ids(session, older_than=min_age, limit=limit)
    if ids:
        log.info("re-dispatching %d undelivered outbox events", len(ids))
        celery_publisher(ids)
    return len(ids)
