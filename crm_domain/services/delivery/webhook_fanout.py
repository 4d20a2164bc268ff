"""Webhook fan-out, an outbox handler: one query per outbox batch finds the enabled endpoints
of the batch's organizations; every (endpoint, event) pair that the endpoint's filter accepts
becomes a delivery row, inserted in one statement with ON CONFLICT DO NOTHING on
(endpoint_id, event_id). An organization without endpoints costs that query only. The body
is made once here and sent byte for byte on every attempt."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from ... import representation
from ...models import OutboxEvent, WebhookDelivery, WebhookEndpoint


def serialize(body: dict[str, Any]) -> str:
    """The text that is signed and sent, byte for byte, on every attempt."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def webhook_body(event: OutboxEvent) -> str:
    return serialize(
        {
            "type": event.topic,
            "timestamp": event.created_at.astimezone(dt.UTC).isoformat(),
            "organization_id": event.organization_id,
            "data": _in_api_order(event.topic, event.payload),
        }
    )


def _in_api_order(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    """The resource's fields in the API's order (JSONB, where the outbox keeps the payload,
    reorders keys), then `changes`."""
    names = representation.FIELDS_BY_KIND.get(event_type.split(".", 1)[0], ())
    ordered = {name: data[name] for name in names if name in data}
    return {**ordered, **{k: v for k, v in data.items() if k not in ordered}}


def subscribed_organizations(session: Session, org_ids: set[int], event_type: str) -> set[int]:
    """Which of `org_ids` have an enabled endpoint that wants `event_type` (one query)."""
    if not org_ids:
        return set()
    return set(
        session.scalars(
            select(WebhookEndpoint.organization_id)
            .where(
                WebhookEndpoint.organization_id.in_(sorted(org_ids)),
                WebhookEndpoint.enabled.is_(True),
                (func.cardinality(WebhookEndpoint.event_types) == 0)
                | WebhookEndpoint.event_types.contains([event_type]),
            )
            .distinct()
        )
    )


def fan_out_endpoints(session: Session, batch: Sequence[OutboxEvent]) -> set[int]:
    """Write a delivery for every (enabled endpoint, event it subscribes to) of the batch;
    returns the endpoints that got deliveries. One SELECT, and one INSERT if anything
    matched."""
    org_ids = {ev.organization_id for ev in batch}
    if not org_ids:
        return set()
    endpoints = session.execute(
        select(
            WebhookEndpoint.id, WebhookEndpoint.organization_id, WebhookEndpoint.event_types
        ).where(
            WebhookEndpoint.organization_id.in_(sorted(org_ids)),
            WebhookEndpoint.enabled.is_(True),
        )
    ).all()
    if not endpoints:
        return set()
    by_org: dict[int, list[tuple[int, frozenset[str]]]] = {}
    for endpoint_id, org_id, types in endpoints:
        by_org.setdefault(org_id, []).append((endpoint_id, frozenset(types)))
    rows: list[dict[str, Any]] = []
    for ev in batch:
        targets = [
            endpoint_id
            for endpoint_id, types in by_org.get(ev.organization_id, ())
            if not types or ev.topic in types
        ]
        if not targets:
            continue
        body = webhook_body(ev)
        rows.extend(
            {
                "organization_id": ev.organization_id,
                "endpoint_id": endpoint_id,
                "event_id": ev.event_key,
                "event_type": ev.topic,
                "body": body,
            }
            for endpoint_id in targets
        )
    if rows:
        session.execute(
            insert(WebhookDelivery).on_conflict_do_nothing(
                index_elements=[WebhookDelivery.endpoint_id, WebhookDelivery.event_id]
            ),
            rows,
        )
    return {row["endpoint_id"] for row in rows}


def fan_out(session: Session, batch: Sequence[OutboxEvent]) -> None:
    fan_out_endpoints(session, batch)
