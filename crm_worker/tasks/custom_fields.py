"""The purge of a deleted custom field's values: the organization's records walked by id in
batches of PURGE_BATCH, each its own short transaction, then the definition row goes and its
key is free again (a record written meanwhile with the key, by a write that began before the
deletion, makes another pass). Asked for by the outbox
(consumers.CustomFieldPurges); beat re-asks for any left over (a lost message, a crash)."""

from __future__ import annotations

import logging

from crm_domain.db import Database
from crm_domain.services.records import custom_fields

from ..app import celery_app, database
from ..names import PURGE_CUSTOM_FIELD_TASK
from ..publishing import send_custom_field_purge

log = logging.getLogger(__name__)
MAX_ROUNDS = 3  # whole passes over the records before leaving the rest to beat


def run_purge(db: Database, definition_id: int, batch: int = custom_fields.PURGE_BATCH) -> bool:
    """Purge the deleted definition's values and drop it; True once it is gone (or was)."""
    with db.transaction() as session:
        purge = custom_fields.purge_of(session, definition_id)
    if purge is None:
        return True
    for _ in range(MAX_ROUNDS):
        after: int | None = 0
        while after is not None:
            with db.transaction() as session:
                after = custom_fields.purge_batch(session, purge, after, batch)
        with db.transaction() as session:
            if custom_fields.finish_purge(session, definition_id, purge):
                return True
    return False


@celery_app.task(
    name=PURGE_CUSTOM_FIELD_TASK, acks_late=True, time_limit=3600, soft_time_limit=3500
)
def purge(definition_id: int) -> bool:
    return run_purge(database, definition_id)


@celery_app.task(name="crm.custom_fields.purge_pending", acks_late=True)
def purge_pending() -> int:
    """Beat: a purge for every deleted definition still waiting for one."""
    with database.transaction() as session:
        pending = custom_fields.pending_purges(session)
    for definition_id in pending:
        send_custom_field_purge(definition_id)
    return len(pending)
