"""Duplicate deals in a deals import: a row matches a live deal of the organization with the
same contact and the same title (ignoring case), the oldest such deal, or a row earlier in
the batch. The import skips it or updates that deal, as the job's `on_duplicate` says
(import_writers). Deals in the trash never match."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Integer, String, any_, bindparam, cast, func, select, update
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, distinct_on
from sqlalchemy.orm import Session

from ... import rules
from ...context import Actor
from ...enums import DealStage, DealStatus
from ...models import Deal

Key = tuple[int, str]  # (contact id, lower-case title)
# The columns of a deals file an update sets when the file has them (the title always).
UPDATABLE = ("amount", "currency", "status", "stage")


def key(contact_id: int, title: str) -> Key:
    return contact_id, title.lower()


@dataclass
class Match:
    """A live deal a row matched, as the batch has left it so far."""

    id: int
    owner_id: int
    status: DealStatus
    stage: DealStage
    amount: Any


def existing(session: Session, organization_id: int, keys: Iterable[Key]) -> dict[Key, Match]:
    """{key: the oldest live deal with it} for the batch's keys (one statement)."""
    wanted = set(keys)
    if not wanted:
        return {}
    title = func.lower(Deal.title)
    contact_ids = sorted({c for c, _ in wanted})
    titles = sorted({t for _, t in wanted})
    rows = session.execute(
        select(Deal.contact_id, title, Deal.id, Deal.owner_id, Deal.status, Deal.stage, Deal.amount)
        .where(
            Deal.organization_id == organization_id,
            Deal.contact_id == any_(cast(bindparam(None, contact_ids), ARRAY(Integer))),
            title == any_(cast(bindparam(None, titles), ARRAY(String()))),
        )
        .order_by(Deal.contact_id, title, Deal.id)
        .ext(distinct_on(Deal.contact_id, title))
    )
    found = {(r[0], r[1]): Match(*r[2:]) for r in rows}
    return {k: m for k, m in found.items() if k in wanted}


def check_update(actor: Actor, match: Match, values: dict[str, Any]) -> None:
    """The rules of a PATCH /deals/{id} with these values (raises the API's errors)."""
    rules.ensure_can_modify(
        actor.role, owner_id=match.owner_id, user_id=actor.user_id, what="deals"
    )
    if "stage" in values:
        rules.ensure_stage_transition(actor.role, match.stage, values["stage"])
    rules.ensure_won_amount(values.get("status", match.status), values.get("amount", match.amount))


def combine(into: dict[str, Any], values: dict[str, Any]) -> None:
    """A later row's values over an earlier one's (to write, or a pending insert): custom
    fields key by key, like the UPDATE merges them into the deal's."""
    custom = {**into.get("custom_fields", {}), **values.get("custom_fields", {})}
    into.update(values)
    if custom:
        into["custom_fields"] = custom


def apply(match: Match, values: dict[str, Any]) -> None:
    """The batch's view of the deal after this row (a later row is checked against it)."""
    for name in ("owner_id", "status", "stage", "amount"):
        if name in values:
            setattr(match, name, values[name])


def write_updates(
    session: Session, organization_id: int, updates: dict[int, dict[str, Any]]
) -> None:
    """One UPDATE per column set (executemany): each deal gets its row's values; custom
    fields merge into the deal's key by key."""
    by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for deal_id, values in updates.items():
        columns = tuple(sorted(values))
        by_columns.setdefault(columns, []).append(
            {"b_id": deal_id, **{f"b_{c}": v for c, v in values.items()}}
        )
    table = Deal.__table__
    custom = bindparam("b_custom_fields", type_=JSONB)
    for columns, params in by_columns.items():
        session.connection().execute(
            update(table)  # type: ignore[arg-type]
            .where(table.c.id == bindparam("b_id"), table.c.organization_id == organization_id)
            .values(
                {
                    **{c: bindparam(f"b_{c}") for c in columns},
                    **(
                        {"custom_fields": table.c.custom_fields.op("||")(custom)}
                        if "custom_fields" in columns
                        else {}
                    ),
                    "updated_at": func.now(),
                }
            ),
            params,
        )


def row_values(data: dict[str, Any], header: Sequence[str], owner: int | None) -> dict[str, Any]:
    """What an update sets from one row: the title, the file's columns, the owner if named,
    the custom fields of its non-empty custom field cells."""
    values: dict[str, Any] = {"title": data["title"]}
    if data.get("custom_fields"):
        values["custom_fields"] = data["custom_fields"]
    for name in UPDATABLE:
        if name in header:
            values[name] = data.get(name)
    if values.get("amount", 0) is None:
        values["amount"] = 0
    if "currency" in values and not values["currency"]:
        values["currency"] = "USD"
    for name, default in (("status", DealStatus.NEW), ("stage", DealStage.QUALIFICATION)):
        if name in values and values[name] is None:
            values[name] = default
    if owner is not None:
        values["owner_id"] = owner
    return values
