"""Precompute each organization's analytics into Redis."""

from __future__ import annotations

import logging
from typing import Any

import redis
from sqlalchemy import select

from crm_domain.models import Organization

from ..app import analytics_cache, celery_app, database
from ..dispatch import TRANSIENT_ERRORS
from ..names import REFRESH_TASK, SWEEP_STALE_TASK
from ..observability import ANALYTICS_REFRESH, FREQUENT_TASK
from ..publishing import schedule_refresh

log = logging.getLogger(__name__)

# A refresh rides out an outage of the database or Redis of about five minutes: retries
# after 1, 2, 4 and then at most 5 s (Celery's full jitter: a random part of that, 2.5 s on
# average; 120 retries), so the figures are right within seconds of the database's return.
# A refresh that gives up leaves its organization marked stale; beat's sweep asks again.
REFRESH_RETRY: dict[str, Any] = {
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": 1,
    "retry_backoff_max": 5,
    "retry_jitter": True,
    "max_retries": 120,
}
# The sweep asks again for organizations still marked stale this long after their refresh
# was last asked for (normally a refresh clears its mark within a second).
STALE_AFTER_SECONDS = 60.0


@celery_app.task(
    name=REFRESH_TASK, acks_late=True, reject_on_worker_lost=True, **REFRESH_RETRY, **FREQUENT_TASK
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


@celery_app.task(name=SWEEP_STALE_TASK, acks_late=True)
def sweep_stale() -> int:
    """Beat: ask again for the refreshes that were asked for and never succeeded (they gave
    up during a long outage, or their task was lost). Reads Redis only; while the database's
    identity cannot be read (an outage) there is nothing to do yet."""
    cache = analytics_cache()
    try:
        org_ids = cache.stale_organizations(STALE_AFTER_SECONDS)
        for org_id in org_ids:
            schedule_refresh(cache, org_id)
    except redis.RedisError as exc:  # includes DerivedDataUnavailable (database away)
        log.info("stale analytics not swept (%s); the next sweep tries again", exc)
        return 0
    if org_ids:
        log.info("asked again for the analytics of %d stale organizations", len(org_ids))
    return len(org_ids)
