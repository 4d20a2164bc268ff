"""Deal analytics."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask import Response, current_app
from flask.views import MethodView
from marshmallow import fields, validate

from crm_domain.services._common import not_found
from crm_domain.services.records import custom_fields
from crm_domain.services.reporting import analytics_by_field, analytics_cache

from ..extensions import Blueprint, current_actor, transaction
from ..schemas import total_field

blp = Blueprint("analytics", __name__, url_prefix="/analytics", description="Deal analytics")


class SummaryArgs(ma.Schema):
    days = fields.Integer(
        load_default=30,
        validate=validate.Range(min=1, max=365),
        metadata={"description": "window for new deals, 1..365"},
    )


class StatusTotals(ma.Schema):
    count = fields.Integer()
    total_amount = total_field()


def _by_status() -> fields.Dict:
    return fields.Dict(keys=fields.String(), values=fields.Nested(StatusTotals))


class SummarySchema(ma.Schema):
    as_of = fields.String(metadata={"description": "when these figures were computed (UTC)"})
    by_status = _by_status()
    total_deals = fields.Integer()
    avg_won_amount = total_field(allow_none=True, metadata={"description": "null: none won"})
    new_deals_last_n_days = fields.Integer()
    days = fields.Integer()
    by_currency = fields.Dict(
        keys=fields.String(),
        values=fields.Dict(keys=fields.String(), values=fields.Nested(StatusTotals)),
        metadata={"description": "the by_status figures for each currency"},
    )


class FunnelStage(ma.Schema):
    stage = fields.String()
    order = fields.Integer()
    count = fields.Integer(metadata={"description": "deals in this stage now"})
    reached = fields.Integer(metadata={"description": "deals in this stage or a later one"})
    by_status = fields.Dict(keys=fields.String(), values=fields.Integer())
    conversion_from_previous = fields.Float(allow_none=True)


class Conversion(ma.Schema):
    from_stage = fields.String()
    to_stage = fields.String()
    rate_percent = fields.Float()


class FunnelSchema(ma.Schema):
    as_of = fields.String(metadata={"description": "when these figures were computed (UTC)"})
    stages = fields.List(fields.Nested(FunnelStage))
    conversions = fields.List(fields.Nested(Conversion))


@blp.route("/deals/summary")
class Summary(MethodView):
    @blp.tenant_required
    @blp.arguments(SummaryArgs, location="query")
    @blp.response(200, SummarySchema)
    def get(self, args: dict[str, Any]) -> Any:
        """Deal counts and amounts by status, average won amount, new deals in N days.

        Served from the per-organization precomputed result (refreshed by workers after deal
        changes); `as_of` tells when it was computed."""
        return _cached(analytics_cache.summary_field(args["days"]))


@blp.route("/deals/funnel")
class Funnel(MethodView):
    @blp.tenant_required
    @blp.response(200, FunnelSchema)
    def get(self) -> Any:
        """Deals per stage (by status), deals that reached each stage, stage conversion"""
        return _cached(analytics_cache.FUNNEL_FIELD)


class ValueFigures(ma.Schema):
    count = fields.Integer(metadata={"description": "deals with this option"})
    by_status = _by_status()
    by_currency = fields.Dict(
        keys=fields.String(),
        values=fields.Dict(keys=fields.String(), values=fields.Nested(StatusTotals)),
    )


class OptionFigures(ValueFigures):
    value = fields.String(metadata={"description": "the option's value"})
    label = fields.String(
        allow_none=True,
        metadata={"description": "the option's label, as the field's definition has it now"},
    )


class ByFieldSchema(ma.Schema):
    as_of = fields.String(metadata={"description": "when these figures were computed (UTC)"})
    key = fields.String()
    type = fields.String(metadata={"example": "single_select"})
    options = fields.List(fields.Nested(OptionFigures))
    none = fields.Nested(ValueFigures, metadata={"description": "deals without a value"})


@blp.route("/deals/by-field/<string:key>")
class ByField(MethodView):
    @blp.tenant_required
    @blp.response(200, ByFieldSchema)
    @blp.alt_response(404, description="No select custom field of deals with this key")
    def get(self, key: str) -> Any:
        """Deal counts and amounts per option of a select custom field, by status and currency

        Precomputed with the summary (refreshed by workers after deal changes; `as_of` tells
        when). A deal with several options of a multi_select counts under each."""
        with transaction() as session:
            definition = custom_fields.ensure_select_field(session, current_actor(), "deal", key)
        try:
            body = _stored(analytics_by_field.field_name(key))
        except KeyError:  # deleted or changed since the check above
            raise not_found("custom_field") from None
        return _json(analytics_by_field.with_labels(body, definition))


def _cached(field: str) -> Response:
    """The precomputed JSON document, sent as stored (the schemas above document it)."""
    return _json(_stored(field))


def _stored(field: str) -> bytes:
    cache = current_app.extensions["crm_analytics"]
    return bytes(cache.get_json(current_actor().organization_id, field))


def _json(body: bytes) -> Response:
    return Response(body, status=200, mimetype="application/json")
