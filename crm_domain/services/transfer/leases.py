"""The lease of a background job (a CSV import, a bulk action): claimed by one run at a time,
locked by each batch, handed over when its run stops without a word (the worker died).

A job row has `status` (pending, running, done, failed...), `lease` (the run that holds it),
`attempts`, `heartbeat_at` (each batch's commit), `error`, `created_at`, `started_at`
and `finished_at`. A run claims a pending job, or a running one whose run is gone (released,
or no heartbeat for `stale_after`), with FOR UPDATE SKIP LOCKED under a fresh lease; every
batch locks the row and checks the lease is still its own, so a run that stalled and wakes
up after another took over stops."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from ...db import Database
from ...errors import DomainError

log = logging.getLogger(__name__)

PENDING, RUNNING, FAILED = "pending", "running", "failed"
# A job claimed this often without finishing (each claim after a crash or an outage) fails.
MAX_ATTEMPTS = 5


T = TypeVar("T")
# Told (session, job, message) right before a job is marked failed (its audit entry).
FailHook = Callable[[Session, Any, str], None]


class Superseded(Exception):
    """The job was claimed by another run (this one stalled) or is no longer running."""


class JobError(Exception):
    """The job cannot go on (its message is the job's `error`)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class RunOptions:
    """How a run works through a job (crm_worker makes them from the settings)."""

    stale_after: dt.timedelta  # a running job without a heartbeat this long is taken over
    batch_size: int = 500
    # Outages: the job is released and the error raised, for the caller to retry.
    transient: tuple[type[BaseException], ...] = ()
    # Called after a batch that recorded outbox events commits (ask for a drain).
    announce: Callable[[], None] | None = None


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _status(job: Any, value: str) -> Any:
    """The job model's own status enum member for `value` (the in-memory row keeps its type)."""
    return type(job).__table__.c.status.type.enum_class(value)


def claim(
    session: Session,
    model: type[Any],
    job_id: int,
    stale_after: dt.timedelta,
    on_fail: FailHook | None = None,
) -> Any:
    """Take the job for a run: pending, or running without a live run (released, or no
    heartbeat for `stale_after`). None when another run has it or there is nothing to do.
    A job claimed MAX_ATTEMPTS times fails instead."""
    job: Any = session.scalar(
        select(model)
        .where(
            model.id == job_id,
            or_(
                model.status == PENDING,
                and_(
                    model.status == RUNNING,
                    or_(
                        model.lease.is_(None),
                        model.heartbeat_at < now() - stale_after,
                    ),
                ),
            ),
        )
        .with_for_update(skip_locked=True)
    )
    if job is None:
        return None
    if job.attempts >= MAX_ATTEMPTS:
        message = f"Gave up after {job.attempts} attempts; retry when the cause is fixed"
        mark_failed(session, job, message, on_fail)
        log.error("%s %s parked as failed after %d attempts", model.__name__, job.id, job.attempts)
        return None
    started = now()
    job.status = _status(job, RUNNING)
    job.lease = uuid.uuid4()
    job.attempts += 1
    job.heartbeat_at = started
    job.started_at = job.started_at or started
    session.flush()
    return job


def lock(session: Session, model: type[Any], job_id: int, lease: uuid.UUID) -> Any:
    """The job row, locked for one batch's transaction, if `lease` still holds it."""
    job: Any = session.scalar(select(model).where(model.id == job_id).with_for_update())
    if job is None or job.lease != lease or job.status != RUNNING:
        raise Superseded(job_id)
    return job


def fail(
    session: Session,
    model: type[Any],
    job_id: int,
    lease: uuid.UUID,
    message: str,
    on_fail: FailHook | None = None,
) -> None:
    job = session.scalar(select(model).where(model.id == job_id).with_for_update())
    if job is not None and job.lease == lease:
        mark_failed(session, job, message, on_fail)
        session.flush()


def mark_failed(session: Session, job: Any, message: str, on_fail: FailHook | None) -> None:
    if on_fail is not None:
        on_fail(session, job, message[:2000])
    job.status = _status(job, FAILED)
    job.error = message[:2000]
    job.lease = None
    job.finished_at = now()


def release(session: Session, model: type[Any], job_id: int, lease: uuid.UUID) -> None:
    """Let the next run claim the job at once (after an outage interrupted this one)."""
    session.execute(
        update(model).where(model.id == job_id, model.lease == lease).values(lease=None)
    )


def stalled(
    session: Session, model: type[Any], stale_after: dt.timedelta, limit: int = 100
) -> list[int]:
    """Jobs that should be running but nothing runs: running without a heartbeat for
    `stale_after`, or pending for that long (their run request was lost)."""
    cutoff = now() - stale_after
    return list(
        session.scalars(
            select(model.id)
            .where(
                or_(
                    and_(
                        model.status == RUNNING,
                        or_(model.heartbeat_at < cutoff, model.lease.is_(None)),
                    ),
                    and_(
                        model.status == PENDING,
                        func.coalesce(model.heartbeat_at, model.created_at) < cutoff,
                    ),
                )
            )
            .order_by(model.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )


def guarded(
    db: Database,
    model: type[Any],
    job_id: int,
    lease: uuid.UUID,
    transient: tuple[type[BaseException], ...],
    body: Callable[[], T],
    failed: T,
    fail: Callable[[Session, int, uuid.UUID, str], None],
) -> T | None:
    """`body()`, the run of a claimed job, and what its end means for the job: taken over
    (None: this run stops), an outage (`transient`: the job is released and the error raised,
    for the caller to retry), any other error (`fail` with its message; `failed`)."""
    what = model.__tablename__.removesuffix("s").replace("_job", "").replace("_", " ")
    try:
        return body()
    except Superseded:
        log.warning("%s %s was taken over by another run; this one stops", what, job_id)
        return None
    except transient:
        with db.transaction() as session:
            release(session, model, job_id, lease)
        raise
    except Exception as exc:
        if isinstance(exc, JobError | DomainError):
            message = exc.message
            log.error("%s %s failed: %s", what, job_id, message)
        else:
            log.exception("%s %s failed", what, job_id)
            message = f"The {what} stopped on an unexpected error: {exc!r}"
        with db.transaction() as session:
            fail(session, job_id, lease, message)
        return failed
