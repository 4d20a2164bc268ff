"""The purge of a deleted custom field's values: the organization's records walked by id in
batches of PURGE_BATCH, each its own short transaction, then the definition row goes and its
key is free again (a record written meanwhile with the key, by a write that began before the
deletion, makes another pass). Asked for by the outbox
(consumers.CustomFieldPurges); beat re-asks for any left over (a lost message, a crash).

A task runs within the worker's default time limit (a warm shutdown waits for it: compose's
stop_grace_period covers it): past BUDGET_SECONDS it stops between two batches and asks for
another run, which starts over (removing a key that is gone already costs a read)."""

from __future__ import annotations

import logging
import time

from crm_domain.db import Database
from crm_domain.services.records import custom_fields

from ..app import celery_app, database
from ..names import PURGE_CUSTOM_FIELD_TASK
from ..publishing import send_custom_field_purge

log = logging.getLogger(__name__)
MAX_ROUNDS = 3  # whole passes over the records before leaving the rest to beat
# Well inside the default soft time limit (crm_worker.app: 240 s).
BUDGET_SECONDS = 180.0


def run_purge(
    db: Database,
    definition_id: int,
    batch: int = custom_fields.PURGE_BATCH,
    budget: float = BUDGET_SECONDS,
) -> bool:
    """Purge the deleted definition's values and drop it; True once it is gone (or was),
    False when rounds or the time budget ran out first (another run finishes it)."""
    deadline = time.monotonic() + budget
    with db.transaction() as session:
        purge = custom_fields.purge_of(session, definition_id)
    if purge is None:
        return True
    for _ in range(MAX_ROUNDS):
        after: int | None = 0
        while after is not None:
            if time.monotonic() > deadline:
                return False
            with db.transaction() as session:
                after = custom_fields.purge_batch(session, purge, after, batch)
        with db.transaction() as session:
            if custom_fields.finish_purge(session, definition_id, purge):
                return True
    return False


@celery_app.task(name=PURGE_CUSTOM_FIELD_TASK, acks_late=True)
def purge(definition_id: int) -> bool:
    done = run_purge(database, definition_id)
    if not done:
        send_custom_field_purge(definition_id)  # the rest in a run of its own
    return done


@celery_app.task(name="crm.custom_fields.purge_pending", acks_late=True)
def purge_pending() -> int:
    """Beat: a purge for every deleted definition still waiting for one."""
    with database.transaction() as session:
        pending = custom_fields.pending_purges(session)
    for definition_id in pending:
        send_custom_field_purge(definition_id)
    return len(pending)
