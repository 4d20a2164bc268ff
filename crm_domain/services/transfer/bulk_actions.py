"""Bulk actions: one update or delete of many contacts, deals or tasks, created with its
target ids and an outbox event, run by a worker in batches, cancelled between two batches.

A bulk action's life: `pending` (its ids resolved once, now, into bulk_action_items; the
outbox event asks a worker to run it) -> `running` (claimed under a lease, see leases; each
batch applies the next records in id order, each through the single PATCH/DELETE's service
function in a savepoint, and commits their changes, their errors and `last_record_id`
together) -> `done`, `cancelled` (asked for; the run stops before its next batch) or
`failed` (the actor left the organization; an unexpected error). A run that dies is taken
over after IMPORT_STALL_SECONDS and resumes after the last committed batch: no record twice."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, delete, func, insert, select
from sqlalchemy.orm import Session

from ... import audit, rules
from ...context import Actor
from ...enums import BulkActionStatus
from ...errors import Conflict, ValidationFailed
from ...models import BulkAction, BulkActionError, BulkActionItem
from ...pagination import Ordering, Page, PageRequest, paginate
from ...trashable import INCLUDE_TRASHED
from .._common import get_in_org
from ..delivery import outbox
from . import leases
from .bulk_registry import ENTITIES, IDS_ONLY

BULK_ACTION_TOPIC = "bulk_action.requested"  # {bulk_action_id} -> run it (the imports queue)
MAX_IDS = 10_000  # an `ids` list may name this many records
MAX_MATCHES = 10_000  # a filter may match this many records (narrow it, or send several)
ERRORS_SHOWN = 100  # errors inline in GET /bulk-actions/{id}
FINISHED = (BulkActionStatus.DONE, BulkActionStatus.FAILED, BulkActionStatus.CANCELLED)


@dataclass(frozen=True)
class Request:
    """What to do: `changes` and `filter` as sent (stored on the job for all to see)."""

    entity: str
    action: str
    changes: dict[str, Any]
    filter: dict[str, Any] | None = None


@dataclass
class BatchOutcome:
    succeeded: int = 0
    errors: list[tuple[int, str, str]] = field(default_factory=list)  # (record, code, message)


# --- the API side ---------------------------------------------------------------------------


def matching(
    session: Session, actor: Actor, request: Request, target: Select[Any] | Sequence[int]
) -> int:
    """How many records the selection touches: the ids of the organization's records among
    `target` (ids: live ones, or for a restore those in the trash), or the rows of the list's
    query `target` (a filter). Over the limit: 400."""
    if isinstance(target, Select):
        return len(_filtered_ids(request.entity, target, session))
    model = ENTITIES[request.entity].model
    stmt = select(func.count(model.id)).where(
        model.organization_id == actor.organization_id, model.id.in_(_unique(target))
    )
    if request.action in IDS_ONLY:  # restore: what the trash holds
        stmt = stmt.where(model.deleted_at.is_not(None)).execution_options(**INCLUDE_TRASHED)
    return session.scalar(stmt) or 0


def _filtered_ids(entity: str, target: Select[Any], session: Session) -> list[int]:
    """The ids of the list query's rows, read as the list reads them (an ORM query: trashed
    records stay hidden), in id order; over the limit: 400."""
    model = ENTITIES[entity].model
    stmt = target.with_only_columns(model.id, maintain_column_froms=True)
    ids = list(session.scalars(stmt.order_by(None).order_by(model.id).limit(MAX_MATCHES + 1)))
    _within_limit(len(ids))
    return ids


def _within_limit(matches: int) -> int:
    if matches > MAX_MATCHES:
        raise ValidationFailed(
            f"The filter matches more than {MAX_MATCHES} records; narrow it",
            code="BULK_ACTION_TOO_MANY",
            details={"max": MAX_MATCHES},
        )
    return matches


def _unique(ids: Sequence[int]) -> list[int]:
    if len(ids) > MAX_IDS:
        raise ValidationFailed(
            f"At most {MAX_IDS} ids per bulk action",
            code="BULK_ACTION_TOO_MANY",
            details={"max": MAX_IDS},
        )
    return sorted(set(ids))


def create(
    session: Session, actor: Actor, request: Request, target: Select[Any] | Sequence[int]
) -> BulkAction:
    """A pending bulk action with its target ids; the outbox event asks a worker to run it.
    `target` is a list of ids (those not in the organization fail one by one, as a PATCH of
    them would) or the list endpoint's query of a filter (its rows now)."""
    if isinstance(target, Select):
        ids = _filtered_ids(request.entity, target, session)
    else:
        ids = _unique(target)
    job = BulkAction(
        organization_id=actor.organization_id,
        created_by=actor.user_id,
        api_key_id=actor.api_key_id,
        entity=request.entity,
        action=request.action,
        changes=request.changes,
        filter=request.filter,
        status=BulkActionStatus.PENDING,
        total=0,
    )
    session.add(job)
    session.flush()
    if ids:
        rows = [{"bulk_action_id": job.id, "record_id": record_id} for record_id in ids]
        session.execute(insert(BulkActionItem), rows)
    job.total = len(ids)
    session.flush()
    outbox.record(session, job.organization_id, BULK_ACTION_TOPIC, {"bulk_action_id": job.id})
    fields = ("entity", "action", "changes", "filter", "total", "status")
    _audit(session, job, "bulk_action.started", {f: (None, getattr(job, f)) for f in fields})
    return job


def _audit(session: Session, job: BulkAction, action: str, changes: audit.Changes) -> None:
    """The job's own entries (each record's change is audited by its domain event)."""
    audit.record(session, job.organization_id, action, "bulk_action", job.id, changes)


def list_jobs(session: Session, actor: Actor, request: PageRequest) -> Page[BulkAction]:
    stmt = select(BulkAction).where(BulkAction.organization_id == actor.organization_id)
    return paginate(session, stmt, request, Ordering("id", BulkAction.id, BulkAction.id))


def get(session: Session, actor: Actor, job_id: int, *, for_update: bool = False) -> BulkAction:
    return get_in_org(
        session,
        BulkAction,
        actor.organization_id,
        job_id,
        name="bulk_action",
        for_update=for_update,
    )


def first_errors(session: Session, job_id: int, limit: int = ERRORS_SHOWN) -> list[BulkActionError]:
    stmt = (
        select(BulkActionError)
        .where(BulkActionError.bulk_action_id == job_id)
        .order_by(BulkActionError.record_id)
        .limit(limit)
    )
    return list(session.scalars(stmt))


def error_page(
    session: Session, actor: Actor, job_id: int, request: PageRequest
) -> Page[BulkActionError]:
    """Every per-record error of a job, by record id (a cursor walks them all)."""
    get(session, actor, job_id)
    stmt = select(BulkActionError).where(BulkActionError.bulk_action_id == job_id)
    ordering = Ordering(
        "record_id", BulkActionError.record_id, BulkActionError.record_id, descending=False
    )
    return paginate(session, stmt, request, ordering)


def cancel(session: Session, actor: Actor, job_id: int) -> BulkAction:
    """A pending job is cancelled at once; a running one stops before its next batch (what
    its committed batches did stays done). Members may cancel only their own. Cancelling a
    cancelled job changes nothing; a done or failed one: 409."""
    job = get(session, actor, job_id, for_update=True)
    rules.ensure_can_modify(
        actor.role, owner_id=job.created_by or 0, user_id=actor.user_id, what="bulk actions"
    )
    if job.status in (BulkActionStatus.DONE, BulkActionStatus.FAILED):
        raise Conflict(
            "The bulk action is finished",
            code="BULK_ACTION_FINISHED",
            details={"status": job.status.value},
        )
    if not job.cancel_requested:
        _audit(session, job, "bulk_action.cancel_requested", {"cancel_requested": (False, True)})
    job.cancel_requested = True
    if job.status is BulkActionStatus.PENDING:
        _finish(session, job, BulkActionStatus.CANCELLED)
    session.flush()
    return job


# --- the worker side ------------------------------------------------------------------------


def claim(session: Session, job_id: int, stale_after: dt.timedelta) -> BulkAction | None:
    return leases.claim(session, BulkAction, job_id, stale_after, _audit_failed)


def lock_for_batch(session: Session, job_id: int, lease: uuid.UUID) -> BulkAction:
    return leases.lock(session, BulkAction, job_id, lease)


def next_ids(session: Session, job: BulkAction, limit: int) -> list[int]:
    """The next records to do, after the last committed batch, in id order."""
    stmt = (
        select(BulkActionItem.record_id)
        .where(
            BulkActionItem.bulk_action_id == job.id,
            BulkActionItem.record_id > job.last_record_id,
        )
        .order_by(BulkActionItem.record_id)
        .limit(limit)
    )
    return list(session.scalars(stmt))


def record_batch(
    session: Session, job: BulkAction, record_ids: list[int], outcome: BatchOutcome
) -> None:
    """Progress and errors of a batch, in the batch's transaction."""
    if outcome.errors:
        session.execute(
            insert(BulkActionError),
            [
                {"bulk_action_id": job.id, "record_id": r, "code": c, "message": m[:2000]}
                for r, c, m in outcome.errors
            ],
        )
    job.last_record_id = record_ids[-1]
    job.done += len(record_ids)
    job.succeeded += outcome.succeeded
    job.failed += len(outcome.errors)
    job.heartbeat_at = leases.now()
    session.flush()


def finish(session: Session, job: BulkAction, status: BulkActionStatus) -> None:
    _finish(session, job, status)
    session.flush()


def _finish(session: Session, job: BulkAction, status: BulkActionStatus) -> None:
    """Done or cancelled: its list of ids is no longer needed."""
    counts = ("done", "succeeded", "failed")
    changes = {"status": (job.status, status), **{f: (None, getattr(job, f)) for f in counts}}
    _audit(session, job, f"bulk_action.{status.value}", changes)
    job.status = status
    job.lease = None
    job.finished_at = leases.now()
    session.execute(delete(BulkActionItem).where(BulkActionItem.bulk_action_id == job.id))


def fail(session: Session, job_id: int, lease: uuid.UUID, message: str) -> None:
    """Failed (the user left, an unexpected error): the records not done stay undone."""
    leases.fail(session, BulkAction, job_id, lease, message, _audit_failed)
    session.execute(delete(BulkActionItem).where(BulkActionItem.bulk_action_id == job_id))


def _audit_failed(session: Session, job: BulkAction, message: str) -> None:
    changes = {"status": (job.status, BulkActionStatus.FAILED), "error": (None, message)}
    _audit(session, job, "bulk_action.failed", changes)


def release(session: Session, job_id: int, lease: uuid.UUID) -> None:
    leases.release(session, BulkAction, job_id, lease)


def stalled(session: Session, stale_after: dt.timedelta, limit: int = 100) -> list[int]:
    return leases.stalled(session, BulkAction, stale_after, limit)
