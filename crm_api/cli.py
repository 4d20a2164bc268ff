"""`flask --app wsgi crm …`: run the background jobs now, in this process, without a broker.

Handy in development (`make run` picks a new embedded Redis port each time, so `celery call`
is awkward) and for operators: every job is idempotent, so running one by hand next to the
scheduled one does no harm."""

from __future__ import annotations

import datetime as dt

import click
from flask import current_app
from flask.cli import AppGroup
from sqlalchemy import select

from crm_domain.db import Database
from crm_domain.models import Organization
from crm_domain.services.delivery import outbox
from crm_domain.services.records import reminders
from crm_domain.services.reporting import reports
from crm_domain.services.reporting.analytics_cache import AnalyticsCache

crm = AppGroup("crm", help="Run the CRM's background jobs now, in this process.")


def _db() -> Database:
    db: Database = current_app.extensions["crm_db"]
    return db


@crm.command("reminders")
def run_reminders() -> None:
    """Write today's deadline reminders (one per open due task per day)."""
    click.echo(f"reminders written: {reminders.send_all_due(_db())}")


@crm.command("reports")
@click.option("--weekly", is_flag=True, help="Create last week's report for every organization.")
def run_reports(weekly: bool) -> None:
    """Build every pending report (with --weekly: create last week's first)."""
    db = _db()
    if weekly:
        with db.transaction() as session:
            click.echo(f"weekly reports created: {reports.schedule_weekly(session)}")
    with db.transaction() as session:
        pending = reports.pending_ids(session, older_than=dt.timedelta(0))
    for report_id in pending:
        with db.transaction() as session:
            reports.build(session, report_id)
    click.echo(f"reports built: {len(pending)}")


@crm.command("refresh-analytics")
@click.option("--org", "org_id", type=int, help="Only this organization.")
def refresh_analytics(org_id: int | None) -> None:
    """Recompute the precomputed analytics in Redis."""
    cache: AnalyticsCache = current_app.extensions["crm_analytics"]
    with _db().transaction() as session:
        ids = [org_id] if org_id else list(session.scalars(select(Organization.id)))
    for organization_id in ids:
        cache.refresh(organization_id)
    click.echo(f"organizations refreshed: {len(ids)}")


@crm.command("drain-outbox")
def drain_outbox() -> None:
    """Deliver every pending outbox event now (timeline entries, analytics, reports)."""
    from crm_worker.consumers import inline_publisher

    db = _db()
    publish = inline_publisher(db, current_app.extensions["crm_analytics"])
    while True:
        publish()  # one delivery pass (capped); repeat until nothing deliverable is left
        with db.transaction() as session:
            if outbox.oldest_pending_age(session) is None:
                break
    with db.transaction() as session:
        click.echo(f"outbox drained; parked after repeated failures: {outbox.stuck_count(session)}")
