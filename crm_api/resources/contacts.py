"""Contacts."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from marshmallow import fields, validate

from crm_domain.services.records import contacts as service
from crm_domain.services.transfer import exports
from crm_domain.validation.writes import ContactCreateSchema, ContactUpdateSchema

from ..by_id import ByIdDocs, register_by_id
from ..exports import ExportArgs, csv_download, csv_response_doc
from ..extensions import Blueprint, current_actor, transaction
from ..schemas import PageArgs, Schema, Trimmed, page_of, query_id_field
from .custom_fields_schemas import CustomListArgs, custom_fields_of

blp = Blueprint("contacts", __name__, url_prefix="/contacts", description="Contacts")


class ContactSchema(Schema):
    id = fields.Integer(dump_only=True)
    organization_id = fields.Integer(dump_only=True)
    owner_id = fields.Integer(dump_only=True)
    name = fields.String(dump_only=True)
    email = fields.String(dump_only=True, allow_none=True)
    phone = fields.String(dump_only=True, allow_none=True)
    created_at = fields.DateTime(dump_only=True)
    updated_at = fields.DateTime(dump_only=True)
    custom_fields = custom_fields_of()


class ContactListArgs(PageArgs, CustomListArgs):
    search = Trimmed(
        validate=validate.Length(max=255), metadata={"description": "in name or email"}
    )
    owner_id = query_id_field(metadata={"description": "manager and above only"})


class ContactExportArgs(ContactListArgs, ExportArgs):
    pass


schema = ContactSchema()


@blp.route("/export.csv")
class ContactsExport(MethodView):
    @blp.tenant_required
    @blp.arguments(ContactExportArgs(exclude=PageArgs.PAGE_FIELDS), location="query")
    @blp.doc(
        responses=csv_response_doc(
            "name,email,phone,owner_email\r\n"
            "John Doe,john.doe@example.com,'+123456789,owner@example.com\r\n"
        )
    )
    def get(self, args: dict[str, Any]) -> Any:
        """Export contacts as CSV (the list's filters and order; the import's columns)

        Columns: name, email, phone, owner_email, then one per custom field (header = its
        key; the list's `cf.` filters and `sort` apply). Streamed: any size, little memory. Text
        that a spreadsheet would run as a formula starts with a ' (see `raw`)."""
        raw = args.pop("raw")
        custom = args.pop("custom")
        export = exports.contacts_export(current_actor(), **args)
        with transaction() as session:
            export = exports.with_custom(session, current_actor(), export, custom)
        return csv_download(export, "contacts.csv", raw=raw)


@blp.route("")
class Contacts(MethodView):
    @blp.tenant_required
    @blp.arguments(ContactListArgs, location="query")
    @blp.response(200, page_of(ContactSchema))
    def get(self, args: dict[str, Any]) -> Any:
        """List contacts (newest first), optionally searched by name/email"""
        page = PageArgs.page_request(args)
        with transaction() as session:
            return service.list_contacts(session, current_actor(), page, **args)

    @blp.tenant_required
    @blp.arguments(ContactCreateSchema)
    @blp.response(201, ContactSchema)
    @blp.alt_response(404, description="owner_id is not a member of the organization")
    def post(self, data: dict[str, Any]) -> Any:
        """Create a contact (owned by the caller unless owner_id is given)"""
        with transaction() as session:
            return service.create_contact(session, current_actor(), **data)


register_by_id(
    blp,
    id_name="contact_id",
    schema=ContactSchema,
    update_schema=ContactUpdateSchema,
    get=service.get_contact,
    update=service.update_contact,
    delete=service.delete_contact,
    docs=ByIdDocs(
        get="Get a contact (with an ETag for If-Match)",
        patch="Update a contact; members may update only their own",
        delete="Delete a contact that has no deals; members may delete only their own",
        delete_conflict="The contact has deals",
    ),
)
