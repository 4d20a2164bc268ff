"""Analytics: the pure funnel/conversion helpers, plus DB-backed summary checks (SPEC §5)."""

from __future__ import annotations

import datetime as dt
import itertools
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import insert

from crm_domain.db import Database
from crm_domain.enums import STAGE_ORDER, DealStage, DealStatus
from crm_domain.models import Contact, Deal
from crm_domain.services.reporting import analytics

from .api import ApiClient, User, error_code

STAGES = [s.value for s in STAGE_ORDER]
STATUSES = [s.value for s in DealStatus]

# SPEC-RESEARCH §5.2 worked example (cumulative funnel).
FUNNEL_EXAMPLE = {
    (DealStage.QUALIFICATION, DealStatus.NEW): 1,
    (DealStage.QUALIFICATION, DealStatus.IN_PROGRESS): 1,
    (DealStage.PROPOSAL, DealStatus.IN_PROGRESS): 1,
    (DealStage.NEGOTIATION, DealStatus.WON): 1,
    (DealStage.CLOSED, DealStatus.WON): 1,
}


# --- conversion --------------------------------------------------------------------------------


def test_conversion_values() -> None:
    assert analytics.conversion(5, 3) == 60.0
    assert analytics.conversion(3, 2) == 66.67
    assert analytics.conversion(2, 1) == 50.0
    assert analytics.conversion(3, 1) == 33.33
    assert analytics.conversion(4, 4) == 100.0
    assert analytics.conversion(7, 0) == 0.0


def test_conversion_zero_denominator_is_zero() -> None:
    assert analytics.conversion(0, 0) == 0.0
    assert isinstance(analytics.conversion(0, 0), float)


# --- funnel_from_counts ------------------------------------------------------------------------


def _check_shape(result: dict[str, Any]) -> None:
    assert set(result) == {"stages", "conversions"}
    assert [s["stage"] for s in result["stages"]] == STAGES
    assert [s["order"] for s in result["stages"]] == [1, 2, 3, 4]
    for stage in result["stages"]:
        assert set(stage) == {
            "stage",
            "order",
            "count",
            "reached",
            "by_status",
            "conversion_from_previous",
        }
        assert list(stage["by_status"]) == STATUSES
        assert stage["count"] == sum(stage["by_status"].values())
    assert [(c["from_stage"], c["to_stage"]) for c in result["conversions"]] == list(
        itertools.pairwise(STAGES)
    )


def test_funnel_worked_example() -> None:
    result = analytics.funnel_from_counts(FUNNEL_EXAMPLE)
    _check_shape(result)
    stages = result["stages"]
    assert [s["count"] for s in stages] == [2, 1, 1, 1]
    assert [s["reached"] for s in stages] == [5, 3, 2, 1]
    assert [s["conversion_from_previous"] for s in stages] == [None, 60.0, 66.67, 50.0]
    assert [c["rate_percent"] for c in result["conversions"]] == [60.0, 66.67, 50.0]
    assert stages[0]["by_status"] == {"new": 1, "in_progress": 1, "won": 0, "lost": 0}
    assert stages[1]["by_status"] == {"new": 0, "in_progress": 1, "won": 0, "lost": 0}
    assert stages[2]["by_status"] == {"new": 0, "in_progress": 0, "won": 1, "lost": 0}
    assert stages[3]["by_status"] == {"new": 0, "in_progress": 0, "won": 1, "lost": 0}


def test_funnel_empty() -> None:
    result = analytics.funnel_from_counts({})
    _check_shape(result)
    for stage in result["stages"]:
        assert stage["count"] == 0
        assert stage["reached"] == 0
        assert stage["by_status"] == dict.fromkeys(STATUSES, 0)
    assert result["stages"][0]["conversion_from_previous"] is None
    assert [s["conversion_from_previous"] for s in result["stages"][1:]] == [0.0, 0.0, 0.0]
    assert [c["rate_percent"] for c in result["conversions"]] == [0.0, 0.0, 0.0]


def test_funnel_only_closed_deals() -> None:
    result = analytics.funnel_from_counts({(DealStage.CLOSED, DealStatus.LOST): 3})
    assert [s["reached"] for s in result["stages"]] == [3, 3, 3, 3]
    assert [s["count"] for s in result["stages"]] == [0, 0, 0, 3]
    assert [c["rate_percent"] for c in result["conversions"]] == [100.0, 100.0, 100.0]


counts_strategy = st.dictionaries(
    keys=st.tuples(st.sampled_from(list(DealStage)), st.sampled_from(list(DealStatus))),
    values=st.integers(min_value=0, max_value=10_000),
)


@given(counts=counts_strategy)
def test_funnel_properties(counts: dict[tuple[DealStage, DealStatus], int]) -> None:
    result = analytics.funnel_from_counts(counts)
    _check_shape(result)
    stages = result["stages"]
    reached = [s["reached"] for s in stages]
    assert all(a >= b for a, b in itertools.pairwise(reached))
    assert reached[0] == sum(counts.values())
    assert stages[0]["conversion_from_previous"] is None
    for stage in stages[1:]:
        assert 0.0 <= stage["conversion_from_previous"] <= 100.0
    for conv in result["conversions"]:
        assert 0.0 <= conv["rate_percent"] <= 100.0
    for stage in stages:
        for status in DealStatus:
            assert stage["by_status"][status.value] == counts.get(
                (DealStage(stage["stage"]), status), 0
            )


# --- DB-backed summary -------------------------------------------------------------------------

SUMMARY_EXAMPLE = [
    ("new", "1000.00"),
    ("in_progress", "2000.00"),
    ("won", "3000.00"),
    ("won", "5000.00"),
    ("lost", "1000.00"),
]


def _seed_summary_example(api: ApiClient, user: User) -> list[dict[str, Any]]:
    contact_id = api.contact(user)["id"]
    deals = []
    for status, amount in SUMMARY_EXAMPLE:
        deal = api.deal(user, contact_id=contact_id, amount=amount, currency="USD")
        assert deal["status"] == "new"
        if status != "new":
            r = api.patch(
                f"/deals/{deal['id']}", user=user, org=user.org_id, json={"status": status}
            )
            assert r.status_code == 200, r.get_json()
            assert r.get_json()["status"] == status
            deal = r.get_json()
        deals.append(deal)
    return deals


def _amounts(by_status: dict[str, Any]) -> dict[str, Decimal]:
    return {k: Decimal(v["total_amount"]) for k, v in by_status.items()}


def test_summary_worked_example_via_api(api: ApiClient) -> None:
    user = api.register()
    _seed_summary_example(api, user)

    r = api.get("/analytics/deals/summary", user=user, org=user.org_id)
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert {k: v["count"] for k, v in body["by_status"].items()} == {
        "new": 1,
        "in_progress": 1,
        "won": 2,
        "lost": 1,
    }
    assert _amounts(body["by_status"]) == {
        "new": Decimal("1000"),
        "in_progress": Decimal("2000"),
        "won": Decimal("8000"),
        "lost": Decimal("1000"),
    }
    assert body["by_status"]["won"]["total_amount"] == "8000.00"
    assert body["total_deals"] == 5
    assert body["avg_won_amount"] == "4000.00"
    assert body["new_deals_last_n_days"] == 5
    assert body["days"] == 30
    assert list(body["by_currency"]) == ["USD"]
    assert body["by_currency"]["USD"] == body["by_status"]

    r = api.get("/analytics/deals/summary", user=user, org=user.org_id, query={"days": 7})
    assert r.status_code == 200
    assert r.get_json()["days"] == 7
    assert r.get_json()["new_deals_last_n_days"] == 5


def test_summary_worked_example_direct(api: ApiClient, db: Database) -> None:
    user = api.register()
    _seed_summary_example(api, user)
    now = dt.datetime.now(dt.UTC)

    with db.transaction() as session:
        result = analytics.summary(session, user.org_id, days=30, now=now)
    assert result["total_deals"] == 5
    assert {k: v["count"] for k, v in result["by_status"].items()} == {
        "new": 1,
        "in_progress": 1,
        "won": 2,
        "lost": 1,
    }
    assert result["avg_won_amount"] == "4000.00"
    assert result["new_deals_last_n_days"] == 5
    assert result["days"] == 30

    # Seen from 40 days in the future, none of the deals is in the 30-day window (any status).
    with db.transaction() as session:
        later = analytics.summary(session, user.org_id, days=30, now=now + dt.timedelta(days=40))
    assert later["new_deals_last_n_days"] == 0
    assert later["total_deals"] == 5
    with db.transaction() as session:
        wide = analytics.summary(session, user.org_id, days=41, now=now + dt.timedelta(days=40))
    assert wide["new_deals_last_n_days"] == 5


def test_summary_empty_org(api: ApiClient, db: Database) -> None:
    # another organization's deals must not leak in
    other = api.register()
    api.deal(other, amount="500.00")

    user = api.register()
    r = api.get("/analytics/deals/summary", user=user, org=user.org_id)
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["by_status"] == {
        status: {"count": 0, "total_amount": "0.00"} for status in STATUSES
    }
    assert body["total_deals"] == 0
    assert body["avg_won_amount"] is None
    assert body["new_deals_last_n_days"] == 0
    assert body["days"] == 30
    assert body["by_currency"] == {}

    with db.transaction() as session:
        direct = analytics.summary(session, user.org_id, days=30)
    assert direct["avg_won_amount"] is None
    assert direct["total_deals"] == 0
    assert all(v == {"count": 0, "total_amount": "0.00"} for v in direct["by_status"].values())


def test_summary_days_out_of_range(api: ApiClient) -> None:
    user = api.register()
    for days in (0, 366):
        r = api.get("/analytics/deals/summary", user=user, org=user.org_id, query={"days": days})
        assert r.status_code == 400, r.get_json()
        assert error_code(r) == "VALIDATION_ERROR"


def test_funnel_worked_example_via_api(api: ApiClient) -> None:
    user = api.register()
    contact_id = api.contact(user)["id"]
    plan = [
        ("qualification", "new"),
        ("qualification", "in_progress"),
        ("proposal", "in_progress"),
        ("negotiation", "won"),
        ("closed", "won"),
    ]
    for stage, status in plan:
        deal = api.deal(user, contact_id=contact_id, amount="100.00")
        changes = (
            {"status": status} if stage == "qualification" else {"status": status, "stage": stage}
        )
        if changes != {"status": "new"}:
            r = api.patch(f"/deals/{deal['id']}", user=user, org=user.org_id, json=changes)
            assert r.status_code == 200, r.get_json()

    r = api.get("/analytics/deals/funnel", user=user, org=user.org_id)
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert dt.datetime.fromisoformat(body.pop("as_of")).tzinfo is not None
    assert body == analytics.funnel_from_counts(FUNNEL_EXAMPLE)


# --- snapshot: new-deal windows from the same statement as the aggregates ---------------------

DAY = dt.timedelta(days=1)
MICROSECOND = dt.timedelta(microseconds=1)
# How long before as_of a deal was created: on a day boundary, a microsecond either side of
# one, or anywhere (negative: after as_of).
ages = st.one_of(
    st.builds(
        lambda days, nudge: days * DAY + nudge * MICROSECOND,
        st.integers(min_value=-2, max_value=370),
        st.sampled_from([-1, 0, 1]),
    ),
    st.integers(min_value=-2 * 86_400_000_000, max_value=370 * 86_400_000_000).map(
        lambda us: us * MICROSECOND
    ),
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    created=st.lists(ages, max_size=12),
    windows=st.lists(st.integers(min_value=1, max_value=365), min_size=1, max_size=4),
)
def test_snapshot_window_counts_match_a_direct_count(
    api: ApiClient, db: Database, created: list[dt.timedelta], windows: list[int]
) -> None:
    user = api.register()
    as_of = dt.datetime.now(dt.UTC)
    with db.transaction() as session:
        contact_id = session.scalar(
            insert(Contact)
            .values(organization_id=user.org_id, owner_id=user.id, name="C")
            .returning(Contact.id)
        )
        if created:
            session.execute(
                insert(Deal),
                [
                    {
                        "organization_id": user.org_id,
                        "contact_id": contact_id,
                        "owner_id": user.id,
                        "title": f"D{i}",
                        "amount": Decimal(i + 1),
                        "created_at": as_of - age,
                    }
                    for i, age in enumerate(created)
                ],
            )
    with db.transaction() as session:
        snap = analytics.snapshot(session, user.org_id, as_of=as_of, windows=windows)
        direct = {
            d: analytics.new_deals_since(session, user.org_id, as_of - d * DAY) for d in windows
        }
    assert snap.new_deals == direct
    assert snap.new_deals == {d: sum(age <= d * DAY for age in created) for d in windows}
    for d in windows:
        summary = snap.summary(d)
        assert summary["days"] == d
        assert summary["total_deals"] == len(created)
        assert summary["new_deals_last_n_days"] == direct[d] <= len(created)
    assert sum(s["count"] for s in snap.funnel()["stages"]) == len(created)
