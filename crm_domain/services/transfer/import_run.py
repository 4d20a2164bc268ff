"""Running an import job: the stored file is read as a stream, each row is validated with the
schema of a single write (services.transfer.rows, the one the API loads a POST with) and the
domain rules, and rows are written in batches, one transaction per batch together with
the job's progress (the last row written) and the batch's row errors. A run that stops
anywhere resumes after the last committed batch.

One bad row never stops the rows behind it: a row the loader cannot read (an error other
than its verdict) or the database refuses (a batch whose statement fails is tried row by
row, each in a savepoint that is rolled back, to find it) becomes a row error with code
ROW_FAILED and the reason, like a row that breaks a rule."""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

from ... import csvio
from ...context import Actor
from ...db import Database
from ...enums import ImportKind, ImportStatus
from ...models import ImportFile, ImportJob
from ..records import organizations
from . import custom_columns, import_writers, imports, leases, rows
from .imports import BatchOutcome, RowProblem
from .rows import RowInvalid, RowLoader

log = logging.getLogger(__name__)

FILE_CHUNK = 1024 * 1024
ROW_FAILED = "ROW_FAILED"  # the row could not be read or written (not a rule it breaks)


# How a run works through a job (crm_worker.importing makes them from the settings).
Options = leases.RunOptions


@dataclass(frozen=True)
class _Claimed:
    """A job this run claimed, with what its batches need."""

    job_id: int
    lease: uuid.UUID
    kind: ImportKind
    after: int  # the last row written before this run
    owners: import_writers.Owners


class StoredFile(io.RawIOBase):
    """An import's file read from the database in 1 MiB slices (never whole)."""

    def __init__(self, db: Database, job_id: int) -> None:
        self.db, self.job_id, self.position = db, job_id, 0
        with db.autocommit() as conn:
            size = conn.scalar(select(ImportFile.size).where(ImportFile.job_id == job_id))
        if size is None:
            raise FileNotFoundError(f"the file of import {job_id} is gone")
        self.size = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        wanted = min(len(buffer), self.size - self.position)
        if wanted <= 0:
            return 0
        with self.db.autocommit() as conn:
            chunk = conn.scalar(
                select(func.substring(ImportFile.content, self.position + 1, wanted)).where(
                    ImportFile.job_id == self.job_id
                )
            )
        data = bytes(chunk or b"")
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)


def _batches(rows: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(rows)
    while batch := list(islice(iterator, size)):
        yield batch


def _load(
    batch: list[tuple[int, dict[str, str] | None]], width: int, loader: RowLoader
) -> tuple[list[import_writers.LoadedRow], list[RowProblem]]:
    """The API schema's verdict on each row of a batch (no database needed)."""
    loaded, problems = [], []
    for row, cells in batch:
        if cells is None:
            message = f"The row does not have {width} cells like the header"
            problems.append(RowProblem(row, "", "CSV_ROW_WIDTH", message))
            continue
        try:
            loaded.append((row, loader({k: v for k, v in cells.items() if v != ""})))
        except RowInvalid as exc:
            for column, messages in exc.errors.items():
                problems += [RowProblem(row, column, "VALIDATION_ERROR", m) for m in messages]
        except Exception as exc:
            log.exception("import row %d could not be read", row)
            problems.append(_row_failed(row, "read", exc))
    return loaded, problems


def _row_failed(row: int, step: str, error: BaseException) -> RowProblem:
    # The database's refusal in the driver's words, without the statement and its parameters.
    cause = error.orig if isinstance(error, DBAPIError) and error.orig is not None else error
    message = f"The row could not be {step}: {type(cause).__name__}: {cause}"
    return RowProblem(row, "", ROW_FAILED, message[:1000])


class _Undo(Exception):
    """Rolls a trial write's savepoint back."""


def _write(
    session: Session,
    job: ImportJob,
    owners: import_writers.Owners,
    header: Sequence[str],
    loaded: list[import_writers.LoadedRow],
) -> BatchOutcome:
    """The batch in one statement. Should that fail, each row is tried alone in a savepoint
    that is always rolled back (what a row records is undone with it), the rows the database
    refuses become row errors, and the others are written together. An outage is raised."""
    try:
        with session.begin_nested():
            return import_writers.write(session, job, owners, header, loaded)
    except OperationalError:
        raise
    except Exception:
        log.warning("import %s: a batch failed; looking for its bad rows", job.id, exc_info=True)
    good, failed = [], []
    for item in loaded:
        try:
            with session.begin_nested():
                import_writers.write(session, job, owners, header, [item])
                raise _Undo
        except _Undo:
            good.append(item)
        except OperationalError:
            raise
        except Exception as exc:
            log.warning("import %s: row %d could not be written: %r", job.id, item[0], exc)
            failed.append(_row_failed(item[0], "written", exc))
    outcome = import_writers.write(session, job, owners, header, good)
    outcome.problems += failed
    return outcome


def run(db: Database, job_id: int, options: Options) -> ImportStatus | None:
    """Claim and run a job to its end; returns its final status, or None when there was
    nothing to claim (another run has it, or it is finished). `transient` errors (an
    outage) release the job and are raised for the caller to retry; any other error fails
    the job with its message (a retry resumes it)."""
    with db.transaction() as session:
        job = imports.claim(session, job_id, options.stale_after)
        if job is None:
            return None
        lease = job.lease
        assert lease is not None
        actor = _actor(session, job.organization_id, job.created_by)
        owners = import_writers.load_owners(session, actor) if actor else None
        kind, after = job.kind, job.last_row

    def body() -> ImportStatus:
        if owners is None:
            raise leases.JobError("The importing user is no longer a member of the organization")
        _run_batches(db, _Claimed(job_id, lease, kind, after, owners), options)
        with db.transaction() as session:
            imports.finish(session, job_id, lease)
        return ImportStatus.DONE

    return leases.guarded(
        db, ImportJob, job_id, lease, options.transient, body, ImportStatus.FAILED, imports.fail
    )


def _actor(session: Session, organization_id: int, user_id: int | None) -> Actor | None:
    """The importing user with the role they hold now (None if they left)."""
    role = None if user_id is None else organizations.role_in(session, organization_id, user_id)
    return None if role is None or user_id is None else Actor(user_id, organization_id, role)


def _run_batches(db: Database, job: _Claimed, options: Options) -> None:
    with db.transaction() as session:
        org = job.owners.actor.organization_id
        custom = custom_columns.import_definitions(session, org, job.kind)
        members = custom_columns.members(session, org) if custom else frozenset()
    loader = custom_columns.with_custom_fields(rows.LOADERS[job.kind], custom, members)
    buffered = io.BufferedReader(StoredFile(db, job.job_id), FILE_CHUNK)
    with csvio.open_text(buffered) as text:
        reader = csvio.Reader(text, job.kind, tuple(custom))
        for batch in _batches(reader.rows(after=job.after), options.batch_size):
            loaded, problems = _load(batch, len(reader.header), loader)
            with db.transaction() as session:
                locked = imports.lock_for_batch(session, job.job_id, job.lease)
                outcome = _write(session, locked, job.owners, reader.header, loaded)
                outcome.problems = sorted(problems + outcome.problems, key=lambda p: p.row)
                imports.record_batch(
                    session, locked, last_row=batch[-1][0], rows=len(batch), outcome=outcome
                )
                recorded = job.kind is ImportKind.DEALS and outcome.created > 0
            if recorded and options.announce is not None:
                options.announce()
