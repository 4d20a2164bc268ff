"""Bulk actions on the "imports" queue (the importer worker: long data transfers), and beat's
safety net for bulk actions nothing is running."""

from __future__ import annotations

import datetime as dt
import logging

from crm_domain.services.transfer import bulk_actions

from ..app import celery_app, database, settings
from ..bulk_running import run_bulk_action
from ..dispatch import RESILIENT_TASK
from ..names import BULK_ACTION_STALLED_TASK, BULK_ACTION_TASK
from ..publishing import announce_drain, send_bulk_action

log = logging.getLogger(__name__)


@celery_app.task(name=BULK_ACTION_TASK, soft_time_limit=1800, time_limit=1900, **RESILIENT_TASK)
def run(job_id: int) -> str | None:
    """Claim the job (FOR UPDATE SKIP LOCKED) and run it; a duplicate message finds it
    claimed or finished and does nothing."""
    status = run_bulk_action(database, job_id, settings, announce=announce_drain)
    return None if status is None else status.value


@celery_app.task(name=BULK_ACTION_STALLED_TASK, acks_late=True)
def requeue_stalled() -> int:
    """Beat: a run for every bulk action that should be running but shows no progress (its
    worker died, its message was lost) for IMPORT_STALL_SECONDS; the run resumes it."""
    stale_after = dt.timedelta(seconds=settings.import_stall_seconds)
    with database.transaction() as session:
        job_ids = bulk_actions.stalled(session, stale_after)
    for job_id in job_ids:
        log.info("bulk action %s shows no progress; queueing a run", job_id)
        send_bulk_action(job_id)
    return len(job_ids)
