"""The live custom field definitions of an organization's contacts, deals or tasks, as the
writes, lists and representations of those records read them.

Read once per session and entity (`live`: one indexed query, kept in `session.info`; the
definitions service forgets them when it changes one). A record loaded by id reads them in
its own statement instead (`along_column`, `remember`: every entity's definitions as one JSON
column beside the row), so a single record's read or write costs no query for them. A record
read for an answer carries the keys of the live definitions it was read with (`attach`), so
its JSON can show every live key (null when absent) and hide the values of deleted
definitions after the session has closed (crm_domain.representation.custom_fields_of)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.orm import Session, object_session

from .models import CustomFieldDefinition

ENTITIES = ("contact", "deal", "task")
ENTITY_BY_TABLE = {"contacts": "contact", "deals": "deal", "tasks": "task"}
TYPES = (
    "text",
    "number",
    "boolean",
    "date",
    "datetime",
    "single_select",
    "multi_select",
    "url",
    "email",
    "user",
)
SELECT_TYPES = frozenset({"single_select", "multi_select"})
RANGE_TYPES = frozenset({"number", "date", "datetime"})
KEY_PATTERN = r"^[a-z][a-z0-9_]{0,39}$"
KEY_RE = re.compile(KEY_PATTERN)
MAX_PER_ENTITY = 100

_CACHE = "custom_definitions"
_KEYS_ATTR = "_crm_custom_field_keys"


@dataclass(frozen=True, slots=True)
class Definition:
    id: int
    key: str
    type: str
    required: bool
    options: dict[str, bool]  # select types: value -> archived
    labels: dict[str, str] = field(default_factory=dict)  # select types: value -> label


Definitions = dict[str, Definition]  # live definitions by key, in creation order


def live(session: Session, organization_id: int, entity: str) -> Definitions:
    """The live (not deleted) definitions of `entity` in the organization."""
    cache: dict[tuple[int, str], Definitions] = session.info.setdefault(_CACHE, {})
    found = cache.get((organization_id, entity))
    if found is None:
        rows = session.execute(
            select(
                CustomFieldDefinition.id,
                CustomFieldDefinition.key,
                CustomFieldDefinition.type,
                CustomFieldDefinition.required,
                CustomFieldDefinition.options,
            )
            .where(
                CustomFieldDefinition.organization_id == organization_id,
                CustomFieldDefinition.entity == entity,
                CustomFieldDefinition.deleted_at.is_(None),
            )
            .order_by(CustomFieldDefinition.id)
        ).all()
        found = {
            row.key: _definition(row.id, row.key, row.type, row.required, row.options)
            for row in rows
        }
        cache[(organization_id, entity)] = found
    return found


def known(session: Session, organization_id: int) -> bool:
    """The session has read the organization's definitions of every entity already."""
    cache: dict[tuple[int, str], Definitions] = session.info.get(_CACHE, {})
    return all((organization_id, entity) in cache for entity in ENTITIES)


@lru_cache(maxsize=1)
def along_column() -> Any:
    """A column for a statement that loads a record (when the session does not `know` the
    definitions yet): the organization's live definitions of every entity as JSON (null when
    it has none), for `remember`. Made once, its organization the parameter
    `organization_id`, so that statements made once with it are compiled once."""
    d = CustomFieldDefinition
    element = func.json_build_array(d.entity, d.id, d.key, d.type, d.required, d.options)
    return (
        select(func.json_agg(aggregate_order_by(element, d.id)))
        .where(d.organization_id == bindparam("organization_id"), d.deleted_at.is_(None))
        .scalar_subquery()
    )


def remember(session: Session, organization_id: int, found: list[list[Any]] | None) -> None:
    """Keep what an `along_column` read, as `live` would have read it, entity by entity."""
    by_entity: dict[str, Definitions] = {entity: {} for entity in ENTITIES}
    for entity, id_, key, type_, required, options in found or ():
        by_entity[entity][key] = _definition(id_, key, type_, required, options)
    cache: dict[tuple[int, str], Definitions] = session.info.setdefault(_CACHE, {})
    for entity, definitions in by_entity.items():
        cache.setdefault((organization_id, entity), definitions)


def _definition(id_: int, key: str, type_: str, required: bool, options: Any) -> Definition:
    archived = {o["value"]: bool(o.get("archived")) for o in options or ()}
    labels = {o["value"]: o.get("label", o["value"]) for o in options or ()}
    return Definition(
        id=id_, key=key, type=type_, required=required, options=archived, labels=labels
    )


def forget(session: Session, organization_id: int) -> None:
    """Drop the session's copy after a definition of the organization changed."""
    cache: dict[tuple[int, str], Definitions] = session.info.get(_CACHE, {})
    for entity in ENTITIES:
        cache.pop((organization_id, entity), None)


def attach(session: Session, organization_id: int, entity: str, records: Iterable[Any]) -> None:
    """Let each record show the live keys of its entity after the session closed."""
    keys = tuple(live(session, organization_id, entity))
    for record in records:
        record.__dict__[_KEYS_ATTR] = keys


def shown_keys(record: Any) -> tuple[str, ...]:
    """The custom field keys `record`'s JSON shows: those attached, else (a record still in
    its session, e.g. an event's) the live ones, else (detached, never attached) the
    record's own."""
    keys: tuple[str, ...] | None = record.__dict__.get(_KEYS_ATTR)
    if keys is not None:
        return keys
    session = object_session(record)
    if session is not None:
        entity = ENTITY_BY_TABLE[record.__tablename__]
        return tuple(live(session, record.organization_id, entity))
    return tuple(record.custom_fields or ())
