"""Deadline reminders (crm_domain.services.records.reminders.send_due_reminders), domain level.

The function scans every organization. Each test only creates tasks with ids above the ones
that exist when it starts, so scanning from `after_id=<first id of the test> - 1` sees exactly
this test's tasks, and the return values can be asserted exactly."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import func, select, update

from crm_domain.enums import ActivityType
from crm_domain.models import Activity, Notification, Task
from crm_domain.services.records.reminders import TASK_DUE, reminder_key, send_due_reminders

from .api import ApiClient, User


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def _task(
    api: ApiClient,
    user: User,
    deal_id: int,
    due: dt.date,
    title: str = "Call",
    org: int | None = None,
) -> int:
    return api.task(user, deal_id, org=org, title=title, due_date=due.isoformat())["id"]


def _set_due(db, task_id: int, due: dt.date) -> None:
    with db.transaction() as session:
        session.execute(update(Task).where(Task.id == task_id).values(due_date=due))


def _run(db, today: dt.date, after_id: int, limit: int = 500) -> tuple[int, int | None]:
    with db.transaction() as session:
        return send_due_reminders(session, today=today, after_id=after_id, limit=limit)


def _run_all(db, today: dt.date, after_id: int, limit: int = 500) -> int:
    total = 0
    while True:
        written, last = _run(db, today, after_id, limit)
        total += written
        if last is None:
            return total
        after_id = last


def _reminders(db, task_ids: list[int]) -> list[Activity]:
    with db.transaction() as session:
        return list(
            session.scalars(
                select(Activity)
                .where(
                    Activity.type == ActivityType.TASK_REMINDER,
                    Activity.payload["task_id"].as_integer().in_(task_ids),
                )
                .order_by(Activity.id)
            )
        )


def _notifications(db, task_ids: list[int]) -> list[Notification]:
    with db.transaction() as session:
        return list(
            session.scalars(
                select(Notification)
                .where(Notification.payload["task_id"].as_integer().in_(task_ids))
                .order_by(Notification.id)
            )
        )


def _counts(db) -> tuple[int, int]:
    with db.transaction() as session:
        activities = session.scalar(
            select(func.count())
            .select_from(Activity)
            .where(Activity.type == ActivityType.TASK_REMINDER)
        )
        notifications = session.scalar(select(func.count()).select_from(Notification))
    return int(activities or 0), int(notifications or 0)


def _by_task(rows: list[Any]) -> dict[int, list[Any]]:
    out: dict[int, list[Any]] = {}
    for row in rows:
        out.setdefault(row.payload["task_id"], []).append(row)
    return out


def test_one_reminder_and_notification_per_open_due_task(api: ApiClient, db) -> None:
    today = _today()
    user = api.register()
    deal = api.deal(user, title="Big deal")
    due_today = _task(api, user, deal["id"], today, title="Due today")
    overdue = _task(api, user, deal["id"], today, title="Overdue")
    _set_due(db, overdue, today - dt.timedelta(days=3))
    future = _task(api, user, deal["id"], today + dt.timedelta(days=1), title="Future")
    done = _task(api, user, deal["id"], today, title="Done")
    r = api.patch(f"/tasks/{done}", user=user, org=user.org_id, json={"is_done": True})
    assert r.status_code == 200

    written, last = _run(db, today, after_id=due_today - 1)
    assert (written, last) == (2, None)

    activities = _by_task(_reminders(db, [due_today, overdue, future, done]))
    assert set(activities) == {due_today, overdue}
    expected = {
        due_today: {
            "task_id": due_today,
            "task_title": "Due today",
            "due_date": today.isoformat(),
            "days_overdue": 0,
        },
        overdue: {
            "task_id": overdue,
            "task_title": "Overdue",
            "due_date": (today - dt.timedelta(days=3)).isoformat(),
            "days_overdue": 3,
        },
    }
    for task_id, rows in activities.items():
        assert len(rows) == 1
        activity = rows[0]
        assert activity.author_id is None
        assert activity.deal_id == deal["id"]
        assert activity.organization_id == user.org_id
        assert activity.payload == expected[task_id]
        assert activity.event_key == reminder_key(task_id, today)

    notifications = _by_task(_notifications(db, [due_today, overdue, future, done]))
    assert set(notifications) == {due_today, overdue}
    for task_id, rows in notifications.items():
        assert len(rows) == 1
        n = rows[0]
        assert n.type == TASK_DUE == "task_due"
        assert n.user_id == user.id
        assert n.organization_id == user.org_id
        assert n.read_at is None
        assert n.payload == {**expected[task_id], "deal_id": deal["id"], "deal_title": "Big deal"}

    # The reminders are on the deal's timeline, without an author.
    r = api.get(f"/deals/{deal['id']}/activities", user=user, org=user.org_id)
    assert r.status_code == 200
    reminders = [a for a in r.get_json()["items"] if a["type"] == "task_reminder"]
    assert sorted(a["payload"]["task_id"] for a in reminders) == sorted([due_today, overdue])
    assert all(a["author_id"] is None for a in reminders)


def test_same_day_twice_writes_nothing_next_day_writes_again(api: ApiClient, db) -> None:
    today = _today()
    user = api.register()
    deal = api.deal(user)
    first = _task(api, user, deal["id"], today)
    second = _task(api, user, deal["id"], today)
    ids = [first, second]

    assert _run(db, today, after_id=first - 1) == (2, None)
    counts = _counts(db)
    assert _run(db, today, after_id=first - 1) == (0, None)
    assert _counts(db) == counts
    assert len(_reminders(db, ids)) == 2
    assert len(_notifications(db, ids)) == 2

    tomorrow = today + dt.timedelta(days=1)
    assert _run(db, tomorrow, after_id=first - 1) == (2, None)
    activities = _by_task(_reminders(db, ids))
    assert {
        t: sorted(a.payload["days_overdue"] for a in rows) for t, rows in activities.items()
    } == {
        first: [0, 1],
        second: [0, 1],
    }
    assert len(_notifications(db, ids)) == 4
    assert _run(db, tomorrow, after_id=first - 1) == (0, None)


def test_same_day_rerun_over_all_organizations_returns_zero(api: ApiClient, db) -> None:
    """A day far in the future: every open task in the database is due; the rerun writes 0."""
    day = _today() + dt.timedelta(days=4000)
    user = api.register()
    deal = api.deal(user)
    task = _task(api, user, deal["id"], _today())
    assert _run_all(db, day, after_id=0) >= 1
    counts = _counts(db)
    assert _run_all(db, day, after_id=0) == 0
    assert _counts(db) == counts
    [reminder] = _reminders(db, [task])
    assert reminder.payload["days_overdue"] == 4000


def test_done_and_future_tasks_get_nothing(api: ApiClient, db) -> None:
    today = _today()
    user = api.register()
    deal = api.deal(user)
    future = _task(api, user, deal["id"], today + dt.timedelta(days=2))
    done = _task(api, user, deal["id"], today)
    r = api.patch(f"/tasks/{done}", user=user, org=user.org_id, json={"is_done": True})
    assert r.status_code == 200

    assert _run(db, today, after_id=future - 1) == (0, None)
    assert _run(db, today + dt.timedelta(days=1), after_id=future - 1) == (0, None)
    assert _reminders(db, [future, done]) == []
    assert _notifications(db, [future, done]) == []
    # The future task becomes due on its day.
    assert _run(db, today + dt.timedelta(days=2), after_id=future - 1) == (1, None)
    assert [a.payload["task_id"] for a in _reminders(db, [future, done])] == [future]


def test_notifications_go_to_each_deal_owner_in_the_right_org(api: ApiClient, db) -> None:
    today = _today()
    team = api.team()
    other = api.register()  # another organization, whose owner is also a manager in `team`
    api.add_member(team["owner"], team["owner"].org_id, other, "manager")
    team_org = team["owner"].org_id

    member_deal = api.deal(team["member"], title="Member deal")
    manager_deal = api.deal(team["manager"], title="Assigned", owner_id=team["member2"].id)
    other_in_team = api.deal(other, org=team_org, title="Other in team")
    other_home = api.deal(other, title="Other at home")

    t1 = _task(api, team["member"], member_deal["id"], today)
    t2 = _task(api, team["manager"], manager_deal["id"], today)
    t3 = _task(api, other, other_in_team["id"], today, org=team_org)
    t4 = _task(api, other, other_home["id"], today)
    ids = [t1, t2, t3, t4]

    assert _run(db, today, after_id=t1 - 1) == (4, None)
    got = {
        n.payload["task_id"]: (n.user_id, n.organization_id, n.payload["deal_id"])
        for n in _notifications(db, ids)
    }
    assert got == {
        t1: (team["member"].id, team_org, member_deal["id"]),
        t2: (team["member2"].id, team_org, manager_deal["id"]),
        t3: (other.id, team_org, other_in_team["id"]),
        t4: (other.id, other.org_id, other_home["id"]),
    }
    activities = {a.payload["task_id"]: (a.organization_id, a.deal_id) for a in _reminders(db, ids)}
    assert activities == {
        t1: (team_org, member_deal["id"]),
        t2: (team_org, manager_deal["id"]),
        t3: (team_org, other_in_team["id"]),
        t4: (other.org_id, other_home["id"]),
    }


def test_batches_cover_every_task_exactly_once(api: ApiClient, db) -> None:
    today = _today()
    a, b = api.register(), api.register()
    deal_a, deal_b = api.deal(a), api.deal(b)
    ids = [
        _task(api, a, deal_a["id"], today),
        _task(api, b, deal_b["id"], today),
        _task(api, a, deal_a["id"], today),
        _task(api, b, deal_b["id"], today),
        _task(api, a, deal_a["id"], today),
    ]
    done = _task(api, a, deal_a["id"], today)
    r = api.patch(f"/tasks/{done}", user=a, org=a.org_id, json={"is_done": True})
    assert r.status_code == 200
    _set_due(db, ids[3], today - dt.timedelta(days=1))

    calls: list[tuple[int, int | None]] = []
    after = ids[0] - 1
    while True:
        written, last = _run(db, today, after_id=after, limit=2)
        calls.append((written, last))
        if last is None:
            break
        assert last > after
        after = last
    assert calls == [(2, ids[1]), (2, ids[3]), (1, None)]

    activities = _by_task(_reminders(db, [*ids, done]))
    notifications = _by_task(_notifications(db, [*ids, done]))
    assert {t: len(rows) for t, rows in activities.items()} == dict.fromkeys(ids, 1)
    assert {t: len(rows) for t, rows in notifications.items()} == dict.fromkeys(ids, 1)
    # Looping again the same day writes nothing.
    assert _run_all(db, today, after_id=ids[0] - 1, limit=2) == 0
    assert len(_reminders(db, ids)) == 5


def test_batch_of_exactly_limit_then_empty_batch(api: ApiClient, db) -> None:
    today = _today()
    user = api.register()
    deal = api.deal(user)
    ids = [_task(api, user, deal["id"], today) for _ in range(2)]
    assert _run(db, today, after_id=ids[0] - 1, limit=2) == (2, ids[1])
    assert _run(db, today, after_id=ids[1], limit=2) == (0, None)
