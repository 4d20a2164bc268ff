"""Pipeline reports: POST/GET /reports over HTTP (built inline in the test app), the weekly
schedule and the build, and last_full_week()."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select, update

from crm_domain.models import Organization, Report, Task
from crm_domain.services.reporting import reports

from .api import ApiClient, User, error_code

REPORT_KEYS = {
    "id",
    "organization_id",
    "kind",
    "status",
    "period_start",
    "period_end",
    "requested_by",
    "created_at",
    "completed_at",
    "data",
    "error",
}


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def _request(api: ApiClient, user: User, org: int | None = None) -> dict[str, Any]:
    r = api.post("/reports", user=user, org=org or user.org_id)
    assert r.status_code == 202, r.get_json()
    return r.get_json()


def _get(api: ApiClient, user: User, report_id: int, org: int | None = None) -> dict[str, Any]:
    r = api.get(f"/reports/{report_id}", user=user, org=org or user.org_id)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def _set_due(db, task_id: int, due: dt.date) -> None:
    with db.transaction() as session:
        session.execute(update(Task).where(Task.id == task_id).values(due_date=due))


# --- request and read ---------------------------------------------------------------------------


def test_post_answers_202_pending_for_the_last_seven_days(api: ApiClient) -> None:
    user = api.register()
    today = _today()
    report = _request(api, user)
    assert set(report) == REPORT_KEYS
    assert report["status"] == "pending"
    assert report["kind"] == "on_demand"
    assert report["organization_id"] == user.org_id
    assert report["requested_by"] == user.id
    assert report["period_start"] == (today - dt.timedelta(days=6)).isoformat()
    assert report["period_end"] == today.isoformat()
    assert report["data"] is None
    assert report["completed_at"] is None
    assert dt.datetime.fromisoformat(report["created_at"]).tzinfo is not None


def test_get_shows_the_built_report(api: ApiClient) -> None:
    user = api.register()
    today = _today()
    org = user.org_id
    won = api.deal(user, amount="500.00")
    r = api.patch(
        f"/deals/{won['id']}", user=user, org=org, json={"status": "won", "stage": "closed"}
    )
    assert r.status_code == 200
    api.deal(user, amount="120.00")
    progress = api.deal(user, amount="80.00", currency="USD")
    r = api.patch(
        f"/deals/{progress['id']}",
        user=user,
        org=org,
        json={"status": "in_progress", "stage": "proposal"},
    )
    assert r.status_code == 200

    requested = _request(api, user)
    report = _get(api, user, requested["id"])
    assert report["status"] == "ready"
    assert {k: report[k] for k in ("id", "kind", "period_start", "period_end")} == {
        k: requested[k] for k in ("id", "kind", "period_start", "period_end")
    }
    completed = dt.datetime.fromisoformat(report["completed_at"])
    assert completed.tzinfo is not None
    assert completed >= dt.datetime.fromisoformat(report["created_at"])

    data = report["data"]
    assert set(data) == {"period", "summary", "funnel", "overdue_tasks"}
    assert data["period"] == {
        "start": (today - dt.timedelta(days=6)).isoformat(),
        "end": today.isoformat(),
    }
    summary = data["summary"]
    assert summary["days"] == 7
    assert summary["total_deals"] == 3
    assert summary["new_deals_last_n_days"] == 3
    by_status = {
        k: (v["count"], Decimal(v["total_amount"])) for k, v in summary["by_status"].items()
    }
    assert by_status == {
        "new": (1, Decimal("120.00")),
        "in_progress": (1, Decimal("80.00")),
        "won": (1, Decimal("500.00")),
        "lost": (0, Decimal("0")),
    }
    assert Decimal(summary["avg_won_amount"]) == Decimal("500.00")
    assert set(summary["by_currency"]) == {"EUR", "USD"}
    stages = {s["stage"]: (s["count"], s["reached"]) for s in data["funnel"]["stages"]}
    assert stages == {
        "qualification": (1, 3),
        "proposal": (1, 2),
        "negotiation": (0, 1),
        "closed": (1, 1),
    }
    assert data["overdue_tasks"] == {"total": 0, "items": []}


def test_overdue_tasks_are_listed(api: ApiClient, db) -> None:
    today = _today()
    user = api.register()
    manager = api.register()
    api.add_member(user, user.org_id, manager, "manager")
    deal = api.deal(user, title="Alpha")
    other_deal = api.deal(user, title="Beta", owner_id=manager.id)
    due_today = api.task(user, deal["id"], title="Today", due_date=today.isoformat())
    two_days = api.task(user, deal["id"], title="Two days", due_date=today.isoformat())
    four_days = api.task(user, other_deal["id"], title="Four days", due_date=today.isoformat())
    done = api.task(user, deal["id"], title="Done", due_date=today.isoformat())
    future = api.task(user, deal["id"], title="Future")
    _set_due(db, two_days["id"], today - dt.timedelta(days=2))
    _set_due(db, four_days["id"], today - dt.timedelta(days=4))
    _set_due(db, done["id"], today - dt.timedelta(days=1))
    r = api.patch(f"/tasks/{done['id']}", user=user, org=user.org_id, json={"is_done": True})
    assert r.status_code == 200
    # Another organization's overdue task is not in this report.
    stranger = api.register()
    foreign = api.task(stranger, api.deal(stranger)["id"], due_date=today.isoformat())
    _set_due(db, foreign["id"], today - dt.timedelta(days=3))

    report = _get(api, user, _request(api, user)["id"])
    overdue = report["data"]["overdue_tasks"]
    assert overdue["total"] == 2
    assert overdue["items"] == [
        {
            "task_id": four_days["id"],
            "title": "Four days",
            "deal_id": other_deal["id"],
            "deal_title": "Beta",
            "deal_owner_id": manager.id,
            "due_date": (today - dt.timedelta(days=4)).isoformat(),
            "days_overdue": 4,
        },
        {
            "task_id": two_days["id"],
            "title": "Two days",
            "deal_id": deal["id"],
            "deal_title": "Alpha",
            "deal_owner_id": user.id,
            "due_date": (today - dt.timedelta(days=2)).isoformat(),
            "days_overdue": 2,
        },
    ]
    listed = {item["task_id"] for item in overdue["items"]}
    assert due_today["id"] not in listed and future["id"] not in listed

    stranger_report = _get(api, stranger, _request(api, stranger)["id"])
    assert [i["task_id"] for i in stranger_report["data"]["overdue_tasks"]["items"]] == [
        foreign["id"]
    ]


def test_list_is_newest_first_paginated_and_per_org(api: ApiClient) -> None:
    user, other = api.register(), api.register()
    mine = [_request(api, user)["id"] for _ in range(3)]
    theirs = _request(api, other)["id"]

    r = api.get("/reports", user=user, org=user.org_id)
    assert r.status_code == 200
    page = r.get_json()
    assert page["total"] == 3
    assert [item["id"] for item in page["items"]] == sorted(mine, reverse=True)
    assert theirs not in [item["id"] for item in page["items"]]
    assert all(item["status"] == "ready" for item in page["items"])
    assert all(set(item) == REPORT_KEYS for item in page["items"])

    r1 = api.get("/reports", user=user, org=user.org_id, query={"page": 1, "page_size": 2})
    r2 = api.get("/reports", user=user, org=user.org_id, query={"page": 2, "page_size": 2})
    assert r1.status_code == r2.status_code == 200
    assert (r1.get_json()["pages"], r1.get_json()["total"]) == (2, 3)
    assert [i["id"] for i in r1.get_json()["items"]] == sorted(mine, reverse=True)[:2]
    assert [i["id"] for i in r2.get_json()["items"]] == [min(mine)]

    r = api.get("/reports", user=user, org=user.org_id, query={"page": 0})
    assert r.status_code == 400
    assert error_code(r) == "VALIDATION_ERROR"


def test_other_orgs_report_is_404(api: ApiClient) -> None:
    user, other = api.register(), api.register()
    theirs = _request(api, other)["id"]
    r = api.get(f"/reports/{theirs}", user=user, org=user.org_id)
    assert r.status_code == 404
    assert error_code(r) == "REPORT_NOT_FOUND"
    r = api.get("/reports/2147483647", user=user, org=user.org_id)
    assert r.status_code == 404
    assert error_code(r) == "REPORT_NOT_FOUND"
    r = api.get(f"/reports/{theirs}", user=user, org=other.org_id)
    assert r.status_code == 403
    assert error_code(r) == "NOT_ORGANIZATION_MEMBER"
    r = api.post("/reports", user=user)
    assert r.status_code == 400
    assert error_code(r) == "ORGANIZATION_HEADER_REQUIRED"


@pytest.mark.parametrize("role", ["owner", "admin", "manager", "member"])
def test_any_role_may_request_and_read(api: ApiClient, role: str) -> None:
    team = api.team()
    user = team[role]
    report = _request(api, user)
    assert report["requested_by"] == user.id
    assert _get(api, user, report["id"])["status"] == "ready"
    # Reports are the organization's: another member reads it too.
    reader = team["member2"]
    assert _get(api, reader, report["id"])["requested_by"] == user.id
    r = api.get("/reports", user=reader, org=reader.org_id)
    assert r.status_code == 200
    assert [i["id"] for i in r.get_json()["items"]] == [report["id"]]


# --- weekly schedule and build ------------------------------------------------------------------


def test_schedule_weekly_once_per_org_and_week(api: ApiClient, db) -> None:
    user = api.register()
    api.deal(user, amount="70.00")
    today = dt.date(2031, 3, 12)  # a Wednesday; last full week: Mon 3 .. Sun 9 March 2031
    with db.transaction() as session:
        org_count = session.scalar(select(func.count()).select_from(Organization))
        created = reports.schedule_weekly(session, today=today)
    assert created == org_count
    with db.transaction() as session:
        assert reports.schedule_weekly(session, today=today) == 0
        assert reports.schedule_weekly(session, today=dt.date(2031, 3, 16)) == 0  # same week
        weekly = session.scalar(
            select(func.count())
            .select_from(Report)
            .where(Report.kind == reports.WEEKLY, Report.period_start == dt.date(2031, 3, 3))
        )
    assert weekly == org_count

    r = api.get("/reports", user=user, org=user.org_id)
    assert r.status_code == 200
    [report] = r.get_json()["items"]
    assert report["kind"] == "weekly"
    assert report["requested_by"] is None
    assert (report["period_start"], report["period_end"]) == ("2031-03-03", "2031-03-09")
    assert report["status"] == "ready"  # built inline through the outbox
    assert report["data"]["period"] == {"start": "2031-03-03", "end": "2031-03-09"}
    assert report["data"]["summary"]["days"] == 7
    assert report["data"]["summary"]["total_deals"] == 1

    # The next week is a new report.
    with db.transaction() as session:
        assert reports.schedule_weekly(session, today=dt.date(2031, 3, 17)) == org_count
    r = api.get("/reports", user=user, org=user.org_id)
    assert [(i["period_start"], i["kind"]) for i in r.get_json()["items"]] == [
        ("2031-03-10", "weekly"),
        ("2031-03-03", "weekly"),
    ]


def test_building_twice_leaves_the_report_unchanged(api: ApiClient, db) -> None:
    user = api.register()
    api.deal(user, amount="10.00")
    built = _get(api, user, _request(api, user)["id"])
    assert built["status"] == "ready"
    api.deal(user, amount="20.00")  # the figures change after the build
    with db.transaction() as session:
        reports.build(session, built["id"])
    assert _get(api, user, built["id"]) == built

    # A pending report built directly, then again after a change.
    today = _today()
    with db.transaction() as session:
        report = Report(
            organization_id=user.org_id,
            kind=reports.ON_DEMAND,
            status="pending",
            period_start=today - dt.timedelta(days=6),
            period_end=today,
            requested_by=user.id,
        )
        session.add(report)
        session.flush()
        report_id = report.id
    with db.transaction() as session:
        reports.build(session, report_id)
    first = _get(api, user, report_id)
    assert first["status"] == "ready"
    assert first["data"]["summary"]["total_deals"] == 2
    api.deal(user, amount="30.00")
    with db.transaction() as session:
        reports.build(session, report_id)
        reports.build(session, 2147483647)  # a missing report is ignored
    assert _get(api, user, report_id) == first


# --- last_full_week -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("today", "expected"),
    [
        (dt.date(2024, 6, 10), (dt.date(2024, 6, 3), dt.date(2024, 6, 9))),  # Monday
        (dt.date(2024, 6, 12), (dt.date(2024, 6, 3), dt.date(2024, 6, 9))),  # Wednesday
        (dt.date(2024, 6, 16), (dt.date(2024, 6, 3), dt.date(2024, 6, 9))),  # Sunday
        (dt.date(2024, 6, 17), (dt.date(2024, 6, 10), dt.date(2024, 6, 16))),  # next Monday
        (dt.date(2025, 1, 1), (dt.date(2024, 12, 23), dt.date(2024, 12, 29))),  # year boundary
        (dt.date(2024, 3, 4), (dt.date(2024, 2, 26), dt.date(2024, 3, 3))),  # leap February
    ],
)
def test_last_full_week(today: dt.date, expected: tuple[dt.date, dt.date]) -> None:
    assert reports.last_full_week(today) == expected


@given(st.dates(min_value=dt.date(1990, 1, 1), max_value=dt.date(2200, 1, 1)))
def test_last_full_week_properties(today: dt.date) -> None:
    start, end = reports.last_full_week(today)
    assert start.weekday() == 0
    assert end.weekday() == 6
    assert end - start == dt.timedelta(days=6)
    assert 1 <= (today - end).days <= 7
    assert reports.last_full_week(today + dt.timedelta(days=7)) == (
        start + dt.timedelta(days=7),
        end + dt.timedelta(days=7),
    )


# --- a report that cannot be built ------------------------------------------------------------


def test_a_report_that_cannot_be_built_is_counted_then_parked_and_the_others_are_built(
    api: ApiClient, db, caplog: pytest.LogCaptureFixture
) -> None:
    """What the worker's build task runs (reports.build_or_park): a report row no build can
    handle (its period ends on the last date there is) costs an attempt per build, keeps the
    reason, is parked as failed after MAX_BUILD_ATTEMPTS and is not sent for building again;
    the report built after it is ready."""
    user = api.register()
    with db.transaction() as s:
        bad = Report(
            organization_id=user.org_id,
            kind=reports.ON_DEMAND,
            status="pending",
            period_start=dt.date.max - dt.timedelta(days=6),
            period_end=dt.date.max,
            created_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1),
        )
        good = Report(
            organization_id=user.org_id,
            kind=reports.ON_DEMAND,
            status="pending",
            period_start=_today() - dt.timedelta(days=6),
            period_end=_today(),
        )
        s.add_all([bad, good])
        s.flush()
        bad_id, good_id = bad.id, good.id
    reports.build_or_park(db, bad_id)
    reports.build_or_park(db, good_id)
    assert _get(api, user, good_id)["status"] == "ready"
    first = _get(api, user, bad_id)
    assert first["status"] == "pending" and "OverflowError" in first["error"]
    with caplog.at_level("ERROR", logger="crm_domain.services.reporting.reports"):
        for _ in range(reports.MAX_BUILD_ATTEMPTS - 1):
            reports.build_or_park(db, bad_id)
    parked = _get(api, user, bad_id)
    assert parked["status"] == "failed" and "OverflowError" in parked["error"]
    assert any(f"report {bad_id} parked as failed" in r.getMessage() for r in caplog.records)
    with db.transaction() as s:
        assert s.get(Report, bad_id).attempts == reports.MAX_BUILD_ATTEMPTS  # type: ignore[union-attr]
        assert bad_id not in reports.pending_ids(s, older_than=dt.timedelta(0))
