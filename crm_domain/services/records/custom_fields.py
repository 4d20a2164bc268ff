"""Custom fields: an organization's definitions (owners and admins manage them, every member
reads them) and the values on its contacts, deals and tasks.

Other features write values through `apply_custom_fields` (a create, a merge's `prefer`, a
bulk update's `changes`): it validates against the live definitions, merges key by key and
returns the changes as `{"custom_fields.<key>": (old, new)}` for the domain events.

Deleting a definition hides its values at once (records show the live definitions' keys
only) and records CUSTOM_FIELD_DELETED_TOPIC; the worker then purges the values in batches
(`purge_batch`, one short transaction each) and drops the definition (`finish_purge`); until
then the key stays taken."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.orm import Session

from ... import audit, rules
from ...context import Actor
from ...custom_definitions import (
    ENTITIES,
    MAX_PER_ENTITY,
    SELECT_TYPES,
    Definition,
    Definitions,
    attach,
    forget,
    live,
)
from ...enums import ActivityType
from ...errors import Conflict, ValidationFailed
from ...models import Contact, CustomFieldDefinition, Deal, OrganizationMember, Task
from ...pagination import Ordering, Page, PageRequest, paginate
from ...trashable import INCLUDE_TRASHED
from ...validation import custom_values
from .._common import apply_changes, get_in_org, not_found
from ..delivery import events, outbox
from . import timeline

CUSTOM_FIELD_DELETED_TOPIC = "custom_field.deleted"  # -> the purge task (a RunConsumer)
MODELS: dict[str, Any] = {"contact": Contact, "deal": Deal, "task": Task}
OPTION_VALUE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
MAX_OPTIONS = 200
PURGE_BATCH = 1000
CHANGE_PREFIX = "custom_fields."
ORDERING = Ordering("id", CustomFieldDefinition.id, CustomFieldDefinition.id, descending=False)
NO_OPTIONS = "Only single_select and multi_select fields have options."


# --- definitions --------------------------------------------------------------------------------


def list_definitions(
    session: Session, actor: Actor, request: PageRequest, entity: str | None = None
) -> Page[CustomFieldDefinition]:
    stmt = select(CustomFieldDefinition).where(
        CustomFieldDefinition.organization_id == actor.organization_id,
        CustomFieldDefinition.deleted_at.is_(None),
    )
    if entity is not None:
        stmt = stmt.where(CustomFieldDefinition.entity == entity)
    return paginate(session, stmt, request, ORDERING)


def get_definition(
    session: Session, actor: Actor, definition_id: int, *, for_update: bool = False
) -> CustomFieldDefinition:
    found = get_in_org(
        session,
        CustomFieldDefinition,
        actor.organization_id,
        definition_id,
        name="custom_field",
        for_update=for_update,
    )
    if found.deleted_at is not None:
        raise not_found("custom_field")
    return found


def create_definition(
    session: Session,
    actor: Actor,
    *,
    entity: str,
    key: str,
    label: str,
    type: str,
    required: bool = False,
    description: str | None = None,
    options: Sequence[Mapping[str, Any]] | None = None,
) -> CustomFieldDefinition:
    """Checks: 403 (role), 400 (options), 409 (key taken, limit reached)."""
    rules.ensure_settings_role(actor.role, "custom fields")
    org = actor.organization_id
    if type in SELECT_TYPES:
        stored_options = _checked_options([], options or [])
    elif options:
        raise _invalid({"options": [NO_OPTIONS]})
    else:
        stored_options = []
    # One creation at a time per organization and entity: the limit holds under concurrency.
    session.execute(
        text("SELECT pg_advisory_xact_lock(hashtext('custom_fields'), hashtext(:scope))"),
        {"scope": f"{org}:{entity}"},
    )
    taken = session.scalar(
        select(CustomFieldDefinition.deleted_at.is_not(None)).where(
            CustomFieldDefinition.organization_id == org,
            CustomFieldDefinition.entity == entity,
            CustomFieldDefinition.key == key,
        )
    )
    if taken is not None:
        why = " (its deleted field's values are still being purged)" if taken else ""
        raise Conflict(
            f"A {entity} custom field with the key {key!r} exists{why}",
            code="CUSTOM_FIELD_KEY_TAKEN",
            details={"key": key},
        )
    count = session.scalar(
        select(func.count()).where(
            CustomFieldDefinition.organization_id == org,
            CustomFieldDefinition.entity == entity,
            CustomFieldDefinition.deleted_at.is_(None),
        )
    )
    if (count or 0) >= MAX_PER_ENTITY:
        raise Conflict(
            f"At most {MAX_PER_ENTITY} custom fields per entity: delete one first",
            code="CUSTOM_FIELD_LIMIT_REACHED",
            details={"entity": entity, "limit": MAX_PER_ENTITY},
        )
    definition = CustomFieldDefinition(
        organization_id=org,
        entity=entity,
        key=key,
        label=label,
        type=type,
        required=required,
        description=description,
        options=stored_options,
    )
    session.add(definition)
    session.flush()
    forget(session, org)
    _figures_changed(session, definition)
    created = {"entity": entity, "key": key, "label": label, "type": type, "required": required}
    _audit(session, definition, "created", {k: (None, v) for k, v in created.items()})
    return definition


def update_definition(
    session: Session, actor: Actor, definition_id: int, changes: dict[str, Any]
) -> CustomFieldDefinition:
    """label, description, required, options (the whole list: every existing value stays,
    with its label and `archived` editable; new values are added). Never a record rewrite."""
    definition = get_definition(session, actor, definition_id, for_update=True)
    rules.ensure_settings_role(actor.role, "custom fields")
    changes = dict(changes)
    if "options" in changes:
        if definition.type not in SELECT_TYPES:
            raise _invalid(
                {"options": ["Only single_select and multi_select fields have options."]}
            )
        changes["options"] = _checked_options(definition.options, changes["options"])
    changed = apply_changes(definition, changes)
    if changed:
        session.flush()
        forget(session, definition.organization_id)
        _figures_changed(session, definition)
        _audit(session, definition, "updated", changed)
    return definition


def delete_definition(session: Session, actor: Actor, definition_id: int) -> None:
    """Hide the values now; the worker purges them (CUSTOM_FIELD_DELETED_TOPIC)."""
    definition = get_definition(session, actor, definition_id, for_update=True)
    rules.ensure_settings_role(actor.role, "custom fields")
    definition.deleted_at = dt.datetime.now(dt.UTC)
    session.flush()
    forget(session, definition.organization_id)
    outbox.record(
        session,
        definition.organization_id,
        CUSTOM_FIELD_DELETED_TOPIC,
        {"definition_id": definition.id},
    )
    _figures_changed(session, definition)
    _audit(session, definition, "deleted", {"key": (definition.key, None)})


def _audit(
    session: Session,
    definition: CustomFieldDefinition,
    what: str,
    changes: Mapping[str, tuple[Any, Any]],
) -> None:
    audit.record(
        session,
        definition.organization_id,
        f"custom_field.{what}",
        "custom_field",
        definition.id,
        changes,
    )


def _figures_changed(session: Session, definition: CustomFieldDefinition) -> None:
    """A deal select field's figures (GET /analytics/deals/by-field/{key}) appear, change
    options or go: one analytics refresh of the organization."""
    if definition.entity == "deal" and definition.type in SELECT_TYPES:
        outbox.record(
            session,
            definition.organization_id,
            events.DEAL_CHANGED_TOPIC,
            {"custom_field_id": definition.id},
        )


def _checked_options(
    existing: Sequence[Mapping[str, Any]], wanted: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    errors: dict[str, list[str]] = {}
    seen: set[str] = set()
    result = []
    for index, option in enumerate(wanted):
        value = option["value"]
        if not OPTION_VALUE_RE.match(value):
            errors[str(index)] = ["value: 1 to 100 of A-Z a-z 0-9 _ . - (no commas or spaces)."]
        elif value in seen:
            errors[str(index)] = [f"The value {value!r} is listed twice."]
        seen.add(value)
        result.append(
            {"value": value, "label": option["label"], "archived": bool(option.get("archived"))}
        )
    missing = [o["value"] for o in existing if o["value"] not in seen]
    if missing:
        errors["_schema"] = [f"Options cannot be removed (archive them instead): {missing}."]
    if len(result) > MAX_OPTIONS:
        errors["_schema"] = [f"At most {MAX_OPTIONS} options."]
    if errors:
        raise _invalid({"options": errors})
    return result


def _invalid(errors: dict[str, Any]) -> ValidationFailed:
    return ValidationFailed("Request validation failed", details={"errors": errors})


# --- values -------------------------------------------------------------------------------------


def apply_custom_fields(
    session: Session,
    actor: Actor,
    entity: str,
    record: Any,
    values: Mapping[str, Any] | None,
    *,
    creating: bool = False,
    keep_archived: bool = False,
) -> dict[str, tuple[Any, Any]]:
    """Validate `values` ({key: value}, null clears a key) against the live definitions and
    merge them into `record.custom_fields`; 400 VALIDATION_ERROR with every problem under
    details.errors.custom_fields.<key>. `creating`: required fields must have a value.
    `keep_archived`: archived options are accepted (values copied from another record, as a
    merge of duplicates does; a user's new choice never is).
    Returns {"custom_fields.<key>": (old, new)} for the keys that really changed."""
    definitions = live(session, actor.organization_id, entity)
    stored: dict[str, Any] = dict(record.custom_fields or {})
    if not values and not creating:
        attach(session, actor.organization_id, entity, [record])
        return {}
    merged = custom_values.merge(
        definitions, stored, values, creating=creating, keep_archived=keep_archived
    )
    _check_members(session, actor.organization_id, merged)
    if merged.errors:
        raise _invalid({"custom_fields": merged.errors})
    changed = {
        CHANGE_PREFIX + key: (stored.get(key), merged.values.get(key))
        for key in definitions
        if stored.get(key) != merged.values.get(key)
    }
    if merged.values != stored:
        record.custom_fields = merged.values
    attach(session, actor.organization_id, entity, [record])
    return changed


def update_with_custom_fields(
    session: Session, actor: Actor, entity: str, record: Any, changes: Mapping[str, Any]
) -> dict[str, tuple[Any, Any]]:
    """`apply_changes` for a record's own fields plus `apply_custom_fields` for its
    `custom_fields`; a deal's custom field changes go to its timeline."""
    plain = {k: v for k, v in changes.items() if k != "custom_fields"}
    changed = apply_custom_fields(session, actor, entity, record, changes.get("custom_fields"))
    custom_changes = dict(changed)
    changed = {**apply_changes(record, plain), **custom_changes}
    if entity == "deal" and custom_changes:
        timeline.record_activity(
            session,
            organization_id=record.organization_id,
            deal_id=record.id,
            author_id=actor.user_id,
            type=ActivityType.SYSTEM,
            payload={
                "custom_fields": {
                    key.removeprefix(CHANGE_PREFIX): {"old": old, "new": new}
                    for key, (old, new) in custom_changes.items()
                }
            },
        )
    return changed


def _check_members(session: Session, organization_id: int, merged: custom_values.Merged) -> None:
    if not merged.user_ids:
        return
    members = set(
        session.scalars(
            select(OrganizationMember.user_id).where(
                OrganizationMember.organization_id == organization_id,
                OrganizationMember.user_id.in_(set(merged.user_ids.values())),
            )
        )
    )
    for key, user_id in merged.user_ids.items():
        if user_id not in members:
            merged.errors[key] = ["Must be the id of a member of the organization."]


def present(session: Session, organization_id: int, entity: str, records: Iterable[Any]) -> None:
    """Let the records show the live custom fields once the session is closed."""
    attach(session, organization_id, entity, records)


def ensure_select_field(session: Session, actor: Actor, entity: str, key: str) -> Definition:
    """The live select field `key` of `entity`, else 404 CUSTOM_FIELD_NOT_FOUND."""
    found = live(session, actor.organization_id, entity).get(key)
    if found is None or found.type not in SELECT_TYPES:
        raise not_found("custom_field")
    return found


def definitions_of(session: Session, organization_id: int, entity: str) -> Definitions:
    return live(session, organization_id, entity)


# --- the purge after a deletion -----------------------------------------------------------------


@dataclass(frozen=True)
class Purge:
    organization_id: int
    entity: str
    key: str


def purge_of(session: Session, definition_id: int) -> Purge | None:
    """What a deleted definition leaves to purge (None: not deleted, or already gone)."""
    row = session.execute(
        select(
            CustomFieldDefinition.organization_id,
            CustomFieldDefinition.entity,
            CustomFieldDefinition.key,
        ).where(
            CustomFieldDefinition.id == definition_id,
            CustomFieldDefinition.deleted_at.is_not(None),
        )
    ).first()
    return None if row is None else Purge(row.organization_id, row.entity, row.key)


def purge_batch(session: Session, purge: Purge, after: int, limit: int = PURGE_BATCH) -> int | None:
    """Remove the key from the organization's next `limit` records by id after `after` (a
    walk by primary key: each batch reads only its own rows); returns the last id looked
    at, None past the end. Neither updated_at nor the representation changes."""
    model = MODELS[purge.entity]
    ids = list(
        session.scalars(
            select(model.id)
            .where(model.organization_id == purge.organization_id, model.id > after)
            .order_by(model.id)
            .limit(limit)
            .execution_options(**INCLUDE_TRASHED)  # trashed records may come back
        )
    )
    if not ids:
        return None
    session.execute(
        update(model)
        .where(model.id.in_(ids), model.custom_fields.has_key(purge.key))
        .values(custom_fields=model.custom_fields.op("-")(purge.key), updated_at=model.updated_at)
        .execution_options(synchronize_session=False)
    )
    return ids[-1]


def finish_purge(session: Session, definition_id: int, purge: Purge) -> bool:
    """Drop the definition (freeing its key) once no record has its key; False if some
    still do (locked during the batches: run again)."""
    model = MODELS[purge.entity]
    left = session.scalar(
        select(model.id)
        .where(model.organization_id == purge.organization_id)
        .where(model.custom_fields.has_key(purge.key))
        .limit(1)
        .execution_options(**INCLUDE_TRASHED)
    )
    if left is not None:
        return False
    session.execute(delete(CustomFieldDefinition).where(CustomFieldDefinition.id == definition_id))
    return True


def pending_purges(session: Session) -> list[int]:
    """Deleted definitions whose values have not been purged yet (beat's safety net)."""
    return list(
        session.scalars(
            select(CustomFieldDefinition.id)
            .where(CustomFieldDefinition.deleted_at.is_not(None))
            .order_by(CustomFieldDefinition.id)
        )
    )


__all__ = [
    "CUSTOM_FIELD_DELETED_TOPIC",
    "ENTITIES",
    "Definition",
    "apply_custom_fields",
    "update_with_custom_fields",
]
