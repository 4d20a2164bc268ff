"""The audit log as its owners and admins read it: filtered, newest first, a keyset cursor
(the entry id: ids are handed out in insert order, close enough to time for a log; the
change feed, crm_domain.services.auditing.feed, is the exactly-once view)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from ... import rules
from ...context import Actor
from ...models import AuditEntry
from ...pagination import Ordering
from . import cursors

ORDERING = Ordering("id", AuditEntry.id, AuditEntry.id, descending=True)
_CURSOR_KIND = "log"


@dataclass(frozen=True, slots=True)
class EntryPage:
    items: Sequence[AuditEntry]
    next_cursor: str | None


def ensure_may_read(actor: Actor) -> None:
    """The log shows every member's changes: owners and admins only."""
    rules.ensure_settings_role(actor.role, "the audit log")


def filtered(
    actor: Actor,
    *,
    entity_type: str | None = None,
    entity_id: int | None = None,
    actor_user_id: int | None = None,
    action: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> Select[Any]:
    """The actor's organization's entries matching the filters (not ordered); 403 for
    anyone but owners and admins."""
    ensure_may_read(actor)
    stmt = select(AuditEntry).where(AuditEntry.organization_id == actor.organization_id)
    if entity_type is not None:
        stmt = stmt.where(AuditEntry.entity_type == entity_type)
    if entity_id is not None:
        stmt = stmt.where(AuditEntry.entity_id == entity_id)
    if actor_user_id is not None:
        stmt = stmt.where(AuditEntry.actor_user_id == actor_user_id)
    if action is not None:
        stmt = stmt.where(AuditEntry.action == action)
    if since is not None:
        stmt = stmt.where(AuditEntry.occurred_at >= since)
    if until is not None:
        stmt = stmt.where(AuditEntry.occurred_at < until)
    return stmt


def list_entries(
    session: Session,
    actor: Actor,
    secret_key: str,
    *,
    limit: int,
    cursor: str | None = None,
    **filters: Any,
) -> EntryPage:
    """One page, newest first; `next_cursor` while older entries follow."""
    stmt = filtered(actor, **filters).order_by(*ORDERING.clauses())
    if cursor is not None:
        position = cursors.decode(secret_key, _CURSOR_KIND, actor.organization_id, cursor, size=1)
        stmt = stmt.where(ORDERING.after(position))
    rows = list(session.scalars(stmt.limit(limit + 1)))
    items = rows[:limit]
    more = len(rows) > limit
    next_cursor = (
        cursors.encode(secret_key, _CURSOR_KIND, actor.organization_id, [items[-1].id])
        if more
        else None
    )
    return EntryPage(items=items, next_cursor=next_cursor)


def actor_type(entry: AuditEntry) -> str:
    """Who acted: "system" (workers, beat, tools), "api_key" (a user's key) or "user"."""
    if entry.actor_user_id is None:
        return "system"
    return "api_key" if entry.actor_api_key_id is not None else "user"
