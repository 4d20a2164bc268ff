"""Custom fields in CSV files: exports add one column per live custom field of the entity
(header = key), imports read the columns whose header is a key.

A cell holds the value's text: booleans true/false, a multi_select its values joined by
commas (option values never hold one), other types their stored form; an empty cell is no
value (an import leaves the key unset)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ...custom_definitions import Definitions, live
from ...enums import ImportKind
from ...models import OrganizationMember
from ...validation import custom_values
from .rows import RowInvalid, RowLoader


def keys(session: Session, organization_id: int, entity: str) -> tuple[str, ...]:
    return tuple(live(session, organization_id, entity))


def cells(record: Any, columns: Sequence[str]) -> list[Any]:
    """The record's custom field cells, in `columns` order."""
    stored = record.custom_fields or {}
    return [_text(stored.get(key)) for key in columns]


def _text(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(value)
    return value


def from_cells(definitions: Definitions, cells: Mapping[str, str]) -> dict[str, Any]:
    """{key: value as JSON would carry it} from a row's custom field cells (validation is
    the write's: crm_domain.validation.custom_values)."""
    values: dict[str, Any] = {}
    for key, text in cells.items():
        definition = definitions.get(key)
        if definition is None or text == "":
            continue
        kind = definition.type
        if kind == "boolean":
            lowered = text.strip().lower()
            values[key] = {"true": True, "false": False}.get(lowered, text)
        elif kind == "multi_select":
            values[key] = [v.strip() for v in text.split(",") if v.strip()]
        elif kind == "user":
            values[key] = int(text) if text.strip().isdigit() else text
        else:
            values[key] = text
    return values


ENTITY_OF_IMPORT = {ImportKind.CONTACTS: "contact", ImportKind.DEALS: "deal"}


def import_definitions(session: Session, organization_id: int, kind: ImportKind) -> Definitions:
    """The custom fields an import of `kind` may carry (a column each, header = key)."""
    return live(session, organization_id, ENTITY_OF_IMPORT[kind])


def members(session: Session, organization_id: int) -> frozenset[int]:
    return frozenset(
        session.scalars(
            select(OrganizationMember.user_id).where(
                OrganizationMember.organization_id == organization_id
            )
        )
    )


def with_custom_fields(
    loader: RowLoader, definitions: Definitions, member_ids: frozenset[int]
) -> RowLoader:
    """`loader` for rows that may carry custom field columns: those become the row's
    `custom_fields`, checked like a POST's (each problem under its key's column)."""
    if not definitions:
        return loader

    def load(cells: dict[str, str]) -> dict[str, Any]:
        custom = {k: cells[k] for k in cells if k in definitions}
        problems: dict[str, list[str]] = {}
        try:
            data = loader({k: v for k, v in cells.items() if k not in definitions})
        except RowInvalid as exc:
            problems.update(exc.errors)
            data = {}
        merged = custom_values.merge(
            definitions, {}, from_cells(definitions, custom), creating=True
        )
        for key, user_id in merged.user_ids.items():
            if user_id not in member_ids:
                merged.errors[key] = ["Must be the id of a member of the organization."]
        problems.update(merged.errors)
        if problems:
            raise RowInvalid(problems)
        return {**data, "custom_fields": merged.values}

    return load
