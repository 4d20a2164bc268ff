"""Pipeline reports: summary + funnel + overdue tasks, built by a worker from the outbox."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from ... import request_id
from ...context import Actor
from ...models import Deal, Organization, OutboxEvent, Report, Task
from ...pagination import Ordering, Page, PageRequest, paginate
from ...rules import utc_today
from .._common import get_in_org
from ..delivery import events, outbox
from . import analytics

if TYPE_CHECKING:
    from ...db import Database

log = logging.getLogger(__name__)

REPORT_TOPIC = "report.requested"  # {report_id} -> build the report
WEEKLY = "weekly"
ON_DEMAND = "on_demand"
# {report_id}: a weekly report is ready -> e-mail it to the owners and admins (report_emails)
OVERDUE_LIMIT = 100
# A report whose build failed this often is parked: status "failed", the reason in `error`.
MAX_BUILD_ATTEMPTS = 5


def list_reports(session: Session, actor: Actor, request: PageRequest) -> Page[Report]:
    stmt = select(Report).where(Report.organization_id == actor.organization_id)
    return paginate(session, stmt, request, Ordering("id", Report.id, Report.id))


def get_report(session: Session, actor: Actor, report_id: int) -> Report:
    return get_in_org(session, Report, actor.organization_id, report_id, name="report")


def request_report(session: Session, actor: Actor, *, today: dt.date | None = None) -> Report:
    """An on-demand report over the last 7 days, built by a worker (status pending -> ready)."""
    end = today or utc_today()
    report = Report(
        organization_id=actor.organization_id,
        kind=ON_DEMAND,
        status="pending",
        period_start=end - dt.timedelta(days=6),
        period_end=end,
        requested_by=actor.user_id,
    )
    session.add(report)
    session.flush()
    outbox.record(session, actor.organization_id, REPORT_TOPIC, {"report_id": report.id})
    return report


def build_requested(session: Session, batch: Sequence[OutboxEvent]) -> None:
    """Outbox handler for `report.requested`: build each report in the delivering transaction
    (a worker sends them to the bulk queue instead, crm_worker.consumers)."""
    for ev in batch:
        with request_id.bound(ev.request_id):  # on its `report.ready` event
            build(session, ev.payload["report_id"])


def last_full_week(today: dt.date) -> tuple[dt.date, dt.date]:
    """Monday..Sunday of the week before the one holding `today`."""
    this_monday = today - dt.timedelta(days=today.weekday())
    start = this_monday - dt.timedelta(days=7)
    return start, start + dt.timedelta(days=6)


def schedule_weekly(session: Session, *, today: dt.date | None = None) -> int:
    """Create last week's report for every organization that lacks one; returns how many."""
    start, end = last_full_week(today or utc_today())
    created = 0
    org_ids = session.scalars(select(Organization.id).order_by(Organization.id)).all()
    for org_id in org_ids:
        report_id = session.scalar(
            insert(Report)
            .values(
                organization_id=org_id,
                kind=WEEKLY,
                status="pending",
                period_start=start,
                period_end=end,
            )
            .on_conflict_do_nothing(
                index_elements=[Report.organization_id, Report.period_start],
                # a literal predicate: PostgreSQL cannot match a bound parameter to the
                # partial unique index `WHERE kind = 'weekly'`
                index_where=text(f"kind = '{WEEKLY}'"),
            )
            .returning(Report.id)
        )
        if report_id is not None:
            outbox.record(session, org_id, REPORT_TOPIC, {"report_id": report_id})
            created += 1
    return created


def overdue_tasks(session: Session, organization_id: int, today: dt.date) -> dict[str, Any]:
    base = (
        select(Task, Deal.owner_id, Deal.title)
        .join(Deal, (Deal.id == Task.deal_id) & (Deal.organization_id == Task.organization_id))
        .where(
            Task.organization_id == organization_id,
            Task.is_done.is_(False),
            Task.due_date < today,
        )
    )
    total = session.scalar(select(func.count()).select_from(base.subquery())) or 0
    rows = session.execute(base.order_by(Task.due_date, Task.id).limit(OVERDUE_LIMIT)).all()
    return {
        "total": total,
        "items": [
            {
                "task_id": task.id,
                "title": task.title,
                "deal_id": task.deal_id,
                "deal_title": deal_title,
                "deal_owner_id": owner_id,
                "due_date": task.due_date.isoformat(),
                "days_overdue": (today - task.due_date).days,
            }
            for task, owner_id, deal_title in rows
        ],
    }


def pending_ids(session: Session, *, older_than: dt.timedelta, limit: int = 500) -> list[int]:
    """Reports still pending although they were requested more than `older_than` ago."""
    cutoff = dt.datetime.now(dt.UTC) - older_than
    return list(
        session.scalars(
            select(Report.id)
            .where(Report.status == "pending", Report.created_at <= cutoff)
            .order_by(Report.id)
            .limit(limit)
        )
    )


def build(session: Session, report_id: int) -> None:
    """Fill a pending report; building twice leaves the first result."""
    report = session.scalar(select(Report).where(Report.id == report_id).with_for_update())
    if report is None or report.status == "ready":
        return
    days = (report.period_end - report.period_start).days + 1
    now = dt.datetime.combine(report.period_end + dt.timedelta(days=1), dt.time(), dt.UTC)
    # Summary and funnel from one statement: they describe the same state of the deals.
    deals = analytics.snapshot(session, report.organization_id, as_of=now, windows=[days])
    report.data = {
        "period": {
            "start": report.period_start.isoformat(),
            "end": report.period_end.isoformat(),
        },
        "summary": deals.summary(days),
        "funnel": deals.funnel(),
        "overdue_tasks": overdue_tasks(session, report.organization_id, utc_today()),
    }
    report.status = "ready"
    report.error = None  # of an earlier attempt
    report.completed_at = dt.datetime.now(dt.UTC)
    # One event for webhooks (`report.ready`) and the weekly e-mail (weekly reports only).
    events.record_ready(session, "report", report)


def build_or_park(db: Database, report_id: int) -> None:
    """Build a report in a transaction of its own (the worker's task). An error other than
    a database outage costs an attempt, kept on the report with its reason; after
    MAX_BUILD_ATTEMPTS the report is parked as failed, and beat's re-sending (of pending
    reports only) leaves it alone."""
    try:
        with db.transaction() as session:
            build(session, report_id)
    except OperationalError:
        raise  # the database is away: nobody's fault, no attempt spent
    except Exception as exc:
        log.exception("report %s could not be built", report_id)
        with db.transaction() as session:
            _record_failure(session, report_id, exc)


def _record_failure(session: Session, report_id: int, error: BaseException) -> None:
    report = session.scalar(select(Report).where(Report.id == report_id).with_for_update())
    if report is None or report.status != "pending":
        return
    report.attempts += 1
    report.error = f"The report could not be built: {type(error).__name__}: {error}"[:1000]
    if report.attempts >= MAX_BUILD_ATTEMPTS:
        report.status = "failed"
        report.completed_at = dt.datetime.now(dt.UTC)
        log.error(
            "report %s parked as failed after %d attempts: %r", report.id, report.attempts, error
        )
