"""Helpers shared by the entity services."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from .. import custom_definitions
from ..custom_definitions import ENTITY_BY_TABLE
from ..errors import NotFound

M = TypeVar("M")

# Called with the freshly locked row before a change is applied (e.g. an If-Match check).
Precondition = Callable[[Any], None]


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
    with custom fields brings the organization's definitions along in the same statement."""
    stmt = select(model).where(
        model.id == entity_id,  # type: ignore[attr-defined]
        model.organization_id == organization_id,  # type: ignore[attr-defined]
    )
    definitions = None
    if model.__tablename__ in ENTITY_BY_TABLE:  # type: ignore[attr-defined]
        definitions = custom_definitions.along(session, organization_id)
        if definitions is not None:
            stmt = stmt.add_columns(definitions)
    if for_update:
        stmt = stmt.with_for_update(of=model)
    row: Any = session.execute(stmt).first()
    if row is None:
        raise not_found(name)
    if definitions is not None:
        custom_definitions.remember(session, organization_id, row[1])
    obj: M = row[0]
    return obj


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
