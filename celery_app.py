"""Celery entry point: `celery -A celery_app worker|beat|flower`."""

from crm_worker.app import celery_app

app = celery_app

__all__ = ["app", "celery_app"]
