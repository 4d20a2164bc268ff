"""Merging duplicate contacts into one, in the caller's transaction.

`merge_contacts` moves every deal of the merged contacts (live or in the trash; their tasks
and timelines are the deal's) to the target, with one timeline entry per moved deal; fills
the target's empty fields from the merged contacts (the first, in `merge_ids` order, that has
a value) unless `prefer` names the contact whose value wins a field; then trashes the merged
contacts, marked `merged_into_id` (restoring one answers 409 CONTACT_MERGED). Deals do not
change otherwise, so the analytics totals stay as they were.

Fields: `MERGEABLE_FIELDS`, plus `cf.<key>` for a custom field where contacts have
`custom_fields` (a JSON object per contact): `prefer` keys are handled generically by
`_read`/`_write`, and `_custom_keys` lists the keys to fill."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ... import rules
from ...context import Actor
from ...errors import NotFound, ValidationFailed
from ...models import Contact, Deal
from ...trashable import INCLUDE_TRASHED
from .._common import apply_changes
from ..delivery import events
from . import trash
from .custom_fields import apply_custom_fields, definitions_of

MERGEABLE_FIELDS = ("name", "email", "phone")
CUSTOM_PREFIX = "cf."  # prefer {"cf.<key>": id}: a custom field's value
MAX_MERGE = 50
TIMELINE_MOVED = "contact_merged"  # the timeline entry of a moved deal (type `system`)


def merge_contacts(
    session: Session,
    actor: Actor,
    target_id: int,
    merge_ids: Sequence[int],
    prefer: dict[str, int] | None = None,
) -> Contact:
    """Merge `merge_ids` into `target_id`; answers the target as it is afterwards.
    Check order: 400 (the request itself), 404 (any contact), 403 (a member's contact not
    their own), 400 (`prefer` names a contact outside the merge)."""
    merge_ids = list(dict.fromkeys(merge_ids))  # once each, in the order given
    prefer = dict(prefer or {})
    _check_request(target_id, merge_ids, prefer)
    target, sources = _lock(session, actor, target_id, merge_ids)
    for contact in (target, *sources):
        rules.ensure_can_modify(
            actor.role, owner_id=contact.owner_id, user_id=actor.user_id, what="contacts"
        )
    changes = _merged_values(target, sources, prefer)
    deal_ids = _move_deals(session, actor, target, merge_ids)
    for source in sources:
        events.record_deleted(session, "contact", source)
        trash.put_in_trash(session, actor, "contact", source, merged_into_id=target.id)
    # Custom fields: the live definitions' values, checked like any write (values copied from
    # another contact may be archived options).
    custom = {
        key: value
        for key, value in changes.pop("custom_fields", {}).items()
        if key in definitions_of(session, actor.organization_id, "contact")
    }
    changed = apply_changes(target, changes)
    changed.update(
        apply_custom_fields(session, actor, "contact", target, custom, keep_archived=True)
    )
    session.flush()
    events.record_updated(session, "contact", target, changed)
    events.record_merged(session, target, merge_ids, deal_ids)
    return target


def _check_request(target_id: int, merge_ids: list[int], prefer: dict[str, int]) -> None:
    if not merge_ids:
        raise _invalid("merge_ids", "Name at least one contact to merge.", "MERGE_IDS_REQUIRED")
    if len(merge_ids) > MAX_MERGE:
        raise _invalid("merge_ids", f"At most {MAX_MERGE} contacts at a time.", "MERGE_TOO_MANY")
    if target_id in merge_ids:
        raise _invalid("merge_ids", "A contact cannot be merged into itself.", "MERGE_INTO_ITSELF")
    involved = {target_id, *merge_ids}
    for name, source_id in prefer.items():
        if not (name in MERGEABLE_FIELDS or _custom_key(name)):
            raise _invalid(
                f"prefer.{name}",
                f"Not a mergeable field: one of {', '.join(MERGEABLE_FIELDS)} or cf.<key>.",
                "MERGE_UNKNOWN_FIELD",
            )
        if source_id not in involved:
            raise _invalid(
                f"prefer.{name}",
                "Must be the target's id or one of merge_ids.",
                "MERGE_PREFER_OUTSIDE",
            )


def _lock(
    session: Session, actor: Actor, target_id: int, merge_ids: list[int]
) -> tuple[Contact, list[Contact]]:
    """Lock every contact of the merge in id order (two merges never deadlock); 404 names the
    ids that are not live contacts of the organization (another's, trashed, unknown)."""
    wanted = sorted({target_id, *merge_ids})
    found = {
        c.id: c
        for c in session.scalars(
            select(Contact)
            .where(Contact.id.in_(wanted), Contact.organization_id == actor.organization_id)
            .order_by(Contact.id)
            .with_for_update()
        )
    }
    missing = [i for i in wanted if i not in found]
    if missing:
        raise NotFound(
            "Contact not found",
            code="CONTACT_NOT_FOUND",
            details={"missing_ids": missing},
        )
    return found[target_id], [found[i] for i in merge_ids]


def _merged_values(target: Contact, sources: list[Contact], prefer: dict[str, int]) -> Any:
    """The target's new field values: the preferred contact's where `prefer` names one (and
    it has a value), else the target's own, else the first merged contact's that has one."""
    by_id = {c.id: c for c in (target, *sources)}
    order = [target, *sources]
    changes: dict[str, Any] = {}
    custom: dict[str, Any] = dict(getattr(target, "custom_fields", None) or {})
    for name in (*MERGEABLE_FIELDS, *(CUSTOM_PREFIX + k for k in _custom_keys(order))):
        candidates = order
        if name in prefer:
            candidates = [by_id[prefer[name]], *order]
        value = next((v for c in candidates if not _empty(v := _read(c, name))), None)
        if value is None:
            continue
        key = _custom_key(name)
        if key:
            custom[key] = value
        else:
            changes[name] = value
    if custom:
        changes["custom_fields"] = custom
    return changes


def _move_deals(session: Session, actor: Actor, target: Contact, merge_ids: list[int]) -> list[int]:
    """Every deal of the merged contacts, trashed ones too, goes to the target; each live one
    records its `deal.updated`, each one a timeline entry."""
    deals = session.scalars(
        select(Deal)
        .where(Deal.contact_id.in_(merge_ids), Deal.organization_id == actor.organization_id)
        .order_by(Deal.id)
        .with_for_update()
        .execution_options(**INCLUDE_TRASHED)
    ).all()
    moves = []
    for deal in deals:
        old_contact = deal.contact_id
        moves.append((deal, apply_changes(deal, {"contact_id": target.id})))
        trash.system_entry(
            session,
            actor,
            deal,
            TIMELINE_MOVED,
            old_contact_id=old_contact,
            new_contact_id=target.id,
        )
    session.flush()
    for deal, changed in moves:
        if deal.deleted_at is None:
            events.record_updated(session, "deal", deal, changed)
    return [d.id for d in deals]


def _read(contact: Contact, name: str) -> Any:
    key = _custom_key(name)
    if key:
        return (getattr(contact, "custom_fields", None) or {}).get(key)
    return getattr(contact, name)


def _custom_key(name: str) -> str | None:
    """`cf.<key>` -> key, where contacts have custom fields; otherwise None."""
    if name.startswith(CUSTOM_PREFIX) and hasattr(Contact, "custom_fields"):
        return name.removeprefix(CUSTOM_PREFIX) or None
    return None


def _custom_keys(contacts: list[Contact]) -> list[str]:
    keys: dict[str, None] = {}
    for c in contacts:
        keys.update(dict.fromkeys(getattr(c, "custom_fields", None) or {}))
    return list(keys)


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == []


def _invalid(field_name: str, message: str, code: str) -> ValidationFailed:
    return ValidationFailed(message, code=code, details={"errors": {field_name: [message]}})
