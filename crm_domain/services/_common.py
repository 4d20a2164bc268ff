"""Helpers shared by the entity services."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

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
    """Load a tenant-owned row by id; another organization's id is simply not found."""
    stmt = select(model).where(
        model.id == entity_id,  # type: ignore[attr-defined]
        model.organization_id == organization_id,  # type: ignore[attr-defined]
    )
    if for_update:
        stmt = stmt.with_for_update()
    obj = session.scalar(stmt)
    if obj is None:
        raise not_found(name)
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
