"""Celery tasks, registered by explicit name on crm_worker.app.celery_app."""

from . import (
    analytics,
    audit,
    bulk_actions,
    custom_fields,
    idempotency,
    imports,
    mail,
    outbox,
    reminders,
    reports,
    trash,
    webhooks,
)

__all__ = [
    "analytics",
    "audit",
    "bulk_actions",
    "custom_fields",
    "idempotency",
    "imports",
    "mail",
    "outbox",
    "reminders",
    "reports",
    "trash",
    "webhooks",
]
