"""Pipeline reports: built on the bulk queue (weekly ones and on-demand ones alike)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy.exc import OperationalError

from crm_domain.services.reporting import reports

from ..app import celery_app, database
from ..names import REPORT_BUILD_TASK
from ..publishing import send_report_build

# A report still pending after this long lost its build task (a broker outage): send again.
RESEND_AFTER = dt.timedelta(minutes=2)


@celery_app.task(
    name=REPORT_BUILD_TASK,
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    max_retries=5,
)
def build(report_id: int) -> None:
    """Idempotent: a report that is already ready is left as it is. A failed build is
    counted on the report (parked as failed after MAX_BUILD_ATTEMPTS); an outage retries."""
    reports.build_or_park(database, report_id)


@celery_app.task(name="crm.reports.schedule_weekly", acks_late=True)
def schedule_weekly() -> int:
    """Beat (Mondays): create last week's report for every organization, once."""
    with database.transaction() as session:
        return reports.schedule_weekly(session)


@celery_app.task(name="crm.reports.resend_pending", acks_late=True)
def resend_pending() -> int:
    """Beat's safety net for build tasks that never ran."""
    with database.transaction() as session:
        ids = reports.pending_ids(session, older_than=RESEND_AFTER)
    for report_id in ids:
        send_report_build(report_id)
    return len(ids)
