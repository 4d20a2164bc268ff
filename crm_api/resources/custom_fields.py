"""Custom field definitions: owners and admins manage them, every member reads them."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView

from crm_domain.services.records import custom_fields as service

from ..extensions import Blueprint, current_actor, transaction
from ..schemas import PageArgs, page_example, page_of
from .custom_fields_schemas import (
    CREATE_EXAMPLE,
    EXAMPLE,
    CustomFieldCreateSchema,
    CustomFieldListArgs,
    CustomFieldSchema,
    CustomFieldUpdateSchema,
)

blp = Blueprint(
    "custom_fields",
    __name__,
    url_prefix="/custom-fields",
    description="Custom fields of contacts, deals and tasks",
)
NOT_FOUND = {"description": "Not a live custom field of this organization"}


@blp.route("")
class CustomFields(MethodView):
    @blp.tenant_required
    @blp.arguments(CustomFieldListArgs, location="query")
    @blp.response(200, page_of(CustomFieldSchema), example=page_example(EXAMPLE))
    def get(self, args: dict[str, Any]) -> Any:
        """List the organization's custom field definitions, oldest first (of one entity
        with `entity`)"""
        page = PageArgs.page_request(args)
        with transaction() as session:
            return service.list_definitions(session, current_actor(), page, args.get("entity"))

    @blp.tenant_required
    @blp.arguments(CustomFieldCreateSchema, example=CREATE_EXAMPLE)
    @blp.response(201, CustomFieldSchema, example=EXAMPLE)
    @blp.alt_response(409, description="The key is taken, or the entity has 100 custom fields")
    def post(self, data: dict[str, Any]) -> Any:
        """Define a custom field (owner/admin)

        Types: text (up to 1,000 characters), number (a decimal string), boolean, date,
        datetime (with a timezone; answered in UTC), single_select, multi_select (with
        `options`), url, email, user (a member's id). At most 100 per entity."""
        with transaction() as session:
            return service.create_definition(session, current_actor(), **data)


@blp.route("/<int:field_id>")
class CustomFieldById(MethodView):
    @blp.tenant_required
    @blp.response(200, CustomFieldSchema, example=EXAMPLE)
    @blp.alt_response(404, **NOT_FOUND)
    def get(self, field_id: int) -> Any:
        """Get a custom field definition"""
        with transaction() as session:
            return service.get_definition(session, current_actor(), field_id)

    @blp.tenant_required
    @blp.arguments(CustomFieldUpdateSchema, example={"label": "Market segment"})
    @blp.response(200, CustomFieldSchema, example=EXAMPLE)
    @blp.alt_response(404, **NOT_FOUND)
    def patch(self, data: dict[str, Any], field_id: int) -> Any:
        """Change a custom field's label, description, required flag or options (owner/admin)

        Key, entity and type never change. Options are never removed: archive them
        (records keep an archived option; new writes refuse it). No record is rewritten."""
        with transaction() as session:
            return service.update_definition(session, current_actor(), field_id, data)

    @blp.tenant_required
    @blp.response(204)
    @blp.alt_response(404, **NOT_FOUND)
    def delete(self, field_id: int) -> None:
        """Delete a custom field (owner/admin): its values disappear at once

        The worker purges the stored values in the background; until it is done the key
        cannot be defined again (409)."""
        with transaction() as session:
            service.delete_definition(session, current_actor(), field_id)
