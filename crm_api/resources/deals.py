"""Deals."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from marshmallow import ValidationError, fields, validate, validates_schema

from crm_domain.enums import DealStage, DealStatus
from crm_domain.services.records import deals as service
from crm_domain.services.transfer import exports
from crm_domain.validation.writes import DealCreateSchema, DealUpdateSchema

from ..by_id import ByIdDocs, register_by_id
from ..exports import ExportArgs, csv_download, csv_response_doc
from ..extensions import Blueprint, current_actor, transaction
from ..schemas import PageArgs, Schema, amount_field, page_of, query_id_field
from .custom_fields_schemas import CustomListArgs, custom_fields_of

blp = Blueprint("deals", __name__, url_prefix="/deals", description="Deals")


class DealSchema(Schema):
    id = fields.Integer(dump_only=True)
    organization_id = fields.Integer(dump_only=True)
    contact_id = fields.Integer(dump_only=True)
    owner_id = fields.Integer(dump_only=True)
    title = fields.String(dump_only=True)
    amount = amount_field(dump_only=True)
    currency = fields.String(dump_only=True)
    status = fields.Enum(DealStatus, by_value=True, dump_only=True)
    stage = fields.Enum(DealStage, by_value=True, dump_only=True)
    created_at = fields.DateTime(dump_only=True)
    updated_at = fields.DateTime(dump_only=True)
    custom_fields = custom_fields_of()


class DealListArgs(PageArgs, CustomListArgs):
    status = fields.List(
        fields.Enum(DealStatus, by_value=True),
        metadata={"description": "repeatable: status=new&status=in_progress"},
    )
    stage = fields.Enum(DealStage, by_value=True)
    min_amount = amount_field()
    max_amount = amount_field()
    owner_id = query_id_field(metadata={"description": "manager and above only"})
    order_by = fields.String(
        load_default="created_at", validate=validate.OneOf(sorted(service.ORDERABLE))
    )
    order = fields.String(load_default="desc", validate=validate.OneOf(["asc", "desc"]))

    @validates_schema
    def amounts_in_order(self, data: dict[str, Any], **_: Any) -> None:
        low, high = data.get("min_amount"), data.get("max_amount")
        if low is not None and high is not None and low > high:
            raise ValidationError("min_amount must not exceed max_amount", "min_amount")


class DealExportArgs(DealListArgs, ExportArgs):
    pass


def list_filters(args: dict[str, Any]) -> dict[str, Any]:
    """The list's query arguments as `service.filtered`'s keywords (the list, the export and
    the bulk actions' filter)."""
    args["statuses"] = args.pop("status", ())
    return args


schema = DealSchema()


@blp.route("/export.csv")
class DealsExport(MethodView):
    @blp.tenant_required
    @blp.arguments(DealExportArgs(exclude=PageArgs.PAGE_FIELDS), location="query")
    @blp.doc(
        responses=csv_response_doc(
            "title,amount,currency,status,stage,contact_id,contact_email,owner_email\r\n"
            "Website redesign,10000.00,EUR,won,closed,12,john.doe@example.com,"
            "owner@example.com\r\n"
        )
    )
    def get(self, args: dict[str, Any]) -> Any:
        """Export deals as CSV (the list's filters and order; the import's columns)

        Columns: title, amount, currency, status, stage, contact_id, contact_email,
        owner_email, then one per custom field (header = its key; the list's `cf.` filters
        and `sort` apply). Streamed: any size, little memory. Text that a spreadsheet would run as
        a formula starts with a ' (see `raw`); amounts and ids are plain numbers."""
        raw = args.pop("raw")
        custom = args.pop("custom")
        export = exports.deals_export(current_actor(), **list_filters(args))
        with transaction() as session:
            export = exports.with_custom(session, current_actor(), export, custom)
        return csv_download(export, "deals.csv", raw=raw)


@blp.route("")
class Deals(MethodView):
    @blp.tenant_required
    @blp.arguments(DealListArgs, location="query")
    @blp.response(200, page_of(DealSchema))
    def get(self, args: dict[str, Any]) -> Any:
        """List deals with filters and sorting (newest first by default)"""
        page = PageArgs.page_request(args)
        with transaction() as session:
            return service.list_deals(session, current_actor(), page, **list_filters(args))

    @blp.tenant_required
    @blp.arguments(DealCreateSchema)
    @blp.response(201, DealSchema)
    @blp.alt_response(404, description="Contact (or owner) not found in this organization")
    def post(self, data: dict[str, Any]) -> Any:
        """Create a deal (status new, stage qualification)"""
        data = {k: v for k, v in data.items() if v is not None}
        with transaction() as session:
            return service.create_deal(session, current_actor(), **data)


register_by_id(
    blp,
    id_name="deal_id",
    schema=DealSchema,
    update_schema=DealUpdateSchema,
    get=service.get_deal,
    update=service.update_deal,
    delete=service.delete_deal,
    docs=ByIdDocs(
        get="Get a deal (with an ETag for If-Match)",
        patch="""Partially update a deal.

        Won needs an amount > 0 (400). Rolling the stage back needs owner/admin (403).
        Members may change only their own deals. Status and stage changes are written to
        the deal's timeline.""",
        delete="Delete a deal with its tasks and timeline",
    ),
)
