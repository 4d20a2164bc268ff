"""Deal figures by a select custom field: per option, the deals' count and amount per status
and per currency (a multi_select deal counts under each of its options), plus the deals
without a value. Computed beside the summary (crm_domain.services.reporting.analytics_cache,
`by_field:<key>`), in the same snapshot."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, true
from sqlalchemy.orm import Session

from ...custom_definitions import SELECT_TYPES, Definition, live
from ...enums import DealStatus
from ...models import Deal
from .analytics import _money

FIELD_PREFIX = "by_field:"
NONE = "_none"  # the deals without a value


def field_name(key: str) -> str:
    return f"{FIELD_PREFIX}{key}"


def select_fields(session: Session, organization_id: int) -> list[str]:
    """The cache fields of every live select field of the organization's deals."""
    return [
        field_name(d.key)
        for d in live(session, organization_id, "deal").values()
        if d.type in SELECT_TYPES
    ]


def by_field(session: Session, organization_id: int, key: str) -> dict[str, Any] | None:
    """The figures for a live select field `key` (None: no such field)."""
    definition = live(session, organization_id, "deal").get(key)
    if definition is None or definition.type not in SELECT_TYPES:
        return None
    rows = session.execute(_statement(definition, organization_id)).all()
    blocks: dict[str, dict[str, Any]] = {v: _empty() for v in (*definition.options, NONE)}
    for value, status, currency, count, total in rows:
        block = blocks.setdefault(value if value is not None else NONE, _empty())
        block["count"] += count
        _add(block["by_status"], status, count, total)
        _add(block["by_currency"].setdefault(currency, _statuses()), status, count, total)
    return {
        "key": key,
        "type": definition.type,
        "options": [{"value": v, **_formatted(b)} for v, b in blocks.items() if v != NONE],
        "none": _formatted(blocks[NONE]),
    }


def with_labels(document: bytes, definition: Definition) -> bytes:
    """The stored figures with each option's label as the definition has it now (a renamed
    option shows its new label at once; the figures are by value)."""
    figures = json.loads(document)
    for option in figures.get("options", ()):
        option["label"] = definition.labels.get(option["value"])
    return json.dumps(figures, separators=(",", ":")).encode()


def _statement(definition: Definition, organization_id: int) -> Any:
    """(option value or NULL, status, currency, count, amount) rows."""
    if definition.type == "single_select":
        option: Any = Deal.custom_fields[definition.key].astext
        source: Any = Deal
    else:  # one row per option of a multi_select; a deal without any: one row with NULL
        elements = (
            func.jsonb_array_elements_text(
                func.coalesce(Deal.custom_fields[definition.key], func.jsonb_build_array(None))
            )
            .table_valued("value")
            .lateral()
        )
        option = elements.c.value
        source = Deal.__table__.join(elements, true())
    return (
        select(option, Deal.status, Deal.currency, func.count(), func.sum(Deal.amount))
        .select_from(source)
        .where(Deal.organization_id == organization_id, Deal.deleted_at.is_(None))  # no trash
        .group_by(option, Deal.status, Deal.currency)
    )


def _statuses() -> dict[str, dict[str, Any]]:
    return {s.value: {"count": 0, "total_amount": Decimal(0)} for s in DealStatus}


def _empty() -> dict[str, Any]:
    return {"count": 0, "by_status": _statuses(), "by_currency": {}}


def _add(block: dict[str, dict[str, Any]], status: DealStatus, count: int, total: Any) -> None:
    block[status.value]["count"] += count
    block[status.value]["total_amount"] += total or 0


def _formatted(block: dict[str, Any]) -> dict[str, Any]:
    def fmt(statuses: dict[str, dict[str, Any]]) -> dict[str, Any]:
        return {
            s: {"count": v["count"], "total_amount": _money(v["total_amount"])}
            for s, v in statuses.items()
        }

    return {
        "count": block["count"],
        "by_status": fmt(block["by_status"]),
        "by_currency": {c: fmt(v) for c, v in sorted(block["by_currency"].items())},
    }
