"""Celery tasks (registered by name on crm_worker.app.celery_app)."""

from . import timeline

__all__ = ["timeline"]
