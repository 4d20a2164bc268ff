"""Outbound webhook endpoints and their deliveries (owner and admin only)."""

from __future__ import annotations

from typing import Any

from flask import current_app
from flask.views import MethodView
from marshmallow import fields, validate

from crm_domain.services import events
from crm_domain.services import webhooks as service

from ..extensions import Blueprint, current_actor, if_match_precondition, transaction, with_etag
from ..schemas import PageArgs, Schema, SingleLine, line_field, page_of

blp = Blueprint(
    "webhooks",
    __name__,
    url_prefix="/webhooks",
    description=(
        "Outbound webhooks (Standard Webhooks): endpoints receive the organization's events, "
        "signed with the endpoint's secret. Owner and admin only."
    ),
)

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


def _page_example(item: dict[str, Any]) -> dict[str, Any]:
    return {
        "items": [item],
        "total": 1,
        "page": 1,
        "page_size": 20,
        "pages": 1,
        "next_cursor": None,
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


schema = WebhookEndpointSchema()


def _allow_private() -> bool:
    return bool(current_app.extensions["crm_settings"].webhooks_allow_private)


@blp.route("")
class WebhookEndpoints(MethodView):
    @blp.tenant_required
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, page_of(WebhookEndpointSchema), example=_page_example(ENDPOINT_EXAMPLE))
    def get(self, args: dict[str, Any]) -> Any:
        """The organization's webhook endpoints, newest first (secrets are never listed)"""
        with transaction() as session:
            return service.list_endpoints(session, current_actor(), PageArgs.page_request(args))

    @blp.tenant_required
    @blp.arguments(
        WebhookEndpointCreateSchema,
        example={
            "url": "https://hooks.example.com/crm",
            "event_types": ["deal.created", "deal.status_changed"],
            "description": "Sync deals to the data warehouse",
        },
    )
    @blp.response(
        201,
        WebhookEndpointWithSecretSchema,
        example={**ENDPOINT_EXAMPLE, "secret": SECRET_EXAMPLE},
    )
    @blp.alt_response(409, description="The organization has 20 endpoints already")
    def post(self, data: dict[str, Any]) -> Any:
        """Register an endpoint; the answer carries its signing secret, shown this once.

        The URL must be http(s) and resolve to public addresses only (400
        `WEBHOOK_URL_INVALID` / `WEBHOOK_URL_FORBIDDEN`)."""
        with transaction() as session:
            return service.create_endpoint(
                session, current_actor(), allow_private=_allow_private(), **data
            )


@blp.route("/<int:endpoint_id>")
class WebhookEndpointById(MethodView):
    @blp.tenant_required
    @blp.response(
        200,
        WebhookEndpointSchema,
        headers={"ETag": {"schema": {"type": "string"}}},
        example=ENDPOINT_EXAMPLE,
    )
    @blp.alt_response(404, description="Not found in this organization")
    def get(self, endpoint_id: int) -> Any:
        """One endpoint, with why it is disabled if it is (never its secret)"""
        with transaction() as session:
            return with_etag(service.get_endpoint(session, current_actor(), endpoint_id), schema)

    @blp.tenant_required
    @blp.arguments(WebhookEndpointUpdateSchema, example={"enabled": True})
    @blp.response(200, WebhookEndpointSchema, example=ENDPOINT_EXAMPLE)
    @blp.alt_response(404, description="Not found in this organization")
    @blp.alt_response(412, description="If-Match does not match the current ETag")
    def patch(self, data: dict[str, Any], endpoint_id: int) -> Any:
        """Change the URL, event types, description, or enable/disable the endpoint"""
        with transaction() as session:
            endpoint = service.update_endpoint(
                session,
                current_actor(),
                endpoint_id,
                data,
                if_match_precondition(schema),
                allow_private=_allow_private(),
            )
            return with_etag(endpoint, schema)

    @blp.tenant_required
    @blp.response(204)
    @blp.alt_response(404, description="Not found in this organization")
    @blp.alt_response(412, description="If-Match does not match the current ETag")
    def delete(self, endpoint_id: int) -> None:
        """Delete the endpoint and its deliveries (pending ones are not sent)"""
        with transaction() as session:
            service.delete_endpoint(
                session, current_actor(), endpoint_id, if_match_precondition(schema)
            )


@blp.route("/<int:endpoint_id>/rotate-secret")
class WebhookSecretRotation(MethodView):
    @blp.tenant_required
    @blp.response(
        200,
        WebhookEndpointWithSecretSchema,
        example={**ENDPOINT_EXAMPLE, "secret": SECRET_EXAMPLE},
    )
    @blp.alt_response(404, description="Not found in this organization")
    def post(self, endpoint_id: int) -> Any:
        """Replace the signing secret; the answer shows the new one, this once.

        For 24 hours deliveries carry two signatures (new and old secret) in
        `webhook-signature`, so receivers can switch without rejecting anything."""
        with transaction() as session:
            return service.rotate_secret(session, current_actor(), endpoint_id)


@blp.route("/<int:endpoint_id>/deliveries")
class WebhookDeliveries(MethodView):
    @blp.tenant_required
    @blp.arguments(DeliveryListArgs, location="query")
    @blp.response(200, page_of(WebhookDeliverySchema), example=_page_example(DELIVERY_EXAMPLE))
    @blp.alt_response(404, description="Endpoint not found in this organization")
    def get(self, args: dict[str, Any], endpoint_id: int) -> Any:
        """The endpoint's deliveries, newest first, optionally of one status"""
        page = PageArgs.page_request(args)
        with transaction() as session:
            return service.list_deliveries(session, current_actor(), endpoint_id, page, **args)


@blp.route("/<int:endpoint_id>/deliveries/<int:delivery_id>/redeliver")
class WebhookRedelivery(MethodView):
    @blp.tenant_required
    @blp.response(202, WebhookDeliverySchema, example={**DELIVERY_EXAMPLE, "attempts": 0})
    @blp.alt_response(404, description="Endpoint or delivery not found in this organization")
    @blp.alt_response(409, description="The endpoint is disabled")
    def post(self, endpoint_id: int, delivery_id: int) -> Any:
        """Send a delivery again now: same `webhook-id` and body, a fresh set of attempts"""
        with transaction() as session:
            return service.redeliver(session, current_actor(), endpoint_id, delivery_id)


@blp.route("/<int:endpoint_id>/test")
class WebhookTest(MethodView):
    @blp.tenant_required
    @blp.response(
        202,
        WebhookDeliverySchema,
        example={**DELIVERY_EXAMPLE, "event_type": "ping", "attempts": 0},
    )
    @blp.alt_response(404, description="Not found in this organization")
    @blp.alt_response(409, description="The endpoint is disabled")
    def post(self, endpoint_id: int) -> Any:
        """Send a `ping` event to this endpoint (whatever its event types); follow it in
        the deliveries"""
        with transaction() as session:
            return service.send_ping(session, current_actor(), endpoint_id)
