"""Beat's purge of audit entries older than AUDIT_RETENTION_DAYS, in batches."""

from __future__ import annotations

import datetime as dt

from crm_domain.services.auditing import retention

from ..app import celery_app, database, settings

BATCH = 1000  # rows per transaction: short locks, steady progress


@celery_app.task(name="crm.audit.purge_expired", acks_late=True)
def purge_expired(batch: int = BATCH) -> int:
    """Delete expired entries in batches until none is left; safe to run any number of times."""
    older_than = dt.datetime.now(dt.UTC) - dt.timedelta(days=settings.audit_retention_days)
    purged = 0
    while True:
        with database.transaction() as session:
            deleted = retention.purge_batch(session, older_than=older_than, batch=batch)
        purged += deleted
        if deleted < batch:
            return purged
