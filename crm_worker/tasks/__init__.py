"""Celery tasks, registered by explicit name on crm_worker.app.celery_app."""

from . import analytics, imports, outbox, reminders, reports

__all__ = ["analytics", "imports", "outbox", "reminders", "reports"]
