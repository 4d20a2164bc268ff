"""Precompute each organization's analytics into Redis."""

from __future__ import annotations

import redis
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from crm_domain.models import Organization

from ..app import analytics_cache, celery_app, database
from ..names import REFRESH_TASK
from ..observability import ANALYTICS_REFRESH
from ..publishing import schedule_refresh


@celery_app.task(
    name=REFRESH_TASK,
    acks_late=True,
    autoretry_for=(OperationalError, redis.RedisError),
    retry_backoff=True,
    max_retries=5,
)
def refresh(organization_id: int) -> bool:
    """Recompute one organization (changes after this point schedule another refresh)."""
    cache = analytics_cache()
    cache.release_refresh(organization_id)
    with ANALYTICS_REFRESH.time():
        return cache.refresh(organization_id)


@celery_app.task(name="crm.analytics.refresh_all", acks_late=True)
def refresh_all() -> int:
    """Beat: refresh every organization (debounced with the per-change refreshes)."""
    with database.transaction() as session:
        org_ids = session.scalars(select(Organization.id).order_by(Organization.id)).all()
    cache = analytics_cache()
    for org_id in org_ids:
        schedule_refresh(cache, org_id)
    return len(org_ids)
