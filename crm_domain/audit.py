"""The audit log's writing side: one entry per change to an organization's data, inserted
in the change's own transaction (so a rolled-back change, or savepoint, leaves none).

Two ways in:
- every domain event (crm_domain.services.delivery.events) is audited by `record_event`,
  so a new event type (`contact.restored`, ...) is audited without a change here;
- a change without an event (members, invitations, webhook endpoints, API keys, imports)
  calls `record(session, organization_id, action, entity_type, entity_id, changes)`.

The actor is read from `context.origin()`: the request's user (with the API key they sent)
or the system (workers, beat, tools), with the request id. `changes` is {field: [old, new]};
a field that names a password, secret, token or key hash is never written, whatever the
caller passes. Entries are queued on the session and inserted as the transaction commits, in
one statement with its outbox events (crm_domain.commit_inserts); the database fills in
`occurred_at` and `xid` (the transaction's id, which orders the change feed)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from sqlalchemy.orm import Session

from . import commit_inserts
from .context import origin
from .models import AuditEntry
from .representation import json_value

# Field names never written to the log (their old and new values are both left out).
_SECRET = re.compile(r"password|secret|token|(^|_)key$|_hash$|digest", re.IGNORECASE)

Changes = Mapping[str, Sequence[Any]]

# Inside `derived()`: the events recorded are consequences of a change audited already.
_derived: ContextVar[bool] = ContextVar("crm_audit_derived", default=False)


@contextmanager
def derived() -> Iterator[None]:
    """Events recorded inside are not audited: they follow from a change that was (a deal's
    timeline entry after its `deal.updated`). Explicit `record` calls still write."""
    token = _derived.set(True)
    try:
        yield
    finally:
        _derived.reset(token)


def redact(changes: Changes) -> dict[str, list[Any]]:
    """{field: [old, new]} in JSON terms, without the fields that must never be logged."""
    return {
        field: [json_value(old), json_value(new)]
        for field, (old, new) in changes.items()
        if not _SECRET.search(field)
    }


def entry(
    organization_id: int,
    action: str,
    entity_type: str,
    entity_id: int,
    changes: Changes | None = None,
) -> dict[str, Any]:
    """One entry's row, its actor and request id those of the work in progress."""
    who = origin()
    return {
        "organization_id": organization_id,
        "actor_user_id": who.user_id,
        "actor_api_key_id": who.api_key_id,
        "request_id": who.request_id,
        "action": action,
        "entity_type": entity_type,
        "entity_id": entity_id,
        "changes": redact(changes or {}),
    }


def record_many(session: Session, entries: Iterable[dict[str, Any]]) -> None:
    """Insert entries made by `entry` when the session's transaction commits."""
    for row in entries:
        commit_inserts.add(session, AuditEntry, row)


def record(
    session: Session,
    organization_id: int,
    action: str,
    entity_type: str,
    entity_id: int,
    changes: Changes | None = None,
) -> None:
    """Audit one change (`action` such as "member.role_changed") in the session's transaction."""
    record_many(session, [entry(organization_id, action, entity_type, entity_id, changes)])


def event_changes(event_type: str, data: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """An event's changes as {field: (old, new)}: its `changes` ({field: {"old", "new"}}),
    or for an event without them the resource itself, as new (`*.created` and the like) or
    as gone (`*.deleted`)."""
    if isinstance(data.get("changes"), Mapping):
        return {f: (c.get("old"), c.get("new")) for f, c in data["changes"].items()}
    fields = {f: v for f, v in data.items() if f != "changes"}
    if event_type.endswith(".deleted"):
        return {f: (v, None) for f, v in fields.items()}
    return {f: (None, v) for f, v in fields.items()}


def record_event(
    session: Session, organization_id: int, event_type: str, data: Mapping[str, Any]
) -> None:
    """Audit a domain event (`<entity>.<what>`, `data` the resource with its `id`); nothing
    inside `derived()`."""
    if _derived.get():
        return
    entity_type = event_type.split(".", 1)[0]
    changes = event_changes(event_type, data)
    record(session, organization_id, event_type, entity_type, int(data["id"]), changes)
