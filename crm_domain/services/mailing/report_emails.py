"""The weekly pipeline report by e-mail: when a weekly report is ready (outbox topic
`report.ready`), each owner and admin of the organization gets it: the summary, the funnel as
a bar chart (HTML table cells, no images, so every mail client draws it) and the overdue
tasks, with a plain-text version of all three."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ...enums import DealStatus, Role
from ...mail.render import Content, render
from ...models import Organization, OrganizationMember, OutboundEmail, OutboxEvent, Report, User
from ..records import organizations
from . import outbound_email

EMAIL_KIND = "weekly_report"
RECIPIENT_ROLES = (Role.OWNER, Role.ADMIN)
OVERDUE_SHOWN = 20
TEXT_BAR_WIDTH = 30
STATUS_LABELS = {
    DealStatus.NEW.value: "New",
    DealStatus.IN_PROGRESS.value: "In progress",
    DealStatus.WON.value: "Won",
    DealStatus.LOST.value: "Lost",
}


def queue_emails(session: Session, events: Sequence[OutboxEvent]) -> None:
    """Outbox handler for `report.ready`: one e-mail per weekly report and owner/admin (keyed
    by event and user); on-demand reports are only for whoever asked."""
    events = [ev for ev in events if ev.payload.get("kind") == "weekly"]
    if not events:
        return
    org_ids = {ev.organization_id for ev in events}
    recipients: dict[int, list[tuple[int, str]]] = {}
    for org_id, user_id, email in session.execute(
        select(OrganizationMember.organization_id, User.id, User.email)
        .join(User, User.id == OrganizationMember.user_id)
        .where(
            OrganizationMember.organization_id.in_(org_ids),
            OrganizationMember.role.in_(RECIPIENT_ROLES),
        )
        .order_by(User.id)
    ):
        recipients.setdefault(org_id, []).append((user_id, email))
    outbound_email.enqueue(
        session,
        [
            {
                "dedupe_key": f"report:{ev.event_key}:{user_id}",
                "kind": EMAIL_KIND,
                "organization_id": ev.organization_id,
                "user_id": user_id,
                "to_address": email,
                "params": {"report_id": ev.payload["id"]},
            }
            for ev in events
            for user_id, email in recipients.get(ev.organization_id, [])
        ],
    )


def funnel_bars(funnel: dict[str, Any]) -> list[dict[str, Any]]:
    """Each stage's bar: `reached` as a percentage of the widest stage, and a text bar."""
    stages = funnel["stages"]
    widest = max((stage["reached"] for stage in stages), default=0)
    bars = []
    for stage in stages:
        percent = round(stage["reached"] * 100 / widest) if widest else 0
        filled = round(percent * TEXT_BAR_WIDTH / 100)
        bars.append(
            {
                "stage": stage["stage"],
                "label": stage["stage"].replace("_", " ").capitalize(),
                "reached": stage["reached"],
                "count": stage["count"],
                "conversion": stage["conversion_from_previous"],
                "percent": percent,
                "text_bar": "#" * filled + "." * (TEXT_BAR_WIDTH - filled),
            }
        )
    return bars


def _status_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for status, label in STATUS_LABELS.items():
        amounts = [
            f"{currency} {block[status]['total_amount']}"
            for currency, block in summary["by_currency"].items()
            if block[status]["count"]
        ]
        rows.append(
            {
                "label": label,
                "count": summary["by_status"][status]["count"],
                "amounts": ", ".join(amounts) or "-",
            }
        )
    return rows


def report_context(report: Report, organization: str) -> dict[str, Any]:
    data = report.data or {}
    overdue = data["overdue_tasks"]
    bars = funnel_bars(data["funnel"])
    return {
        "organization": organization,
        "report_id": report.id,
        "period_start": data["period"]["start"],
        "period_end": data["period"]["end"],
        "total_deals": data["summary"]["total_deals"],
        "new_deals": data["summary"]["new_deals_last_n_days"],
        "statuses": _status_rows(data["summary"]),
        "funnel": bars,
        "funnel_label": "Deal funnel: "
        + ", ".join(f"{bar['label']} {bar['reached']}" for bar in bars),
        "overdue": overdue["items"][:OVERDUE_SHOWN],
        "overdue_total": overdue["total"],
        "overdue_more": overdue["total"] - min(len(overdue["items"]), OVERDUE_SHOWN),
    }


def compose_email(
    session: Session, row: OutboundEmail, context: outbound_email.MailContext
) -> Content | None:
    report = session.get(Report, row.params["report_id"])
    if report is None or report.status != "ready" or report.data is None:
        return None
    if row.user_id is not None:  # no longer an owner or admin: not theirs to read any more
        role = organizations.role_in(session, report.organization_id, row.user_id)
        if role not in RECIPIENT_ROLES:
            return None
    org = session.get(Organization, report.organization_id)
    assert org is not None
    values = report_context(report, org.name)
    subject = (
        f"Weekly pipeline report: {org.name}, {values['period_start']} to {values['period_end']}"
    )
    return render("weekly_report", subject, **values)
