"""Webhook deliveries, on their own queue ("webhooks", see task_routes in crm_worker.app):
one task per endpoint, so a slow or dead receiver holds one worker slot at most, and beat's
sweep as the safety net for everything due (retries included: no countdowns on the broker)."""

from __future__ import annotations

from crm_domain.services.delivery import webhook_leases

from ..app import celery_app, database, settings, webhook_sender
from ..names import SEND_WEBHOOKS_TASK, SWEEP_WEBHOOKS_TASK
from ..publishing import send_webhooks
from ..webhook_sender import policy_from, run_endpoint


@celery_app.task(name=SEND_WEBHOOKS_TASK, acks_late=True, reject_on_worker_lost=True)
def send(endpoint_id: int) -> int:
    """Send this endpoint's due deliveries; requeue it behind the others if more are due.
    Nothing to retry here: a run that fails (the database is away) leaves its deliveries due,
    and beat's sweep asks again."""
    run = run_endpoint(database, endpoint_id, webhook_sender(), policy_from(settings))
    if run.more_due:
        send_webhooks([endpoint_id])
    return run.sent


@celery_app.task(name=SWEEP_WEBHOOKS_TASK, acks_late=True)
def sweep() -> int:
    """Beat: a send task for every endpoint with a due delivery that no sender holds (first
    attempts whose wake-up was lost, retries whose time has come, leases of dead senders)."""
    with database.transaction() as session:
        endpoint_ids = webhook_leases.due_endpoints(session)
    send_webhooks(endpoint_ids, expires=max(settings.webhook_dispatch_seconds * 2, 10.0))
    return len(endpoint_ids)
