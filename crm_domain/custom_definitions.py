"""The live custom field definitions of an organization's contacts, deals or tasks, as the
writes, lists and representations of those records read them.

Read once per session and entity (`live`: one indexed query, kept in `session.info`; the
definitions service forgets them when it changes one). A record read for an answer carries
the keys of the live definitions it was read with (`attach`), so its JSON can show every
live key (null when absent) and hide the values of deleted definitions after the session
has closed (crm_domain.representation.custom_fields_of)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
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
            row.key: Definition(
                id=row.id,
                key=row.key,
                type=row.type,
                required=row.required,
                options={o["value"]: bool(o.get("archived")) for o in row.options or ()},
            )
            for row in rows
        }
        cache[(organization_id, entity)] = found
    return found


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
