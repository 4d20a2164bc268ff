"""The audit log as CSV (GET /audit-log/export.csv): the log's filters and order, streamed
in keyset batches like the other exports (crm_domain.services.transfer.exports)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from ...context import Actor
from ...models import AuditEntry
from ..auditing import log
from .exports import Export

COLUMNS = (
    "id",
    "occurred_at",
    "actor_type",
    "actor_user_id",
    "actor_api_key_id",
    "request_id",
    "action",
    "entity_type",
    "entity_id",
    "changes",
)


def audit_log_export(actor: Actor, **filters: Any) -> Export:
    """Checks the caller's role now (owners and admins), before the download starts."""
    return Export(COLUMNS, log.filtered(actor, **filters), log.ORDERING, _rows)


def _rows(_session: Session, items: Sequence[AuditEntry]) -> list[list[Any]]:
    return [
        [
            e.id,
            e.occurred_at.isoformat(),
            log.actor_type(e),
            e.actor_user_id,
            e.actor_api_key_id,
            e.request_id,
            e.action,
            e.entity_type,
            e.entity_id,
            json.dumps(e.changes, separators=(",", ":"), sort_keys=True),
        ]
        for e in items
    ]
