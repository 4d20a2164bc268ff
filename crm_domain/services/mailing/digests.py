"""The daily task digest: once a day each user whose deals have open tasks due that day or
overdue gets one e-mail listing them (grouped by organization), unless they opted out
(`users.email_digest`). One e-mail per user and day: the queue key is made of both."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import and_, func, literal, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from ...mail.render import Content, render
from ...models import Deal, Organization, OrganizationMember, OutboundEmail, Task, User
from ...rules import utc_today
from . import outbound_email

EMAIL_KIND = "task_digest"
SHOWN = 50


def _due_on_own_deals(day: dt.date) -> Any:
    """Open tasks due on or before `day` on deals whose owner is still a member."""
    return (
        select(Task)
        .join(Deal, (Deal.id == Task.deal_id) & (Deal.organization_id == Task.organization_id))
        .join(
            OrganizationMember,
            and_(
                OrganizationMember.organization_id == Deal.organization_id,
                OrganizationMember.user_id == Deal.owner_id,
            ),
        )
        .where(Task.is_done.is_(False), Task.due_date <= day)
    )


def schedule(session: Session, *, today: dt.date | None = None) -> int:
    """Queue today's digest for every user who has due tasks and did not opt out; returns how
    many were queued (a second run the same day queues none)."""
    day = today or utc_today()
    owners = _due_on_own_deals(day).with_only_columns(Deal.owner_id).distinct()
    rows = select(
        func.concat(f"digest:{day.isoformat()}:", User.id),
        literal(EMAIL_KIND),
        User.id,
        User.email,
        func.jsonb_build_object("day", day.isoformat()),
    ).where(User.id.in_(owners.scalar_subquery()), User.email_digest.is_(True))
    queued = session.connection().execute(
        pg_insert(OutboundEmail)
        .from_select(["dedupe_key", "kind", "user_id", "to_address", "params"], rows)
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(OutboundEmail.id)
    )
    return len(queued.all())


def due_tasks(session: Session, user_id: int, day: dt.date) -> tuple[int, list[dict[str, Any]]]:
    """(how many, the first SHOWN) open tasks due by `day` on the user's deals, oldest first."""
    base = _due_on_own_deals(day).where(Deal.owner_id == user_id)
    total = session.scalar(base.with_only_columns(func.count())) or 0
    rows = session.execute(
        base.with_only_columns(Task.title, Task.due_date, Deal.title, Organization.name)
        .join(Organization, Organization.id == Task.organization_id)
        .order_by(Organization.name, Task.due_date, Task.id)
        .limit(SHOWN)
    ).all()
    items = [
        {
            "title": title,
            "deal_title": deal_title,
            "organization": org_name,
            "due_date": due.isoformat(),
            "days_overdue": (day - due).days,
        }
        for title, due, deal_title, org_name in rows
    ]
    return total, items


def _when(days_overdue: int) -> str:
    if days_overdue <= 0:
        return "due today"
    return f"{days_overdue} day{'s' if days_overdue != 1 else ''} overdue"


def compose_email(
    session: Session, row: OutboundEmail, context: outbound_email.MailContext
) -> Content | None:
    user = session.get(User, row.user_id) if row.user_id is not None else None
    if user is None or not user.email_digest:
        return None  # opted out after it was queued
    day = dt.date.fromisoformat(row.params["day"])
    total, items = due_tasks(session, user.id, day)
    if not total:
        return None  # done in the meantime
    groups: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        groups.setdefault(item["organization"], []).append(
            {**item, "when": _when(item["days_overdue"])}
        )
    noun = "task" if total == 1 else "tasks"
    return render(
        "task_digest",
        f"{total} {noun} due today or overdue ({day.isoformat()})",
        name=user.name,
        day=day.isoformat(),
        total=total,
        groups=[{"organization": org, "tasks": tasks} for org, tasks in groups.items()],
        more=total - len(items),
    )


def set_email_digest(session: Session, user_id: int, enabled: bool) -> User | None:
    user = session.get(User, user_id, with_for_update=True)
    if user is not None:
        user.email_digest = enabled
    return user
