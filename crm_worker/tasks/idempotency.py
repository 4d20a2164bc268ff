"""Beat's purge of expired idempotency records (their keys may be used afresh anyway: an
expired row is taken over by the next claim; this only keeps the table small)."""

from __future__ import annotations

from crm_domain import idempotency

from ..app import celery_app, database

BATCH = 1000  # rows per transaction: short locks, steady progress


@celery_app.task(name="crm.idempotency.purge_expired", acks_late=True)
def purge_expired() -> int:
    """Delete expired records in batches until none is left; safe to run any number of times."""
    purged = 0
    while True:
        with database.transaction() as session:
            deleted = idempotency.purge_expired(session, batch=BATCH)
        purged += deleted
        if deleted < BATCH:
            return purged
