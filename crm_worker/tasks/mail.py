"""E-mail (queue "email"): send what the outbound queue holds, and the daily task digest."""

from __future__ import annotations

import logging

from sqlalchemy.exc import OperationalError

from crm_domain.mail import transport
from crm_domain.services.mailing import digests, outbound_email

from ..app import celery_app, database, settings
from ..names import SEND_MAIL_TASK
from ..publishing import send_mail_task

log = logging.getLogger(__name__)


def mail_context() -> outbound_email.MailContext:
    return outbound_email.MailContext(
        secret_key=settings.secret_key,
        public_base_url=settings.mail.public_base_url,
        sender=settings.mail.mail_from,
    )


@celery_app.task(
    name=SEND_MAIL_TASK,
    acks_late=True,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    retry_backoff_max=60,
    max_retries=5,
)
def send_pending() -> int:
    """Send the due e-mails (woken after a commit that queued some, and by beat's sweep);
    failures wait in the table for their next attempt, not in a Celery countdown."""
    result = outbound_email.send_pending(
        database, transport.from_settings(settings.mail), mail_context()
    )
    if result.handled:
        log.info(
            "e-mail: %d sent, %d skipped, %d failed", result.sent, result.skipped, result.failed
        )
    if result.more:
        send_mail_task()
    return result.sent


@celery_app.task(name="crm.email.schedule_digests", acks_late=True)
def schedule_digests() -> int:
    """Beat, once a day: queue each user's digest (a second run the same day queues none)."""
    with database.transaction() as session:
        queued = digests.schedule(session)
    if queued:
        send_mail_task()
    return queued
