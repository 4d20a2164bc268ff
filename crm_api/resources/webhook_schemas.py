"""What the webhook routes take and answer: the endpoint and delivery schemas, their fields
and documented examples."""

from __future__ import annotations

from typing import Any

from marshmallow import fields, validate

from crm_domain.services.delivery import events
from crm_domain.services.delivery import webhooks as service

from ..schemas import PageArgs, Schema, SingleLine, line_field

EVENT_TYPES_DESCRIPTION = (
    "Event types to receive; omitted or empty: every type, including types added later. "
    "Known types: " + ", ".join(events.EVENT_TYPES)
)
SECRET_DESCRIPTION = (
    "The signing secret: `whsec_` + base64 of 32 random bytes. Shown only in the answers to "
    "the creation and to rotate-secret; store it then."
)

ENDPOINT_EXAMPLE = {
    "id": 3,
    "organization_id": 1,
    "url": "https://hooks.example.com/crm",
    "description": "Sync deals to the data warehouse",
    "event_types": ["deal.created", "deal.status_changed"],
    "enabled": True,
    "disabled_reason": None,
    "disabled_at": None,
    "failing_since": None,
    "created_at": "2026-03-02T09:15:00.123456+00:00",
    "updated_at": "2026-03-02T09:15:00.123456+00:00",
}
SECRET_EXAMPLE = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw9gn5b5GzXoY="
DELIVERY_EXAMPLE = {
    "id": 812,
    "endpoint_id": 3,
    "event_id": "9a1f0c52-7d0e-4a6b-9a56-2f1f0b7c3e11",
    "event_type": "deal.status_changed",
    "status": "pending",
    "attempts": 2,
    "next_attempt_at": "2026-03-02T09:20:07.000000+00:00",
    "last_attempt_at": "2026-03-02T09:15:06.000000+00:00",
    "last_status_code": 500,
    "last_response_body": '{"error": "database is down"}',
    "last_error": "HTTP 500",
    "created_at": "2026-03-02T09:15:00.123456+00:00",
    "delivered_at": None,
}


event_types_field = fields.List(
    fields.String(validate=validate.OneOf(events.EVENT_TYPES)),
    validate=validate.Length(max=len(events.EVENT_TYPES)),
    metadata={"description": EVENT_TYPES_DESCRIPTION, "example": ["deal.created"]},
)


def url_field(**kwargs: Any) -> fields.String:
    return fields.String(
        validate=[validate.Length(min=1, max=2048), SingleLine()],
        metadata={
            "description": "http or https; its host must resolve to public addresses only "
            "(unless the server runs with WEBHOOKS_ALLOW_PRIVATE=true)",
            "example": "https://hooks.example.com/crm",
        },
        **kwargs,
    )


description_field = line_field(500, allow_none=True)


class WebhookEndpointSchema(Schema):
    id = fields.Integer(dump_only=True)
    organization_id = fields.Integer(dump_only=True)
    url = fields.String(dump_only=True)
    description = fields.String(dump_only=True, allow_none=True)
    event_types = fields.List(
        fields.String(), dump_only=True, metadata={"description": "empty: every event type"}
    )
    enabled = fields.Boolean(dump_only=True)
    disabled_reason = fields.String(
        dump_only=True,
        allow_none=True,
        metadata={"description": "why the endpoint is disabled (by a user, or automatically)"},
    )
    disabled_at = fields.DateTime(dump_only=True, allow_none=True)
    failing_since = fields.DateTime(
        dump_only=True,
        allow_none=True,
        metadata={"description": "first failed attempt since the last successful delivery"},
    )
    created_at = fields.DateTime(dump_only=True)
    updated_at = fields.DateTime(dump_only=True)


class WebhookEndpointWithSecretSchema(WebhookEndpointSchema):
    secret = fields.String(dump_only=True, metadata={"description": SECRET_DESCRIPTION})


class WebhookEndpointCreateSchema(Schema):
    url = url_field(required=True)
    event_types = event_types_field
    description = description_field
    enabled = fields.Boolean(load_default=True)


class WebhookEndpointUpdateSchema(Schema):
    url = url_field()
    event_types = event_types_field
    description = description_field
    enabled = fields.Boolean(
        metadata={"description": "true re-enables an endpoint (its failure record starts over)"}
    )


class WebhookDeliverySchema(Schema):
    id = fields.Integer(dump_only=True)
    endpoint_id = fields.Integer(dump_only=True)
    event_id = fields.String(
        dump_only=True, metadata={"description": "the `webhook-id` header of every attempt"}
    )
    event_type = fields.String(dump_only=True)
    status = fields.String(
        dump_only=True, metadata={"description": "pending | succeeded | failed (out of attempts)"}
    )
    attempts = fields.Integer(dump_only=True)
    next_attempt_at = fields.DateTime(
        dump_only=True, allow_none=True, metadata={"description": "next retry (pending only)"}
    )
    last_attempt_at = fields.DateTime(dump_only=True, allow_none=True)
    last_status_code = fields.Integer(dump_only=True, allow_none=True)
    last_response_body = fields.String(
        dump_only=True,
        allow_none=True,
        metadata={"description": f"the receiver's answer, cut at {service.RESPONSE_BODY_LIMIT}"},
    )
    last_error = fields.String(dump_only=True, allow_none=True)
    created_at = fields.DateTime(dump_only=True)
    delivered_at = fields.DateTime(dump_only=True, allow_none=True)


class DeliveryListArgs(PageArgs):
    status = fields.String(validate=validate.OneOf(service.DELIVERY_STATUSES))
