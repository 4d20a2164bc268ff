"""Domain events: one outbox event per committed change, recorded by the services where the
change happens (so a rolled-back change records nothing).

The event's topic is its type and its payload the `data` of the webhook: the resource as the
API returns it (crm_domain.representation), plus `changes` ({field: {"old", "new"}}) on the
change events. Consumers (registered in crm_worker.consumers): the webhook fan-out (every type,
webhook_fanout) and the analytics refresh (the deal types that change figures)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from ... import audit, representation
from . import outbox

CONTACT_CREATED = "contact.created"
CONTACT_UPDATED = "contact.updated"
CONTACT_DELETED = "contact.deleted"  # also: moved to the trash
CONTACT_RESTORED = "contact.restored"
CONTACT_MERGED = "contact.merged"
DEAL_CREATED = "deal.created"
DEAL_UPDATED = "deal.updated"
DEAL_DELETED = "deal.deleted"
DEAL_RESTORED = "deal.restored"
DEAL_STATUS_CHANGED = "deal.status_changed"
DEAL_STAGE_CHANGED = "deal.stage_changed"
TASK_CREATED = "task.created"
TASK_UPDATED = "task.updated"
TASK_COMPLETED = "task.completed"
TASK_DELETED = "task.deleted"
TASK_RESTORED = "task.restored"
ACTIVITY_CREATED = "activity.created"
REPORT_READY = "report.ready"
# Not a webhook event: deals changed in bulk (an import's batch; before the deal.* events, every
# deal write) -> one analytics refresh of the organization.
DEAL_CHANGED_TOPIC = "deal.changed"

EVENT_TYPES: tuple[str, ...] = (
    CONTACT_CREATED,
    CONTACT_UPDATED,
    CONTACT_DELETED,
    DEAL_CREATED,
    DEAL_UPDATED,
    DEAL_DELETED,
    DEAL_STATUS_CHANGED,
    DEAL_STAGE_CHANGED,
    TASK_CREATED,
    TASK_UPDATED,
    TASK_COMPLETED,
    TASK_DELETED,
    ACTIVITY_CREATED,
    REPORT_READY,
    CONTACT_RESTORED,
    CONTACT_MERGED,
    DEAL_RESTORED,
    TASK_RESTORED,
)
# Every deal write records exactly one of these: the analytics refresh listens to them.
DEAL_WRITE_TYPES: tuple[str, ...] = (DEAL_CREATED, DEAL_UPDATED, DEAL_DELETED, DEAL_RESTORED)

# Not audited (crm_domain.audit): the specific events repeat part of their `.updated` entry,
# and a report being ready changes no data. Every other event is one audit entry.
_NOT_AUDITED = frozenset({DEAL_STATUS_CHANGED, DEAL_STAGE_CHANGED, TASK_COMPLETED, REPORT_READY})

# A change of one of these fields also records the specific event (besides `<kind>.updated`);
# the predicate tells which new values count (a task is completed when is_done turns true).
_SPECIFIC: dict[str, tuple[tuple[str, str, Any], ...]] = {
    "deal": (
        ("status", DEAL_STATUS_CHANGED, lambda _new: True),
        ("stage", DEAL_STAGE_CHANGED, lambda _new: True),
    ),
    "task": (("is_done", TASK_COMPLETED, lambda new: new is True),),
}


def record_created(session: Session, kind: str, obj: Any) -> None:
    """`<kind>.created` with the new resource (call after the flush that gave it its id)."""
    _record(session, obj.organization_id, f"{kind}.created", representation.dump(kind, obj))


def record_updated(
    session: Session, kind: str, obj: Any, changed: dict[str, tuple[Any, Any]]
) -> None:
    """`<kind>.updated` with the resource after the change and every changed field's old and
    new value, plus the specific events the changed fields call for. Nothing if unchanged."""
    if not changed:
        return
    data = representation.dump(kind, obj)
    _record(session, obj.organization_id, f"{kind}.updated", {**data, "changes": _changes(changed)})
    for field, event_type, counts in _SPECIFIC.get(kind, ()):
        if field in changed and counts(changed[field][1]):
            only = {field: changed[field]}
            _record(session, obj.organization_id, event_type, {**data, "changes": _changes(only)})


def record_deleted(session: Session, kind: str, obj: Any) -> None:
    """`<kind>.deleted` with the resource as it was (call before the row goes)."""
    _record(session, obj.organization_id, f"{kind}.deleted", representation.dump(kind, obj))


def record_restored(session: Session, kind: str, obj: Any) -> None:
    """`<kind>.restored` with the resource back from the trash."""
    _record(session, obj.organization_id, f"{kind}.restored", representation.dump(kind, obj))


def record_merged(
    session: Session, target: Any, merged_ids: list[int], deal_ids: list[int]
) -> None:
    """`contact.merged`: the target as it is after the merge, the contacts merged into it and
    the deals moved to it."""
    data = representation.dump("contact", target)
    extra = {"merged_ids": merged_ids, "moved_deal_ids": deal_ids}
    _record(session, target.organization_id, CONTACT_MERGED, {**data, **extra})


def record_ready(session: Session, kind: str, obj: Any) -> None:
    _record(session, obj.organization_id, f"{kind}.ready", representation.dump(kind, obj))


def _changes(changed: dict[str, tuple[Any, Any]]) -> dict[str, dict[str, Any]]:
    return {
        field: {"old": representation.json_value(old), "new": representation.json_value(new)}
        for field, (old, new) in changed.items()
    }


def _record(session: Session, organization_id: int, event_type: str, data: dict[str, Any]) -> None:
    assert event_type in EVENT_TYPES, event_type
    outbox.record(session, organization_id, event_type, data)
    if event_type not in _NOT_AUDITED:
        audit.record_event(session, organization_id, event_type, data)
