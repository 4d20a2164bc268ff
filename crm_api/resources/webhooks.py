"""Outbound webhook endpoints and their deliveries (owner and admin only)."""

from __future__ import annotations

from typing import Any

from flask import current_app
from flask.views import MethodView

from crm_domain.services.delivery import webhooks as service

from ..conditional import precondition, with_etag
from ..extensions import Blueprint, current_actor, transaction
from ..schemas import PageArgs, page_example, page_of
from .webhook_schemas import (
    DELIVERY_EXAMPLE,
    ENDPOINT_EXAMPLE,
    SECRET_EXAMPLE,
    DeliveryListArgs,
    WebhookDeliverySchema,
    WebhookEndpointCreateSchema,
    WebhookEndpointSchema,
    WebhookEndpointUpdateSchema,
    WebhookEndpointWithSecretSchema,
)

blp = Blueprint(
    "webhooks",
    __name__,
    url_prefix="/webhooks",
    description=(
        "Outbound webhooks (Standard Webhooks): endpoints receive the organization's events, "
        "signed with the endpoint's secret. Owner and admin only."
    ),
)

schema = WebhookEndpointSchema()


def _allow_private() -> bool:
    return bool(current_app.extensions["crm_settings"].webhooks_allow_private)


@blp.route("")
class WebhookEndpoints(MethodView):
    @blp.tenant_required
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, page_of(WebhookEndpointSchema), example=page_example(ENDPOINT_EXAMPLE))
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
    @blp.response(200, WebhookEndpointSchema, example=ENDPOINT_EXAMPLE)
    @blp.alt_response(404, description="Not found in this organization")
    @blp.conditional
    def get(self, endpoint_id: int) -> Any:
        """One endpoint, with why it is disabled if it is (never its secret)"""
        with transaction() as session:
            return with_etag(service.get_endpoint(session, current_actor(), endpoint_id), schema)

    @blp.tenant_required
    @blp.arguments(WebhookEndpointUpdateSchema, example={"enabled": True})
    @blp.response(200, WebhookEndpointSchema, example=ENDPOINT_EXAMPLE)
    @blp.alt_response(404, description="Not found in this organization")
    @blp.conditional
    def patch(self, data: dict[str, Any], endpoint_id: int) -> Any:
        """Change the URL, event types, description, or enable/disable the endpoint"""
        with transaction() as session:
            endpoint = service.update_endpoint(
                session,
                current_actor(),
                endpoint_id,
                data,
                precondition(schema),
                allow_private=_allow_private(),
            )
            return with_etag(endpoint, schema)

    @blp.tenant_required
    @blp.response(204)
    @blp.alt_response(404, description="Not found in this organization")
    @blp.conditional
    def delete(self, endpoint_id: int) -> None:
        """Delete the endpoint and its deliveries (pending ones are not sent)"""
        with transaction() as session:
            service.delete_endpoint(session, current_actor(), endpoint_id, precondition(schema))


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
    @blp.response(200, page_of(WebhookDeliverySchema), example=page_example(DELIVERY_EXAMPLE))
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
