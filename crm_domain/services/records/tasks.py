"""Tasks on deals. "Own task" means a task on a deal the user owns."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from ... import rules
from ...context import Actor
from ...enums import ActivityType
from ...models import Deal, Task
from ...pagination import Ordering, Page, PageRequest, paginate
from .._common import Precondition, get_in_org
from ..delivery import events
from . import deals, timeline, trash
from .custom_fields import apply_custom_fields, present, update_with_custom_fields
from .custom_queries import CustomQuery, narrow

ORDERING = Ordering("due_date", Task.due_date, Task.id, descending=False)


def list_tasks(
    session: Session,
    actor: Actor,
    request: PageRequest,
    *,
    deal_id: int | None = None,
    custom: CustomQuery | None = None,
    **filters: Any,
) -> Page[Task]:
    """One page of tasks; `filters` are those of `filtered`, `custom` by custom field."""
    stmt = filtered(actor, deal_id=deal_id, **filters)
    stmt, ordering = narrow(session, actor, "task", Task, stmt, ORDERING, custom)
    if deal_id is None:
        page = paginate(session, stmt, request, ordering)
    else:
        page = deals.page_of_deal(session, actor, deal_id, stmt, request, ordering)
    present(session, actor.organization_id, "task", page.items)
    return page


def filtered(
    actor: Actor,
    *,
    deal_id: int | None = None,
    only_open: bool = False,
    due_before: dt.date | None = None,
    due_after: dt.date | None = None,
) -> Select[Task]:
    """The tasks a list with these filters shows, not yet ordered."""
    stmt = select(Task).where(Task.organization_id == actor.organization_id)
    if deal_id is not None:
        stmt = stmt.where(Task.deal_id == deal_id)
    if only_open:
        stmt = stmt.where(Task.is_done.is_(False))
    if due_before is not None:
        stmt = stmt.where(Task.due_date <= due_before)
    if due_after is not None:
        stmt = stmt.where(Task.due_date >= due_after)
    return stmt


def get_task(session: Session, actor: Actor, task_id: int, *, for_update: bool = False) -> Task:
    return get_in_org(
        session, Task, actor.organization_id, task_id, name="task", for_update=for_update
    )


def _ensure_own_deal(session: Session, actor: Actor, deal: Deal) -> None:
    rules.ensure_can_modify(
        actor.role, owner_id=deal.owner_id, user_id=actor.user_id, what="deals' tasks"
    )


def create_task(
    session: Session,
    actor: Actor,
    *,
    deal_id: int,
    title: str,
    due_date: dt.date,
    description: str | None = None,
    custom_fields: dict[str, Any] | None = None,
) -> Task:
    """Check order: 404 (deal) -> 403 (member on another's deal) -> 400 (due date)."""
    # Locked: a deal going to the trash meanwhile takes this task with it or this is a 404.
    deal = deals.get_deal(session, actor, deal_id, for_update=True)
    _ensure_own_deal(session, actor, deal)
    rules.ensure_due_date(due_date)
    task = Task(
        organization_id=actor.organization_id,
        deal_id=deal.id,
        title=title,
        description=description,
        due_date=due_date,
    )
    apply_custom_fields(session, actor, "task", task, custom_fields, creating=True)
    session.add(task)
    session.flush()
    events.record_created(session, "task", task)
    timeline.record_activity(
        session,
        organization_id=actor.organization_id,
        deal_id=deal.id,
        author_id=actor.user_id,
        type=ActivityType.TASK_CREATED,
        payload={"task_id": task.id, "task_title": task.title},
    )
    return task


def update_task(
    session: Session,
    actor: Actor,
    task_id: int,
    changes: dict[str, Any],
    precondition: Precondition | None = None,
) -> Task:
    task = get_task(session, actor, task_id, for_update=True)
    _ensure_own_deal(session, actor, deals.get_deal(session, actor, task.deal_id))
    if precondition:
        precondition(task)
    if "due_date" in changes and changes["due_date"] != task.due_date:
        rules.ensure_due_date(changes["due_date"])
    changed = update_with_custom_fields(session, actor, "task", task, changes)
    if changed:
        session.flush()
        events.record_updated(session, "task", task, changed)
    return task


def delete_task(
    session: Session, actor: Actor, task_id: int, precondition: Precondition | None = None
) -> None:
    task = get_task(session, actor, task_id, for_update=True)
    _ensure_own_deal(session, actor, deals.get_deal(session, actor, task.deal_id))
    if precondition:
        precondition(task)
    events.record_deleted(session, "task", task)
    trash.put_in_trash(session, actor, "task", task)
