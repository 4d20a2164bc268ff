"""Lists by custom field: `cf.<key>=value` filters (equality; a comma list of options means
any of them; `cf.<key>.gte` / `.lte` for number, date and datetime; `cf.<key>.empty=true|false`)
and `sort=cf.<key>` / `-cf.<key>`, on top of a list's own filters, pages and cursors.

Equality is JSON containment (`custom_fields @> {...}`, which the GIN index serves); ranges
and sorts cast the stored text (validated on write, so every cast succeeds). A sort puts the
records without a value last in both directions and breaks ties by id: the keyset cursor
compares (has a value, value, id), so no record is skipped or repeated across pages."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Boolean,
    Date,
    DateTime,
    Integer,
    Numeric,
    Select,
    cast,
    func,
    literal,
    or_,
    tuple_,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from ...context import Actor
from ...custom_definitions import RANGE_TYPES, SELECT_TYPES, Definition, live
from ...errors import ValidationFailed
from ...pagination import Ordering
from ...validation import custom_values

PREFIX = "cf."
# type -> (SQL type of the cast, Python type, the value standing in for "none" in a sort)
_CASTS: dict[str, tuple[Any, type, Any]] = {
    "number": (Numeric(), Decimal, Decimal(0)),
    "date": (Date(), dt.date, dt.date(1970, 1, 1)),
    "datetime": (DateTime(timezone=True), dt.datetime, dt.datetime(1970, 1, 1, tzinfo=dt.UTC)),
    "boolean": (Boolean(), bool, False),
    "user": (Integer(), int, 0),
}
_TEXT_CAST: tuple[Any, type, Any] = (None, str, "")


@dataclass(frozen=True)
class CustomQuery:
    """The custom field part of a list request: {"cf.<key>[.op]": raw value} and the sort."""

    filters: dict[str, str] = field(default_factory=dict)
    sort: str | None = None


def narrow(
    session: Session,
    actor: Actor,
    entity: str,
    model: Any,
    stmt: Select[Any],
    ordering: Ordering,
    query: CustomQuery | None,
) -> tuple[Select[Any], Ordering]:
    """`stmt` with the custom filters, and the ordering (a custom sort replaces `ordering`)."""
    if query is None or (not query.filters and not query.sort):
        return stmt, ordering
    definitions = live(session, actor.organization_id, entity)
    errors: dict[str, list[str]] = {}
    for name, raw in query.filters.items():
        try:
            stmt = stmt.where(_condition(definitions, model, name, raw))
        except custom_values.Invalid as exc:
            errors[name] = [str(exc)]
    if query.sort:
        try:
            ordering = _ordering(definitions, model, query.sort)
        except custom_values.Invalid as exc:
            errors["sort"] = [str(exc)]
    if errors:
        raise ValidationFailed("Request validation failed", details={"errors": errors})
    return stmt, ordering


def _definition(definitions: dict[str, Definition], key: str) -> Definition:
    found = definitions.get(key)
    if found is None:
        raise custom_values.Invalid(f"Unknown custom field {key!r}.")
    return found


def _typed(definition: Definition, model: Any) -> Any:
    cast, _, _ = _CASTS.get(definition.type, _TEXT_CAST)
    value = model.custom_fields[definition.key].astext
    return value if cast is None else value.cast(cast)


def _python(definition: Definition, stored: Any) -> Any:
    _, python_type, _ = _CASTS.get(definition.type, _TEXT_CAST)
    if python_type is dt.datetime:
        return dt.datetime.fromisoformat(stored)
    if python_type is dt.date:
        return dt.date.fromisoformat(stored)
    return python_type(stored)


def _condition(definitions: dict[str, Definition], model: Any, name: str, raw: str) -> Any:
    key, _, op = name.removeprefix(PREFIX).partition(".")
    definition = _definition(definitions, key)
    column = model.custom_fields
    if op == "empty":
        if raw not in ("true", "false"):
            raise custom_values.Invalid("Must be true or false.")
        has = column.has_key(key)
        return ~has if raw == "true" else has
    if op in ("gte", "lte"):
        if definition.type not in RANGE_TYPES:
            raise custom_values.Invalid(
                f".{op} works on number, date and datetime fields, not {definition.type}."
            )
        bound = _python(definition, custom_values.clean(definition, raw))
        typed = _typed(definition, model)
        return typed >= bound if op == "gte" else typed <= bound
    if op:
        raise custom_values.Invalid(f"Unknown operator {op!r} (gte, lte or empty).")
    if definition.type in SELECT_TYPES:
        values = [v.strip() for v in raw.split(",") if v.strip()]
        unknown = [v for v in values if v not in definition.options]
        if not values or unknown:
            raise custom_values.Invalid(f"Not one of the options: {unknown or raw!r}.")
        many = definition.type == "multi_select"
        return or_(*(_contains(column, {key: [v] if many else v}) for v in values))
    if definition.type == "boolean":
        if raw not in ("true", "false"):
            raise custom_values.Invalid("Must be true or false.")
        return _contains(column, {key: raw == "true"})
    if definition.type == "user":
        if not raw.isdigit():
            raise custom_values.Invalid("Must be a user id.")
        return _contains(column, {key: int(raw)})
    value = custom_values.clean(definition, raw)
    if value is None:
        raise custom_values.Invalid("Give a value (or use .empty=true).")
    return _contains(column, {key: value})


def _contains(column: Any, value: dict[str, Any]) -> Any:
    """`custom_fields @> '<json>'::jsonb` (the GIN index's operator), with the JSON as a text
    literal: the statement renders with literal values, so list totals can be cached by it
    (crm_domain.counting)."""
    return column.op("@>")(cast(literal(json.dumps(value)), JSONB))


@dataclass(frozen=True)
class CustomOrdering(Ordering):
    """A sort by one custom field: (has a value, the value, id), records without last."""

    definition: Definition | None = None
    model: Any = None

    def _parts(self) -> list[Any]:
        assert self.definition is not None
        typed = _typed(self.definition, self.model)
        _, _, none = _CASTS.get(self.definition.type, _TEXT_CAST)
        flag = typed.is_not(None) if self.descending else typed.is_(None)
        return [flag, func.coalesce(typed, literal(none)), self.key]

    def clauses(self) -> list[Any]:
        return [p.desc() if self.descending else p.asc() for p in self._parts()]

    def values_of(self, item: Any) -> list[Any]:
        assert self.definition is not None
        stored = (item.custom_fields or {}).get(self.definition.key)
        _, _, none = _CASTS.get(self.definition.type, _TEXT_CAST)
        has = stored is not None
        flag = has if self.descending else not has
        value = _python(self.definition, stored) if has else none
        return [flag, value, getattr(item, self.key.key)]

    def after(self, values: list[Any]) -> Any:
        left = tuple_(*self._parts())
        right = tuple_(*(literal(v) for v in values))
        return left < right if self.descending else left > right

    def _types(self) -> list[type]:
        assert self.definition is not None
        _, python_type, _ = _CASTS.get(self.definition.type, _TEXT_CAST)
        return [bool, python_type, int]


def _ordering(definitions: dict[str, Definition], model: Any, sort: str) -> CustomOrdering:
    descending = sort.startswith("-")
    key = sort.removeprefix("-").removeprefix(PREFIX)
    definition = _definition(definitions, key)
    if definition.type == "multi_select":
        raise custom_values.Invalid("A multi_select field cannot be sorted by.")
    return CustomOrdering(
        f"cf.{key}", model.id, model.id, descending=descending, definition=definition, model=model
    )
