"""CSV import jobs: created with their file and an outbox event, claimed by one run at a time,
advanced batch by batch, finished or failed, retried.

A job's life: `pending` (uploaded; the outbox event asks a worker to run it) -> `running`
(claimed with FOR UPDATE SKIP LOCKED under a fresh `lease`; every batch commits its rows, its
errors and the job's progress together) -> `done` (the file is dropped) or `failed` (the file
is kept; `retry` makes it pending again and it resumes after the last committed row). A
running job whose heartbeat stops (the worker died) is claimed again by the next run that
beat asks for; the lease makes the old run stop should it wake up."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass, field

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from ... import audit, rules
from ...context import Actor
from ...enums import ImportKind, ImportStatus, OnDuplicate
from ...errors import Conflict
from ...models import ImportFile, ImportJob, ImportRowError
from ...pagination import Ordering, Page, PageRequest, paginate
from .._common import get_in_org
from ..delivery import outbox
from . import exports, leases

log = logging.getLogger(__name__)

IMPORT_TOPIC = "import.requested"  # {import_id} -> run the import on the "imports" queue
MAX_ATTEMPTS = leases.MAX_ATTEMPTS
ERRORS_SHOWN = 100  # errors inline in GET /imports/{id}; all of them in errors.csv
ERROR_COLUMNS = ("row", "field", "code", "message")


@dataclass(frozen=True, slots=True)
class RowProblem:
    row: int
    field: str
    code: str
    message: str


@dataclass
class BatchOutcome:
    """What one batch did; committed with the batch."""

    created: int = 0
    updated: int = 0
    skipped: int = 0
    problems: list[RowProblem] = field(default_factory=list)

    @property
    def error_rows(self) -> int:
        return len({p.row for p in self.problems})


Superseded = leases.Superseded
_now = leases.now


# --- the API side ---------------------------------------------------------------------------


def create(
    session: Session,
    actor: Actor,
    *,
    kind: ImportKind,
    on_duplicate: OnDuplicate,
    filename: str,
    content: bytes,
    rows_total: int,
) -> ImportJob:
    """A pending job with its file; the outbox event asks a worker to run it."""
    job = ImportJob(
        organization_id=actor.organization_id,
        created_by=actor.user_id,
        kind=kind,
        on_duplicate=on_duplicate,
        filename=filename[:255],
        status=ImportStatus.PENDING,
        rows_total=rows_total,
    )
    session.add(job)
    session.flush()
    session.execute(insert(ImportFile).values(job_id=job.id, size=len(content), content=content))
    _request_run(session, job)
    fields = ("kind", "on_duplicate", "filename", "rows_total", "status")
    _audit(session, job, "import.started", {f: (None, getattr(job, f)) for f in fields})
    return job


def _audit(session: Session, job: ImportJob, action: str, changes: audit.Changes) -> None:
    audit.record(session, job.organization_id, action, "import", job.id, changes)


def _request_run(session: Session, job: ImportJob) -> None:
    outbox.record(session, job.organization_id, IMPORT_TOPIC, {"import_id": job.id})


def list_jobs(session: Session, actor: Actor, request: PageRequest) -> Page[ImportJob]:
    stmt = select(ImportJob).where(ImportJob.organization_id == actor.organization_id)
    return paginate(session, stmt, request, Ordering("id", ImportJob.id, ImportJob.id))


def get(session: Session, actor: Actor, job_id: int, *, for_update: bool = False) -> ImportJob:
    return get_in_org(
        session, ImportJob, actor.organization_id, job_id, name="import", for_update=for_update
    )


def first_errors(session: Session, job_id: int, limit: int = ERRORS_SHOWN) -> list[ImportRowError]:
    return list(
        session.scalars(
            select(ImportRowError)
            .where(ImportRowError.job_id == job_id)
            .order_by(ImportRowError.row, ImportRowError.id)
            .limit(limit)
        )
    )


def error_count(session: Session, job_id: int) -> int:
    return session.scalar(select(func.count()).where(ImportRowError.job_id == job_id)) or 0


def error_report(job_id: int) -> exports.Export:
    """Every row error of a job, in row order (errors are written in row order)."""
    return exports.Export(
        ERROR_COLUMNS,
        select(ImportRowError).where(ImportRowError.job_id == job_id),
        Ordering("id", ImportRowError.id, ImportRowError.id, descending=False),
        lambda _session, items: [[e.row, e.field, e.code, e.message] for e in items],
    )


def retry(session: Session, actor: Actor, job_id: int) -> ImportJob:
    """Make a failed job pending again (it resumes after its last committed row). Members may
    retry only their own imports."""
    job = get(session, actor, job_id, for_update=True)
    rules.ensure_can_modify(
        actor.role, owner_id=job.created_by or 0, user_id=actor.user_id, what="imports"
    )
    if job.status is not ImportStatus.FAILED:
        raise Conflict(
            "Only a failed import can be retried",
            code="IMPORT_NOT_RETRYABLE",
            details={"status": job.status.value},
        )
    job.status = ImportStatus.PENDING
    job.error = None
    job.attempts = 0
    job.lease = None
    job.heartbeat_at = _now()
    job.finished_at = None
    session.flush()
    _request_run(session, job)
    _audit(session, job, "import.retried", {"status": (ImportStatus.FAILED, job.status)})
    return job


# --- the worker side ------------------------------------------------------------------------


def claim(session: Session, job_id: int, stale_after: dt.timedelta) -> ImportJob | None:
    """Take the job for a run (see leases.claim)."""
    return leases.claim(session, ImportJob, job_id, stale_after, _audit_failed)


def lock_for_batch(session: Session, job_id: int, lease: uuid.UUID) -> ImportJob:
    """The job row, locked for one batch's transaction, if `lease` still holds it."""
    return leases.lock(session, ImportJob, job_id, lease)


def record_batch(
    session: Session, job: ImportJob, *, last_row: int, rows: int, outcome: BatchOutcome
) -> None:
    """Progress and errors of a batch, in the batch's transaction."""
    if outcome.problems:
        session.execute(
            insert(ImportRowError),
            [
                {
                    "job_id": job.id,
                    "row": p.row,
                    "field": p.field,
                    "code": p.code,
                    "message": p.message,
                }
                for p in outcome.problems
            ],
        )
    job.last_row = last_row
    job.rows_done += rows
    job.created_count += outcome.created
    job.updated_count += outcome.updated
    job.skipped_count += outcome.skipped
    job.error_rows += outcome.error_rows
    job.heartbeat_at = _now()
    session.flush()


def finish(session: Session, job_id: int, lease: uuid.UUID) -> None:
    """Done: the file is no longer needed."""
    job = lock_for_batch(session, job_id, lease)
    old = job.status
    job.status = ImportStatus.DONE
    job.lease = None
    job.finished_at = _now()
    session.execute(delete(ImportFile).where(ImportFile.job_id == job_id))
    session.flush()
    counts = ("rows_done", "created_count", "updated_count", "skipped_count", "error_rows")
    changes = {"status": (old, job.status), **{f: (None, getattr(job, f)) for f in counts}}
    _audit(session, job, "import.finished", changes)


def fail(session: Session, job_id: int, lease: uuid.UUID, message: str) -> None:
    leases.fail(session, ImportJob, job_id, lease, message, _audit_failed)


def _audit_failed(session: Session, job: ImportJob, message: str) -> None:
    changes = {"status": (job.status, ImportStatus.FAILED), "error": (None, message)}
    _audit(session, job, "import.failed", changes)


def release(session: Session, job_id: int, lease: uuid.UUID) -> None:
    """Let the next run claim the job at once (after an outage interrupted this one)."""
    leases.release(session, ImportJob, job_id, lease)


def stalled(session: Session, stale_after: dt.timedelta, limit: int = 100) -> list[int]:
    """Jobs that should be running but nothing runs (see leases.stalled)."""
    return leases.stalled(session, ImportJob, stale_after, limit)
