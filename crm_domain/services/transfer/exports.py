"""CSV exports of contacts and deals: the rows a list with the same filters shows, in the
same order, with the import's columns (so an export can be imported again).

The table is walked in keyset batches, each read in its own short transaction, so neither
memory nor a database connection is held for the length of a download. A row changed while
the walk goes on may therefore appear with its old or its new values (no snapshot)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from ... import csvio
from ...context import Actor
from ...db import Database
from ...enums import ImportKind
from ...models import Contact, Deal, User
from ...pagination import Ordering
from ..records import contacts, deals
from ..records.custom_queries import CustomQuery, narrow
from . import custom_columns

BATCH_SIZE = 1000


@dataclass(frozen=True)
class Export:
    columns: Sequence[str]
    stmt: Select[Any]  # filtered, not ordered
    ordering: Ordering
    to_rows: Callable[[Session, Sequence[Any]], list[list[Any]]]
    # With custom fields: a column per live custom field of (organization, entity).
    custom_of: tuple[int, str] | None = None


def contacts_export(actor: Actor, **filters: Any) -> Export:
    """Checks the filters like the list does (e.g. owner_id needs manager+): raises now."""
    return Export(
        csvio.COLUMNS[ImportKind.CONTACTS],
        contacts.filtered(actor, **filters),
        contacts.ORDERING,
        _contact_rows,
        (actor.organization_id, "contact"),
    )


def deals_export(actor: Actor, **filters: Any) -> Export:
    stmt, ordering = deals.filtered(actor, **filters)
    return Export(
        csvio.COLUMNS[ImportKind.DEALS], stmt, ordering, _deal_rows, (actor.organization_id, "deal")
    )


def with_custom(
    session: Session, actor: Actor, export: Export, custom: CustomQuery | None
) -> Export:
    """The export narrowed (and sorted) by custom fields like the list (400s raised now)."""
    if custom is None or export.custom_of is None:
        return export
    entity = export.custom_of[1]
    model = Contact if entity == "contact" else Deal
    stmt, ordering = narrow(session, actor, entity, model, export.stmt, export.ordering, custom)
    return replace(export, stmt=stmt, ordering=ordering)


def _emails(
    session: Session, model: type[User] | type[Contact], ids: set[int]
) -> dict[int, str | None]:
    if not ids:
        return {}
    rows = session.execute(select(model.id, model.email).where(model.id.in_(sorted(ids))))
    return {row_id: email for row_id, email in rows}


def _contact_rows(session: Session, items: Sequence[Contact]) -> list[list[Any]]:
    owners = _emails(session, User, {c.owner_id for c in items})
    return [[c.name, c.email, c.phone, owners.get(c.owner_id)] for c in items]


def _deal_rows(session: Session, items: Sequence[Deal]) -> list[list[Any]]:
    owners = _emails(session, User, {d.owner_id for d in items})
    contact_emails = _emails(session, Contact, {d.contact_id for d in items})
    return [
        [
            d.title,
            d.amount,
            d.currency,
            d.status,
            d.stage,
            d.contact_id,
            contact_emails.get(d.contact_id),
            owners.get(d.owner_id),
        ]
        for d in items
    ]


def stream(
    db: Database, export: Export, batch_size: int = BATCH_SIZE, *, raw: bool = False
) -> Iterator[str]:
    """The CSV text: the header, then one chunk per batch. Text that a spreadsheet would run
    as a formula is neutralized unless `raw` (csvio.neutralize)."""
    custom: tuple[str, ...] = ()
    if export.custom_of is not None:
        with db.transaction() as session:
            custom = custom_columns.keys(session, *export.custom_of)
    yield csvio.to_csv([[*export.columns, *custom]])
    ordered = export.stmt.order_by(*export.ordering.clauses()).limit(batch_size)
    after: list[Any] | None = None
    while True:
        with db.transaction() as session:
            stmt = ordered if after is None else ordered.where(export.ordering.after(after))
            items = list(session.scalars(stmt))
            rows = export.to_rows(session, items)
            if custom:
                rows = [
                    [*r, *custom_columns.cells(i, custom)] for r, i in zip(rows, items, strict=True)
                ]
        if rows:
            yield csvio.to_csv(rows, raw=raw)
        if len(items) < batch_size:
            return
        after = export.ordering.values_of(items[-1])
