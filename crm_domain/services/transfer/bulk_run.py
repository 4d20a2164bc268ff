"""Running a bulk action: batch after batch, one transaction each, the next records in id order
go through the registry's per-record function (the single PATCH/DELETE's service function):
a record it refuses (a DomainError: not the member's deal, won without
an amount, a stage rollback...) or the database refuses is rolled back alone and becomes a
per-record error with the refusal's code; the others commit with the job's progress.

The work is done as the user who asked for it, with the role they hold now (a user who left
the organization fails the job), and in their name: audit entries and events name them."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

from ... import commit_inserts, context
from ...context import Actor
from ...db import Database
from ...enums import BulkActionStatus
from ...errors import DomainError
from ...models import BulkAction
from .._common import lock_in_org
from ..records import organizations
from . import bulk_actions, leases
from .bulk_actions import BatchOutcome
from .bulk_registry import ENTITIES, IDS_ONLY, RecordAction, actions
from .leases import JobError, RunOptions

log = logging.getLogger(__name__)

BATCH_SIZE = 200
RECORD_FAILED = "RECORD_FAILED"  # the database refused the record (not a rule it breaks)


@dataclass(frozen=True)
class _Claimed:
    job_id: int
    lease: uuid.UUID
    actor: Actor
    apply: RecordAction
    changes: dict[str, Any]
    model: type[Any] | None  # whose live rows a batch locks up front (None: a restore's)


def run(db: Database, job_id: int, options: RunOptions) -> BulkActionStatus | None:
    """Claim and run a job to its end; returns its final status, or None when there was
    nothing to claim (another run has it, or it is finished). `transient` errors (an
    outage) release the job and are raised for the caller to retry; any other error fails
    the job with its message."""
    with db.transaction() as session:
        job = bulk_actions.claim(session, job_id, options.stale_after)
        if job is None:
            return None
        lease = job.lease
        assert lease is not None
        try:
            claimed: _Claimed | str = _prepare(session, job, lease)
        except JobError as exc:
            claimed = exc.message

    def body() -> BulkActionStatus:
        if isinstance(claimed, str):
            raise JobError(claimed)
        with _acting_as(claimed.actor):
            return _run_batches(db, claimed, options)

    return leases.guarded(
        db,
        BulkAction,
        job_id,
        lease,
        options.transient,
        body,
        BulkActionStatus.FAILED,
        bulk_actions.fail,
    )


def _prepare(session: Session, job: Any, lease: uuid.UUID) -> _Claimed:
    """What the batches need: the user with their role now, the function, the changes."""
    user_id = job.created_by
    role = None if user_id is None else organizations.role_in(session, job.organization_id, user_id)
    if role is None or user_id is None:
        raise JobError("The user who started it is no longer a member of the organization")
    apply = actions.get(job.action, job.entity)
    if apply is None:
        raise JobError(f"The action {job.action!r} is not available for {job.entity}s")
    changes = ENTITIES[job.entity].changes().load(job.changes) if job.changes else {}
    actor = Actor(user_id, job.organization_id, role, api_key_id=job.api_key_id)
    model = None if job.action in IDS_ONLY else ENTITIES[job.entity].model
    return _Claimed(job.id, lease, actor, apply, changes, model)


@contextmanager
def _acting_as(actor: Actor) -> Iterator[None]:
    """Who is behind the work (context.origin): the user and key that asked for it."""
    token = context.bind_caller(actor.user_id, actor.api_key_id)
    try:
        yield
    finally:
        context.reset_caller(token)


def _run_batches(db: Database, job: _Claimed, options: RunOptions) -> BulkActionStatus:
    while True:
        with db.transaction() as session:
            locked = bulk_actions.lock_for_batch(session, job.job_id, job.lease)
            if locked.cancel_requested:
                bulk_actions.finish(session, locked, BulkActionStatus.CANCELLED)
                return BulkActionStatus.CANCELLED
            record_ids = bulk_actions.next_ids(session, locked, options.batch_size)
            if not record_ids:
                bulk_actions.finish(session, locked, BulkActionStatus.DONE)
                return BulkActionStatus.DONE
            if job.model is not None:  # one statement, before the batch's savepoint
                lock_in_org(session, job.model, job.actor.organization_id, record_ids)
            outcome = _apply(session, job, record_ids)
            bulk_actions.record_batch(session, locked, record_ids, outcome)
        if outcome.succeeded and options.announce is not None:
            options.announce()


class _Unsettled(Exception):
    """A record failed in a way that may have left something behind in the transaction."""


def _apply(session: Session, job: _Claimed, record_ids: list[int]) -> BatchOutcome:
    """The batch's records together, in one savepoint: a per-record function checks its
    rules before it writes, so a record it refuses leaves nothing behind, which is checked
    (nothing pending in the session, no event or audit entry queued). Should a record fail
    otherwise (the database refuses it, or a refusal left something), the savepoint is
    rolled back and the batch done again with a savepoint per record. An outage is raised."""
    try:
        with session.begin_nested():
            return _apply_together(session, job, record_ids)
    except OperationalError:
        raise
    except Exception:
        log.info("bulk action %s: a batch failed; one savepoint per record", job.job_id)
    return _apply_one_by_one(session, job, record_ids)


def _apply_together(session: Session, job: _Claimed, record_ids: list[int]) -> BatchOutcome:
    outcome = BatchOutcome()
    for record_id in record_ids:
        queued_before = commit_inserts.pending(session)  # events and audit entries
        try:
            job.apply(session, job.actor, record_id, job.changes)
            session.flush()
        except DomainError as exc:
            if session.new or session.dirty or session.deleted:
                raise _Unsettled(record_id) from exc
            if commit_inserts.pending(session) != queued_before:
                raise _Unsettled(record_id) from exc
            outcome.errors.append((record_id, exc.code, exc.message))
            continue
        outcome.succeeded += 1
    return outcome


def _apply_one_by_one(session: Session, job: _Claimed, record_ids: list[int]) -> BatchOutcome:
    """Each record in a savepoint of its own; a refused one is rolled back alone (its events
    with it)."""
    outcome = BatchOutcome()
    for record_id in record_ids:
        try:
            with session.begin_nested():
                job.apply(session, job.actor, record_id, job.changes)
            outcome.succeeded += 1
        except OperationalError:
            raise
        except DomainError as exc:
            outcome.errors.append((record_id, exc.code, exc.message))
        except Exception as exc:
            log.warning("bulk action %s: record %d failed: %r", job.job_id, record_id, exc)
            cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
            message = f"The record could not be changed: {type(cause).__name__}: {cause}"
            outcome.errors.append((record_id, RECORD_FAILED, message))
    return outcome
