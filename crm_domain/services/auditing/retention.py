"""Retention: entries older than AUDIT_RETENTION_DAYS are deleted by beat, in batches (short
transactions, steady progress; crm_worker.tasks.audit)."""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

from sqlalchemy import CursorResult, delete, select
from sqlalchemy.orm import Session

from ...models import AuditEntry


def purge_batch(session: Session, *, older_than: dt.datetime, batch: int) -> int:
    """Delete up to `batch` entries that occurred before `older_than`; how many went."""
    doomed = (
        select(AuditEntry.id)
        .where(AuditEntry.occurred_at < older_than)
        .limit(batch)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    result = cast(
        CursorResult[Any],
        session.execute(
            delete(AuditEntry)
            .where(AuditEntry.id.in_(doomed))
            .execution_options(synchronize_session=False)
        ),
    )
    return result.rowcount or 0
