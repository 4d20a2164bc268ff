"""Deadline reminders: one timeline entry and one notification per open due task per day."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from ...db import Database
from ...enums import ActivityType
from ...models import Activity, Deal, Notification, Task
from ...rules import utc_today

REMINDER_NAMESPACE = uuid.UUID("6f0d7c1e-8f3b-4c8e-9a57-3b1f0f4f2a10")
TASK_DUE = "task_due"


def reminder_key(task_id: int, day: dt.date) -> uuid.UUID:
    """The same task on the same day always gets the same key."""
    return uuid.uuid5(REMINDER_NAMESPACE, f"task-reminder:{task_id}:{day.isoformat()}")


def send_all_due(db: Database, *, today: dt.date | None = None) -> int:
    """Every due reminder, one transaction per batch; returns how many were written."""
    total, after = 0, 0
    while True:
        with db.transaction() as session:
            written, last = send_due_reminders(session, today=today, after_id=after)
        total += written
        if last is None:
            return total
        after = last


def send_due_reminders(
    session: Session, *, today: dt.date | None = None, after_id: int = 0, limit: int = 500
) -> tuple[int, int | None]:
    """Remind about one batch of open tasks due today or overdue (tasks with id > after_id).

    Returns (reminders written, last task id of the batch or None when done). Running it
    again the same day writes nothing: the activity and the notification carry a key made
    of the task and the day."""
    today = today or utc_today()
    rows = session.execute(
        select(Task, Deal.owner_id, Deal.title)
        .join(Deal, (Deal.id == Task.deal_id) & (Deal.organization_id == Task.organization_id))
        .where(Task.is_done.is_(False), Task.due_date <= today, Task.id > after_id)
        .order_by(Task.id)
        .limit(limit)
    ).all()
    written = 0
    for task, owner_id, deal_title in rows:
        key = reminder_key(task.id, today)
        payload = {
            "task_id": task.id,
            "task_title": task.title,
            "due_date": task.due_date.isoformat(),
            "days_overdue": (today - task.due_date).days,
        }
        activity_id = session.scalar(
            insert(Activity)
            .values(
                organization_id=task.organization_id,
                deal_id=task.deal_id,
                author_id=None,
                type=ActivityType.TASK_REMINDER,
                payload=payload,
                event_key=key,
            )
            .on_conflict_do_nothing(index_elements=[Activity.event_key])
            .returning(Activity.id)
        )
        session.execute(
            insert(Notification)
            .values(
                organization_id=task.organization_id,
                user_id=owner_id,
                type=TASK_DUE,
                payload={**payload, "deal_id": task.deal_id, "deal_title": deal_title},
                dedupe_key=str(key),
            )
            .on_conflict_do_nothing(index_elements=[Notification.dedupe_key])
        )
        written += activity_id is not None
    last = rows[-1][0].id if len(rows) == limit else None
    return written, last
