"""Running an import job with the process's settings: shared by the "imports" queue's task and
the in-process (inline) delivery of the tests and tools."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from crm_domain.db import Database
from crm_domain.enums import ImportStatus
from crm_domain.services.transfer import import_run
from crm_domain.settings import Settings

from .dispatch import TRANSIENT_ERRORS


def run_import(
    db: Database,
    job_id: int,
    settings: Settings,
    *,
    announce: Callable[[], None] | None = None,
) -> ImportStatus | None:
    options = import_run.Options(
        stale_after=dt.timedelta(seconds=settings.import_stall_seconds),
        batch_size=settings.import_batch_size,
        transient=TRANSIENT_ERRORS,
        announce=announce,
    )
    return import_run.run(db, job_id, options)
