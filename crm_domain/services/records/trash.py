"""The trash: what a DELETE of a contact, deal or task does, and how it comes back.

Trashing sets `deleted_at`/`deleted_by` (crm_domain.trashable then hides the row from every
ORM read); a deal takes its live tasks with it (`trashed_with_deal`) and brings back only
those. Restoring clears the marks and leaves every other column as it was (`updated_at`
too, so the ETag is the one from before the DELETE). Purging removes rows for good: one now
(owners and admins), or by beat what has been in the trash longer than TRASH_RETENTION_DAYS,
in small batches.

Rules decided here (README "Trash and restore"):
- a contact with live deals cannot be trashed (409 CONTACT_HAS_DEALS, services.records.
  contacts); one whose deals are all in the trash can, and its deals stay in the trash;
- a deal whose contact is in the trash cannot be restored (409 CONTACT_IN_TRASH naming it),
  nor a task whose deal is in the trash (409 DEAL_IN_TRASH); restore the parent first;
- a contact trashed by a merge cannot be restored (409 CONTACT_MERGED);
- the trash is listed to those who could have deleted the record: owner, admin and manager
  everything, a member what they own (a task: on a deal they own). A task that went with its
  deal is not listed on its own: it comes back with the deal.

Bulk actions call `restore` / `put_in_trash` one record at a time."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Select, delete, func, select, update
from sqlalchemy.orm import Session

from ... import audit, rules
from ...context import Actor
from ...enums import ActivityType
from ...errors import Conflict, Forbidden, NotFound
from ...models import Contact, Deal, Task
from ...pagination import Ordering, Page, PageRequest, paginate
from ...trashable import INCLUDE_TRASHED, including_trashed
from ..delivery import events
from . import timeline

ENTITIES: dict[str, type[Contact] | type[Deal] | type[Task]] = {
    "contact": Contact,
    "deal": Deal,
    "task": Task,
}
ENTITY_OF = {model: entity for entity, model in ENTITIES.items()}
# The deal timeline's entries for its trip to the trash and back (type `system`).
TIMELINE_DELETED = "deal_deleted"
TIMELINE_RESTORED = "deal_restored"


def model_of(entity: str) -> Any:
    try:
        return ENTITIES[entity]
    except KeyError:
        raise NotFound(
            f"Unknown entity {entity!r}",
            code="UNKNOWN_ENTITY",
            details={"entity": entity, "allowed": sorted(ENTITIES)},
        ) from None


def put_in_trash(session: Session, actor: Actor, entity: str, obj: Any, **marks: Any) -> None:
    """Move `obj` (loaded and checked by its service: permissions, preconditions, rules) to
    the trash; `marks` are more columns to set (a merge's `merged_into_id`). Its
    `<entity>.deleted` event is the service's."""
    model = model_of(entity)
    _mark(session, model, model.id == obj.id, deleted_by=actor.user_id, **marks)
    if entity == "deal":
        live_tasks = (Task.deal_id == obj.id) & Task.deleted_at.is_(None)
        _mark(session, Task, live_tasks, deleted_by=actor.user_id, trashed_with_deal=True)
        system_entry(session, actor, obj, TIMELINE_DELETED)
    session.expire(obj)


def restore(session: Session, actor: Actor, entity: str, record_id: int) -> Any:
    """Bring one record back from the trash, exactly as it was (a deal with the tasks that
    went with it); answers it. 404 unless it is in the caller's organization's trash."""
    model = model_of(entity)
    obj = _trashed(session, actor, model, entity, record_id)
    _ensure_can_restore(session, actor, entity, obj)
    _unmark(session, model, model.id == obj.id)
    if entity == "deal":
        _unmark(session, Task, (Task.deal_id == obj.id) & Task.trashed_with_deal.is_(True))
        system_entry(session, actor, obj, TIMELINE_RESTORED)
    session.refresh(obj)
    events.record_restored(session, entity, obj)
    return obj


def purge(session: Session, actor: Actor, entity: str, record_id: int) -> None:
    """Remove one trashed record for good now (owners and admins): a deal with its tasks and
    timeline, a contact with its trashed deals."""
    model = model_of(entity)
    obj = _trashed(session, actor, model, entity, record_id)
    if actor.role not in rules.SETTINGS_ROLES:
        raise Forbidden("Only owner or admin can empty the trash", code="PURGE_FORBIDDEN")
    if entity == "contact":
        _purge_deals_of(session, [obj.id])
    session.execute(delete(model).where(model.id == obj.id))
    audit.record(session, obj.organization_id, f"{entity}.purged", entity, obj.id)
    session.expunge(obj)


def purge_expired(session: Session, *, before: dt.datetime, batch_size: int) -> int:
    """Purge up to `batch_size` rows per kind trashed before `before`, oldest first; rows
    another purge holds are skipped. Answers how many rows went (0: nothing left)."""
    purged = 0
    for model in (Task, Deal, Contact):
        due = select(model.id, model.organization_id).where(model.deleted_at < before)
        if model is Contact:  # never one with a live deal (the foreign key would refuse)
            live_deal = select(Deal.id).where(
                Deal.contact_id == Contact.id, Deal.deleted_at.is_(None)
            )
            due = due.where(~live_deal.exists())
        rows = session.execute(
            due.order_by(model.deleted_at)
            .limit(batch_size)
            .with_for_update(skip_locked=True)
            .execution_options(**INCLUDE_TRASHED)
        ).all()
        if not rows:
            continue
        ids = [row.id for row in rows]
        if model is Contact:
            _purge_deals_of(session, ids)
        session.execute(delete(model).where(model.id.in_(ids)))
        entity = ENTITY_OF[model]
        audit.record_many(
            session,
            [audit.entry(row.organization_id, f"{entity}.purged", entity, row.id) for row in rows],
        )
        purged += len(ids)
    return purged


def list_trash(session: Session, actor: Actor, entity: str, request: PageRequest) -> Page[Any]:
    """One page of the organization's trash of `entity`, most recently trashed first."""
    model = model_of(entity)
    stmt: Select[Any] = select(model).where(
        model.organization_id == actor.organization_id, model.deleted_at.is_not(None)
    )
    if entity == "task":
        stmt = stmt.where(Task.trashed_with_deal.is_(False))
    if not rules.can_manage_all(actor.role):
        if entity == "task":
            own_deals = select(Deal.id).where(Deal.owner_id == actor.user_id)
            stmt = stmt.where(Task.deal_id.in_(own_deals))
        else:
            stmt = stmt.where(model.owner_id == actor.user_id)
    ordering = Ordering("deleted_at", model.deleted_at, model.id, descending=True)
    with including_trashed(session):
        return paginate(session, stmt, request, ordering)


def _trashed(session: Session, actor: Actor, model: Any, entity: str, record_id: int) -> Any:
    obj = session.scalar(
        select(model)
        .where(
            model.id == record_id,
            model.organization_id == actor.organization_id,
            model.deleted_at.is_not(None),
        )
        .with_for_update()
        .execution_options(**INCLUDE_TRASHED)
    )
    if obj is None:
        raise NotFound(
            f"{entity.capitalize()} not found in the trash (never deleted, restored or purged)",
            code=f"{entity.upper()}_NOT_FOUND",
        )
    return obj


def _ensure_can_restore(session: Session, actor: Actor, entity: str, obj: Any) -> None:
    """Who could delete it may restore it; its parent must be live; a merged contact stays."""
    if entity == "task":
        deal = session.scalar(  # locked: its DELETE waits for this restore, or goes first
            select(Deal)
            .where(Deal.id == obj.deal_id)
            .with_for_update()
            .execution_options(**INCLUDE_TRASHED)
        )
        assert deal is not None  # a foreign key
        rules.ensure_can_modify(
            actor.role, owner_id=deal.owner_id, user_id=actor.user_id, what="deals' tasks"
        )
        if deal.deleted_at is not None:
            raise Conflict(
                f"The task's deal {deal.id} is in the trash: restore the deal first",
                code="DEAL_IN_TRASH",
                details={"deal_id": deal.id},
            )
        return
    rules.ensure_can_modify(
        actor.role, owner_id=obj.owner_id, user_id=actor.user_id, what=f"{entity}s"
    )
    if entity == "contact" and obj.merged_into_id is not None:
        raise Conflict(
            f"The contact was merged into contact {obj.merged_into_id} and cannot be restored",
            code="CONTACT_MERGED",
            details={"merged_into_id": obj.merged_into_id},
        )
    if entity == "deal":
        contact_trashed = session.scalar(  # locked, like a task's deal above
            select(Contact.deleted_at.is_not(None))
            .where(Contact.id == obj.contact_id)
            .with_for_update(of=Contact)
            .execution_options(**INCLUDE_TRASHED)
        )
        if contact_trashed:
            raise Conflict(
                f"The deal's contact {obj.contact_id} is in the trash: restore it first",
                code="CONTACT_IN_TRASH",
                details={"contact_id": obj.contact_id},
            )


def _mark(session: Session, model: Any, where: Any, *, deleted_by: int, **extra: Any) -> None:
    """Trash the rows `where` picks, keeping `updated_at` (the record is not edited)."""
    session.execute(
        update(model)
        .where(where)
        .values(deleted_at=func.now(), deleted_by=deleted_by, updated_at=model.updated_at, **extra)
        .execution_options(synchronize_session=False)
    )


def _unmark(session: Session, model: Any, where: Any) -> None:
    extra = {"trashed_with_deal": False} if model is Task else {}
    session.execute(
        update(model)
        .where(where)
        .values(deleted_at=None, deleted_by=None, updated_at=model.updated_at, **extra)
        .execution_options(synchronize_session=False)
    )


def _purge_deals_of(session: Session, contact_ids: list[int]) -> None:
    """A contact goes with its deals (all in the trash: a contact with a live deal is never
    trashed); their tasks and timelines go with them (foreign keys, ON DELETE CASCADE)."""
    live = session.scalar(
        select(Deal.id).where(Deal.contact_id.in_(contact_ids), Deal.deleted_at.is_(None)).limit(1)
    )
    if live is not None:
        raise Conflict(
            "The contact has live deals", code="CONTACT_HAS_DEALS", details={"deal_id": live}
        )
    session.execute(delete(Deal).where(Deal.contact_id.in_(contact_ids)))


def system_entry(session: Session, actor: Actor, deal: Any, event: str, **details: Any) -> None:
    """A `system` entry on the deal's timeline: {"event": event, **details} (trash, merge)."""
    timeline.record_activity(
        session,
        organization_id=deal.organization_id,
        deal_id=deal.id,
        author_id=actor.user_id,
        type=ActivityType.SYSTEM,
        payload={"event": event, **details},
    )
