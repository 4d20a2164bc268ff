"""Deal analytics: summary by status and the stage funnel (SPEC-RESEARCH §5)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ...enums import STAGE_ORDER, DealStage, DealStatus
from ...models import Deal

CENT = Decimal("0.01")


def _money(value: Decimal | int | None) -> str:
    return str(Decimal(value or 0).quantize(CENT, rounding=ROUND_HALF_UP))


# One row per (stage, status, currency): deal count and amount sum. Everything else (the
# summary, the funnel, the won average) is derived from these, so one scan serves both.
Aggregate = tuple[DealStage, DealStatus, str, int, Decimal]


@dataclass(frozen=True)
class Snapshot:
    """An organization's deal aggregates and its new-deal counts for some windows, read by
    one statement: one consistent view of the data, as of `as_of`."""

    as_of: dt.datetime
    aggregates: list[Aggregate]
    new_deals: dict[int, int]  # days -> deals created at or after as_of - days

    def summary(self, days: int) -> dict[str, Any]:
        return summary_from(self.aggregates, new_deals=self.new_deals[days], days=days)

    def funnel(self) -> dict[str, Any]:
        return funnel_from(self.aggregates)


def snapshot(
    session: Session, organization_id: int, *, as_of: dt.datetime, windows: Iterable[int] = ()
) -> Snapshot:
    """One scan of the organization's deals: the aggregates plus, per window of `days`, how
    many deals were created since `as_of - days` (a FILTER count in the same statement, so
    the counts always agree with the aggregates they are served with)."""
    days = sorted(set(windows))
    columns: list[Any] = [
        Deal.stage,
        Deal.status,
        Deal.currency,
        func.count(),
        func.coalesce(func.sum(Deal.amount), 0),
    ]
    columns += [func.count().filter(Deal.created_at >= as_of - dt.timedelta(days=d)) for d in days]
    rows = session.execute(
        select(*columns)
        .where(Deal.organization_id == organization_id)
        .group_by(Deal.stage, Deal.status, Deal.currency)
    ).all()
    aggs: list[Aggregate] = [(r[0], r[1], r[2], r[3], r[4]) for r in rows]
    new_deals = {d: sum(r[5 + i] for r in rows) for i, d in enumerate(days)}
    return Snapshot(as_of, aggs, new_deals)


def aggregates(session: Session, organization_id: int) -> list[Aggregate]:
    return snapshot(session, organization_id, as_of=dt.datetime.now(dt.UTC)).aggregates


def new_deals_since(session: Session, organization_id: int, since: dt.datetime) -> int:
    return (
        session.scalar(
            select(func.count()).where(
                Deal.organization_id == organization_id, Deal.created_at >= since
            )
        )
        or 0
    )


def summary_from(aggs: list[Aggregate], *, new_deals: int, days: int) -> dict[str, Any]:
    by_status: dict[str, dict[str, Any]] = {
        s.value: {"count": 0, "total_amount": Decimal(0)} for s in DealStatus
    }
    by_currency: dict[str, dict[str, dict[str, Any]]] = {}
    for _stage, status, currency, count, total in aggs:
        by_status[status.value]["count"] += count
        by_status[status.value]["total_amount"] += total
        cur = by_currency.setdefault(
            currency, {s.value: {"count": 0, "total_amount": Decimal(0)} for s in DealStatus}
        )
        cur[status.value]["count"] += count
        cur[status.value]["total_amount"] += total
    won = by_status[DealStatus.WON.value]

    def fmt(block: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {
            k: {"count": v["count"], "total_amount": _money(v["total_amount"])}
            for k, v in block.items()
        }

    return {
        "by_status": fmt(by_status),
        "total_deals": sum(v["count"] for v in by_status.values()),
        "avg_won_amount": _money(won["total_amount"] / won["count"]) if won["count"] else None,
        "new_deals_last_n_days": new_deals,
        "days": days,
        "by_currency": {cur: fmt(block) for cur, block in sorted(by_currency.items())},
    }


def summary(
    session: Session, organization_id: int, *, days: int = 30, now: dt.datetime | None = None
) -> dict[str, Any]:
    """Counts and sums per status (all statuses, zero-filled), the average won amount
    (null when nothing is won), deals created in the last `days` days (any status), and
    the same sums split by currency."""
    now = now or dt.datetime.now(dt.UTC)
    return snapshot(session, organization_id, as_of=now, windows=[days]).summary(days)


def funnel_from(aggs: list[Aggregate]) -> dict[str, Any]:
    counts: dict[tuple[DealStage, DealStatus], int] = {}
    for stage, status, _currency, count, _total in aggs:
        counts[(stage, status)] = counts.get((stage, status), 0) + count
    return funnel_from_counts(counts)


def conversion(reached_prev: int, reached_here: int) -> float:
    """Percent of deals that reached the previous stage and also reached this one."""
    if reached_prev == 0:
        return 0.0
    return round(reached_here * 100.0 / reached_prev, 2)


def funnel_from_counts(counts: dict[tuple[DealStage, DealStatus], int]) -> dict[str, Any]:
    """Build the funnel from snapshot counts per (stage, status).

    `count` is how many deals sit in a stage now; `reached` counts deals in that stage or a
    later one (a deal in `closed` passed through every stage before it)."""
    per_stage = {
        stage: {status.value: counts.get((stage, status), 0) for status in DealStatus}
        for stage in STAGE_ORDER
    }
    totals = [sum(per_stage[s].values()) for s in STAGE_ORDER]
    reached = [sum(totals[i:]) for i in range(len(STAGE_ORDER))]
    stages: list[dict[str, Any]] = []
    conversions: list[dict[str, Any]] = []
    for i, stage in enumerate(STAGE_ORDER):
        rate = None if i == 0 else conversion(reached[i - 1], reached[i])
        stages.append(
            {
                "stage": stage.value,
                "order": stage.order,
                "count": totals[i],
                "reached": reached[i],
                "by_status": per_stage[stage],
                "conversion_from_previous": rate,
            }
        )
        if i > 0:
            conversions.append(
                {
                    "from_stage": STAGE_ORDER[i - 1].value,
                    "to_stage": stage.value,
                    "rate_percent": rate,
                }
            )
    return {"stages": stages, "conversions": conversions}


def funnel(session: Session, organization_id: int) -> dict[str, Any]:
    return funnel_from(aggregates(session, organization_id))
