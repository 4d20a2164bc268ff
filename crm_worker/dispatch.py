"""How committed outbox events are delivered: through Celery, or inline (tests, tools)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import redis

from crm_domain.db import Database, Publisher
from crm_domain.services import outbox
from crm_domain.services.analytics_cache import AnalyticsCache

log = logging.getLogger(__name__)

DELIVER_TASK = "crm.outbox.deliver"
REFRESH_TASK = "crm.analytics.refresh"
REFRESH_DELAY_SECONDS = 0.3

OnDealChanged = Callable[[int], None]


def deliver_event(db: Database, event_id: int, on_deal_changed: OnDealChanged) -> bool:
    """Deliver one event in its own transaction. A deal change asks for an analytics refresh
    before the commit, so a failure to ask leaves the event pending for another try."""
    with db.transaction() as session:
        ev = outbox.deliver(
            session,
            event_id,
            {outbox.DEAL_CHANGED_TOPIC: lambda _s, ev: on_deal_changed(ev.organization_id)},
        )
        return ev is not None


def celery_publisher(ids: Sequence[int]) -> None:
    """Enqueue one delivery task per event; fails fast when the broker is down."""
    from .app import celery_app

    for event_id in ids:
        celery_app.send_task(DELIVER_TASK, args=[event_id], retry=False)


def schedule_refresh(cache: AnalyticsCache, organization_id: int) -> None:
    """Debounced: at most one refresh is scheduled per organization at a time."""
    from .app import celery_app

    if cache.claim_refresh(organization_id):
        celery_app.send_task(
            REFRESH_TASK, args=[organization_id], countdown=REFRESH_DELAY_SECONDS, retry=False
        )


def inline_publisher(db: Database, cache: AnalyticsCache) -> Publisher:
    """Deliver right after the commit, in-process, refreshing analytics synchronously."""

    def refresh_now(organization_id: int) -> None:
        try:
            cache.refresh(organization_id)
        except redis.RedisError:
            log.warning("analytics refresh skipped: Redis unavailable", exc_info=True)

    def publish(ids: Sequence[int]) -> None:
        for event_id in ids:
            deliver_event(db, event_id, refresh_now)

    return publish
