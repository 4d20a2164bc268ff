"""How committed outbox events reach the delivery task."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from crm_domain.db import Database
from crm_domain.services import outbox

log = logging.getLogger(__name__)

DELIVER_TASK = "crm.timeline.deliver"


def celery_publisher(ids: Sequence[int]) -> None:
    """Enqueue one delivery task per event; never blocks long when the broker is down."""
    from .app import celery_app

    for event_id in ids:
        celery_app.send_task(DELIVER_TASK, args=[event_id], retry=False)


def deliver_now(db: Database, ids: Sequence[int]) -> int:
    """Deliver events synchronously, each in its own transaction (used inline and by tests)."""
    delivered = 0
    for event_id in ids:
        with db.transaction() as session:
            delivered += outbox.deliver(session, event_id)
    return delivered


def inline_publisher(db: Database) -> outbox.Publisher:
    def publish(ids: Sequence[int]) -> None:
        deliver_now(db, ids)

    return publish
