"""Helpers shared by the entity services."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from typing import Any, TypeVar

from sqlalchemy import Select, bindparam, event, select
from sqlalchemy.orm import Session, SessionTransaction

from .. import custom_definitions
from ..custom_definitions import ENTITY_BY_TABLE
from ..errors import NotFound

M = TypeVar("M")

# Called with the freshly locked row before a change is applied (e.g. an If-Match check).
Precondition = Callable[[Any], None]

# {(model, id): row} locked by `lock_in_org` in the session's transaction (forgotten at its
# end; held here: the session's identity map holds rows only while something else does).
_LOCKED_KEY = "crm_locked_rows"


def get_in_org(
    session: Session,
    model: type[M],
    organization_id: int,
    entity_id: int,
    *,
    name: str,
    for_update: bool = False,
) -> M:
    """Load a tenant-owned row by id; another organization's id is simply not found. A record
    with custom fields brings the organization's definitions along in the same statement. A
    row `lock_in_org` locked in this transaction is taken from the session (no statement)."""
    if for_update:
        held = _held(session, model, organization_id, entity_id)
        if held is not None:
            return held
    along = _wants_definitions(session, model, organization_id)
    params = {"entity_id": entity_id, "organization_id": organization_id}
    mapped: Any = model  # hashable, as every class (for _by_id's cache)
    row: Any = session.execute(_by_id(mapped, along, for_update), params).first()
    if row is None:
        raise not_found(name)
    if along:
        custom_definitions.remember(session, organization_id, row[1])
    obj: M = row[0]
    return obj


@cache
def _by_id(model: type[Any], along: bool, for_update: bool) -> Select[Any]:
    """`get_in_org`'s statement, made once per variant (and so compiled once): the row by
    the parameters `entity_id` and `organization_id`, the definitions along if asked."""
    stmt: Select[Any] = select(model).where(
        model.id == bindparam("entity_id"),
        model.organization_id == bindparam("organization_id"),
    )
    if along:
        stmt = stmt.add_columns(custom_definitions.along_column())
    return stmt.with_for_update(of=model) if for_update else stmt


def lock_in_org(
    session: Session, model: type[Any], organization_id: int, ids: Sequence[int]
) -> None:
    """Lock and load the organization's live rows among `ids` in one statement (in id
    order; the definitions along), for `get_in_org(..., for_update=True)` to find them
    without a statement each (a bulk action's batch). Call it outside any savepoint: a
    savepoint rolled back releases the locks taken inside it."""
    if not ids:
        return
    stmt: Select[Any] = select(model).where(
        model.id.in_(list(ids)), model.organization_id == organization_id
    )
    stmt, along = _with_definitions(session, model, organization_id, stmt)
    stmt = (
        stmt.order_by(model.id).with_for_update(of=model).execution_options(populate_existing=True)
    )
    rows = session.execute(stmt, {"organization_id": organization_id}).all()
    if along and rows:
        custom_definitions.remember(session, organization_id, rows[0][1])
    locked = session.info.setdefault(_LOCKED_KEY, {})
    locked.update(((model, row[0].id), row[0]) for row in rows)


def _with_definitions(
    session: Session, model: type[Any], organization_id: int, stmt: Select[Any]
) -> tuple[Select[Any], bool]:
    """`stmt` with the organization's definitions as a second column, if the model has
    custom fields and the session has not read them yet."""
    if not _wants_definitions(session, model, organization_id):
        return stmt, False
    return stmt.add_columns(custom_definitions.along_column()), True


def _wants_definitions(session: Session, model: type[Any], organization_id: int) -> bool:
    """The model has custom fields and the session has not read the organization's
    definitions yet: its statement brings them along."""
    known = custom_definitions.known(session, organization_id)
    return model.__tablename__ in ENTITY_BY_TABLE and not known


def _held(session: Session, model: type[M], organization_id: int, entity_id: int) -> M | None:
    """The row `lock_in_org` locked, if it is still in the session, the organization's and
    live (anything else goes through the statement, which answers as it always does)."""
    obj: Any = session.info.get(_LOCKED_KEY, {}).get((model, entity_id))
    if obj is None or obj not in session or obj.organization_id != organization_id:
        return None
    if getattr(obj, "deleted_at", None) is not None:
        return None
    return obj  # type: ignore[no-any-return]


@event.listens_for(Session, "after_transaction_end")
def _forget_locks(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # the locks went with the transaction
        session.info.pop(_LOCKED_KEY, None)


def ensure_in_org(
    session: Session, model: type[Any], organization_id: int, entity_id: int, *, name: str
) -> None:
    """404 unless the row exists in the organization (its id only: nothing is loaded)."""
    found = session.scalar(
        select(model.id).where(model.id == entity_id, model.organization_id == organization_id)
    )
    if found is None:
        raise not_found(name)


def not_found(name: str) -> NotFound:
    """The error for a `name` (contact, deal, ...) that is not in the caller's organization."""
    return NotFound(f"{name.capitalize()} not found", code=f"{name.upper()}_NOT_FOUND")


def apply_changes(obj: object, changes: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Set attributes and return {field: (old, new)} for those that really changed."""
    changed: dict[str, tuple[Any, Any]] = {}
    for field, value in changes.items():
        old = getattr(obj, field)
        if old != value:
            setattr(obj, field, value)
            changed[field] = (old, value)
    return changed
