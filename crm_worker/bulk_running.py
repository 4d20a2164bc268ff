"""Running a bulk action with the process's settings: shared by the "imports" queue's task and
the in-process (inline) delivery of the tests and tools. Bulk actions share the imports'
stall interval (IMPORT_STALL_SECONDS) and worker."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from crm_domain.db import Database
from crm_domain.enums import BulkActionStatus
from crm_domain.services.transfer import bulk_run, leases
from crm_domain.settings import Settings

from .dispatch import TRANSIENT_ERRORS


def run_bulk_action(
    db: Database,
    job_id: int,
    settings: Settings,
    *,
    announce: Callable[[], None] | None = None,
    batch_size: int = bulk_run.BATCH_SIZE,
) -> BulkActionStatus | None:
    options = leases.RunOptions(
        stale_after=dt.timedelta(seconds=settings.import_stall_seconds),
        batch_size=batch_size,
        transient=TRANSIENT_ERRORS,
        announce=announce,
    )
    return bulk_run.run(db, job_id, options)
