"""Deadline reminders for open tasks due today or overdue."""

from __future__ import annotations

from crm_domain.services.records import reminders

from ..app import celery_app, database
from ..observability import REMINDERS_SENT


@celery_app.task(name="crm.reminders.send_due", acks_late=True)
def send_due() -> int:
    """Beat: one reminder per task per day, in batches; safe to run any number of times."""
    written = reminders.send_all_due(database)
    REMINDERS_SENT.inc(written)
    return written
