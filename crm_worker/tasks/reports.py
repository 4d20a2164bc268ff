"""Weekly pipeline reports (built through the outbox like on-demand ones)."""

from __future__ import annotations

from crm_domain.services import reports

from ..app import celery_app, database


@celery_app.task(name="crm.reports.schedule_weekly", acks_late=True)
def schedule_weekly() -> int:
    """Beat (Mondays): create last week's report for every organization, once."""
    with database.transaction() as session:
        return reports.schedule_weekly(session)
