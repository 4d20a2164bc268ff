"""CSV imports on the "imports" queue (a worker of their own: `-Q imports`), and beat's
safety net for imports nothing is running."""

from __future__ import annotations

import datetime as dt
import logging

from crm_domain.services.transfer import imports

from ..app import celery_app, database, settings
from ..dispatch import RESILIENT_TASK
from ..importing import run_import
from ..names import IMPORT_TASK
from ..publishing import announce_drain, send_import

log = logging.getLogger(__name__)


@celery_app.task(name=IMPORT_TASK, soft_time_limit=1800, time_limit=1900, **RESILIENT_TASK)
def run(job_id: int) -> str | None:
    """Claim the job (FOR UPDATE SKIP LOCKED) and import it; a duplicate message finds it
    claimed or finished and does nothing."""
    status = run_import(database, job_id, settings, announce=announce_drain)
    return None if status is None else status.value


@celery_app.task(name="crm.imports.requeue_stalled", acks_late=True)
def requeue_stalled() -> int:
    """Beat: a run for every job that should be running but shows no progress (its worker
    died, its message was lost) for IMPORT_STALL_SECONDS; the run resumes the job."""
    with database.transaction() as session:
        job_ids = imports.stalled(session, dt.timedelta(seconds=settings.import_stall_seconds))
    for job_id in job_ids:
        log.info("import %s shows no progress; queueing a run", job_id)
        send_import(job_id)
    return len(job_ids)
