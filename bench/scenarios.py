"""The scenarios of the mixed workload: what one virtual user does in one go. A scenario
may send several requests, each recorded under its own operation name (patch_deal reads the
deal first: get_deal + patch_deal)."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from bench.config import CURRENCIES, STAGES, STATUSES, utc_today

if TYPE_CHECKING:
    from bench.workload import VirtualUser

DEEP_PAGE_SIZE = 25
CURSOR_PAGES_PER_WALK = 3


def list_contacts(vu: VirtualUser) -> None:
    params = {"page": vu.rng.randint(1, 50), "page_size": 20}
    vu.call("list_contacts", "GET", "/contacts", params=params)


def search_contacts(vu: VirtualUser) -> None:
    n = vu.rng.choice(vu.data.contact_ids) if vu.data.contact_ids else 1
    term = vu.rng.choice(
        (
            f"Contact {n}",  # a name (and every name it prefixes)
            f"contact{n}@example.com",  # one email
            str(n)[:3],  # digits: many matches in names and emails
            "nobody-by-this-name",  # no match
        )
    )
    vu.call("search_contacts", "GET", "/contacts", params={"search": term})


def list_deals(vu: VirtualUser) -> None:
    rng = vu.rng
    params: dict[str, Any] = {
        "page": rng.randint(1, 20),
        "page_size": rng.choice((20, 25, 50)),
    }
    if rng.random() < 0.5:
        params["status"] = rng.sample(STATUSES, rng.randint(1, 2))
    if rng.random() < 0.3:
        params["stage"] = rng.choice(STAGES)
    if rng.random() < 0.3:
        # Round thresholds, as people pick them in a filter UI.
        low = rng.choice((1_000, 5_000, 10_000, 25_000, 50_000, 75_000))
        params["min_amount"] = f"{low}.00"
        if rng.random() < 0.5:
            params["max_amount"] = f"{low + rng.choice((5_000, 10_000, 25_000))}.00"
    order_by = rng.choice(("created_at", "amount", "updated_at"))
    params["order_by"] = order_by
    params["order"] = rng.choice(("asc", "desc"))
    vu.call(f"list_deals[{order_by}]", "GET", "/deals", params=params)


def deals_deep_page(vu: VirtualUser) -> None:
    pages = max(1, math.ceil(vu.data.deal_total / DEEP_PAGE_SIZE))
    page = max(1, pages - vu.rng.randint(0, 10))
    resp = vu.call(
        "deals_deep_page",
        "GET",
        "/deals",
        params={"page": page, "page_size": DEEP_PAGE_SIZE},
    )
    if isinstance(resp.body, dict) and isinstance(resp.body.get("total"), int):
        vu.data.deal_total = resp.body["total"]


def deals_cursor_walk(vu: VirtualUser) -> None:
    """A few pages by cursor, continuing the same walk next time (so it goes deep)."""
    if vu.cursor is None:
        params: dict[str, Any] = {
            "page_size": DEEP_PAGE_SIZE,
            "order_by": vu.rng.choices(("created_at", "amount", "updated_at"), (6, 2, 2))[0],
            "order": vu.rng.choice(("asc", "desc")),
        }
        if vu.rng.random() < 0.3:
            params["status"] = [vu.rng.choice(STATUSES)]
        vu.cursor = {"params": params, "next": None}
    for _ in range(CURSOR_PAGES_PER_WALK):
        params = dict(vu.cursor["params"])
        if vu.cursor["next"]:
            params["cursor"] = vu.cursor["next"]
        try:
            resp = vu.call("deals_cursor_page", "GET", "/deals", params=params)
        except Exception:  # a failed page: start a new walk next time
            vu.cursor = None
            raise
        nxt = resp.body.get("next_cursor") if isinstance(resp.body, dict) else None
        if not nxt:
            vu.cursor = None  # the end: start a new walk next time
            return
        vu.cursor["next"] = nxt


def get_deal(vu: VirtualUser) -> None:
    vu.call("get_deal", "GET", f"/deals/{vu.any_deal()}")


def create_deal(vu: VirtualUser) -> None:
    vu.created += 1
    body = {
        "contact_id": vu.rng.choice(vu.data.contact_ids),
        "title": f"Bench deal {vu.index}-{vu.created}",
        "amount": vu.amount(),
        "currency": vu.rng.choice(CURRENCIES),
    }
    resp = vu.call("create_deal", "POST", "/deals", body=body)
    deal_id = int(resp.body["id"])
    vu.own_deals.append(deal_id)
    vu.data.deal_ids.append(deal_id)


def patch_deal(vu: VirtualUser) -> None:
    """Read the deal, then move it forward (stage), change its status or its amount,
    with If-Match like a careful client."""
    deal_id = vu.modifiable_deal()
    got = vu.call("get_deal", "GET", f"/deals/{deal_id}")
    deal = got.body
    rng = vu.rng
    stage_index = STAGES.index(deal["stage"])
    changes: dict[str, Any] = {}
    roll = rng.random()
    if roll < 0.4 and stage_index < len(STAGES) - 1:
        changes["stage"] = STAGES[rng.randint(stage_index + 1, len(STAGES) - 1)]
    elif roll < 0.75:
        status = rng.choice([s for s in STATUSES if s != deal["status"]])
        changes["status"] = status
        if status == "won" and Decimal(deal["amount"]) <= 0:
            changes["amount"] = vu.amount(positive=True)
    else:
        changes["amount"] = vu.amount(positive=deal["status"] == "won")
    headers = {"If-Match": got.headers["ETag"]} if got.headers.get("ETag") else None
    vu.call("patch_deal", "PATCH", f"/deals/{deal_id}", body=changes, headers=headers)


def create_task(vu: VirtualUser) -> None:
    deal_id = vu.modifiable_deal()
    due = utc_today() + dt.timedelta(days=vu.rng.randint(0, 30))
    body = {"deal_id": deal_id, "title": "Call the client back", "due_date": due.isoformat()}
    vu.call("create_task", "POST", "/tasks", body=body)
    vu.data.deals_with_tasks.append(deal_id)


def list_tasks(vu: VirtualUser) -> None:
    rng = vu.rng
    roll = rng.random()
    params: dict[str, Any] = {}
    if roll < 0.4:
        pool = vu.data.deals_with_tasks or vu.data.deal_ids
        params["deal_id"] = rng.choice(pool)
    elif roll < 0.7:
        today = utc_today()
        params.update(
            only_open="true",
            due_after=today.isoformat(),
            due_before=(today + dt.timedelta(days=7)).isoformat(),
        )
    else:
        params.update(only_open=rng.choice(("true", "false")), page=rng.randint(1, 10))
    vu.call("list_tasks", "GET", "/tasks", params=params)


def list_activities(vu: VirtualUser) -> None:
    pool = vu.data.deals_with_activities
    deal_id = vu.rng.choice(pool) if pool and vu.rng.random() < 0.7 else vu.any_deal()
    vu.call("list_activities", "GET", f"/deals/{deal_id}/activities")


def post_comment(vu: VirtualUser) -> None:
    deal_id = vu.any_deal()
    body = {"type": "comment", "payload": {"text": f"Bench comment from {vu.user.role}"}}
    vu.call("post_comment", "POST", f"/deals/{deal_id}/activities", body=body)
    vu.data.deals_with_activities.append(deal_id)


def analytics_summary(vu: VirtualUser) -> None:
    vu.call("analytics_summary", "GET", "/analytics/deals/summary")


def analytics_summary_days(vu: VirtualUser) -> None:
    """A non-default window: not precomputed, computed on a cache miss."""
    days = vu.rng.choice((7, 90, 365))
    vu.call("analytics_summary[days]", "GET", "/analytics/deals/summary", params={"days": days})


def analytics_funnel(vu: VirtualUser) -> None:
    vu.call("analytics_funnel", "GET", "/analytics/deals/funnel")


# Scenario name -> (default weight, function), in the order of the results tables.
SCENARIOS: dict[str, tuple[float, Callable[[VirtualUser], None]]] = {
    "list_contacts": (12, list_contacts),
    "search_contacts": (8, search_contacts),
    "list_deals": (15, list_deals),
    "deals_deep_page": (4, deals_deep_page),
    "deals_cursor_walk": (4, deals_cursor_walk),
    "get_deal": (10, get_deal),
    "create_deal": (5, create_deal),
    "patch_deal": (6, patch_deal),
    "create_task": (4, create_task),
    "list_tasks": (8, list_tasks),
    "list_activities": (6, list_activities),
    "post_comment": (4, post_comment),
    "analytics_summary": (6, analytics_summary),
    "analytics_summary_days": (1, analytics_summary_days),
    "analytics_funnel": (5, analytics_funnel),
}
DEFAULT_WEIGHTS = {name: weight for name, (weight, _) in SCENARIOS.items()}
# Row order of the results table (unknown names go last, alphabetically).
ROW_ORDER = (
    "list_contacts",
    "search_contacts",
    "list_deals[created_at]",
    "list_deals[amount]",
    "list_deals[updated_at]",
    "deals_deep_page",
    "deals_cursor_page",
    "get_deal",
    "create_deal",
    "patch_deal",
    "create_task",
    "list_tasks",
    "list_activities",
    "post_comment",
    "analytics_summary",
    "analytics_summary[days]",
    "analytics_funnel",
)
