"""Beat's purge of the trash: what has been there longer than TRASH_RETENTION_DAYS goes for
good, a small batch per transaction (short locks; rows another run holds are skipped)."""

from __future__ import annotations

import datetime as dt

from crm_domain.services.records import trash

from ..app import celery_app, database, settings

BATCH = 500  # rows per kind per transaction


@celery_app.task(name="crm.trash.purge_expired", acks_late=True)
def purge_expired() -> int:
    """Purge in batches until nothing old enough is left; safe to run any number of times."""
    before = dt.datetime.now(dt.UTC) - dt.timedelta(days=settings.trash_retention_days)
    purged = 0
    while True:
        with database.transaction() as session:
            deleted = trash.purge_expired(session, before=before, batch_size=BATCH)
        purged += deleted
        if deleted == 0:
            return purged
