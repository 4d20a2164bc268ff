"""`flask --app wsgi crm …`: the background jobs run by hand, in-process."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import insert, select

from crm_domain.models import Deal, Notification, Report

from .api import ApiClient


def test_reminders_command_writes_todays_reminders(app, api: ApiClient, db) -> None:
    user = api.register()
    deal = api.deal(user)
    today = dt.datetime.now(dt.UTC).date().isoformat()
    task = api.task(user, deal["id"], due_date=today)
    result = app.test_cli_runner().invoke(args=["crm", "reminders"])
    assert result.exit_code == 0 and "reminders written:" in result.output
    with db.transaction() as s:
        notes = s.scalars(select(Notification).where(Notification.user_id == user.id)).all()
    assert [n.payload["task_id"] for n in notes] == [task["id"]]


def test_reports_command_creates_and_builds_last_weeks_reports(app, api: ApiClient, db) -> None:
    user = api.register()
    result = app.test_cli_runner().invoke(args=["crm", "reports", "--weekly"])
    assert result.exit_code == 0, result.output
    with db.transaction() as s:
        weekly = s.scalars(
            select(Report).where(Report.organization_id == user.org_id, Report.kind == "weekly")
        ).all()
    assert [r.status for r in weekly] == ["ready"]


def test_refresh_analytics_command_sees_rows_written_behind_the_api(app, api, db) -> None:
    user = api.register()
    contact = api.contact(user)
    assert api.get("/analytics/deals/summary", user=user, org=user.org_id).json["total_deals"] == 0
    with db.transaction() as s:  # not through the service: no outbox event, no refresh
        s.execute(
            insert(Deal).values(
                organization_id=user.org_id, contact_id=contact["id"], owner_id=user.id, title="X"
            )
        )
    runner = app.test_cli_runner()
    result = runner.invoke(args=["crm", "refresh-analytics", "--org", str(user.org_id)])
    assert result.exit_code == 0 and "organizations refreshed: 1" in result.output
    assert api.get("/analytics/deals/summary", user=user, org=user.org_id).json["total_deals"] == 1
