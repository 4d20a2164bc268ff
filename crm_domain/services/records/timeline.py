"""A deal's timeline written through the outbox: a change records a `timeline.activity` event
(`record_activity`) in its own transaction, and delivery turns the events into activities
(`apply_activities`, registered for the topic at the composition root), each exactly once.
Comments are written directly by the API (services.records.activities)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from ... import audit, request_id
from ...enums import ActivityType
from ...models import Activity, Deal, OutboxEvent
from ...trashable import INCLUDE_TRASHED
from ..delivery import events as domain_events
from ..delivery import outbox, webhook_fanout

TIMELINE_TOPIC = "timeline.activity"  # {deal_id, author_id, type, payload} -> an activity


def record_activity(
    session: Session,
    *,
    organization_id: int,
    deal_id: int,
    author_id: int | None,
    type: ActivityType,
    payload: dict[str, Any],
) -> None:
    outbox.record(
        session,
        organization_id,
        TIMELINE_TOPIC,
        {"deal_id": deal_id, "author_id": author_id, "type": type.value, "payload": payload},
    )


def apply_activities(session: Session, events: Sequence[OutboxEvent]) -> None:
    """Write the timeline entries in one statement; the event key makes a second delivery
    write nothing. Events of deals deleted before delivery have nothing to attach to. Each
    entry written records its `activity.created` event where a webhook endpoint wants it, with
    the request id of the timeline event it came from."""
    wanted = {(ev.payload["deal_id"], ev.organization_id) for ev in events}
    existing = {
        (deal_id, org_id)
        for deal_id, org_id in session.execute(
            select(Deal.id, Deal.organization_id)
            .where(tuple_(Deal.id, Deal.organization_id).in_(list(wanted)))
            .execution_options(**INCLUDE_TRASHED)  # a trashed deal's timeline goes on
        )
    }
    rows = []
    for ev in events:
        data = ev.payload
        if (data["deal_id"], ev.organization_id) not in existing:
            ev.last_error = "deal no longer exists"
            continue
        rows.append(
            {
                "organization_id": ev.organization_id,
                "deal_id": data["deal_id"],
                "author_id": data.get("author_id"),
                "type": ActivityType(data["type"]),
                "payload": data.get("payload", {}),
                "event_key": ev.event_key,
                "created_at": ev.created_at,
            }
        )
    if not rows:
        return
    written = session.connection().execute(
        pg_insert(Activity)
        .on_conflict_do_nothing(index_elements=["event_key"])
        .returning(Activity.id, Activity.event_key),
        rows,
    )
    ids = {event_key: activity_id for activity_id, event_key in written}
    # `activity.created` exists for webhooks only: recorded where an endpoint wants it, so
    # an organization without one costs no second delivery pass.
    wanted_by = webhook_fanout.subscribed_organizations(
        session, {row["organization_id"] for row in rows}, domain_events.ACTIVITY_CREATED
    )
    request_ids = {ev.event_key: ev.request_id for ev in events}
    for row in rows:
        if row["event_key"] in ids and row["organization_id"] in wanted_by:
            entry = Activity(**row, id=ids[row["event_key"]])  # transient: only dumped
            # The request behind it; audited already as the deal's change.
            with request_id.bound(request_ids[row["event_key"]]), audit.derived():
                domain_events.record_created(session, "activity", entry)
