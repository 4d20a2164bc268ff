"""Pipeline reports."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from marshmallow import fields

from crm_domain.services.reporting import reports as service

from ..extensions import Blueprint, current_actor, transaction
from ..schemas import PageArgs, Schema, page_of

blp = Blueprint("reports", __name__, url_prefix="/reports", description="Pipeline reports")


class ReportSchema(Schema):
    id = fields.Integer(dump_only=True)
    organization_id = fields.Integer(dump_only=True)
    kind = fields.String(dump_only=True, metadata={"description": "weekly | on_demand"})
    status = fields.String(
        dump_only=True,
        metadata={
            "description": "pending | ready | failed (the build failed "
            f"{service.MAX_BUILD_ATTEMPTS} times; `error` says why)"
        },
    )
    period_start = fields.Date(dump_only=True)
    period_end = fields.Date(dump_only=True)
    requested_by = fields.Integer(dump_only=True, allow_none=True)
    created_at = fields.DateTime(dump_only=True)
    completed_at = fields.DateTime(dump_only=True, allow_none=True)
    data = fields.Dict(
        dump_only=True,
        allow_none=True,
        metadata={"description": "period, summary, funnel and overdue_tasks once ready"},
    )
    error = fields.String(
        dump_only=True, allow_none=True, metadata={"description": "why the last build failed"}
    )


@blp.route("")
class Reports(MethodView):
    @blp.tenant_required
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, page_of(ReportSchema))
    def get(self, args: dict[str, Any]) -> Any:
        """The organization's reports, newest first (weekly ones are made on Mondays)"""
        with transaction() as session:
            return service.list_reports(session, current_actor(), PageArgs.page_request(args))

    @blp.tenant_required
    @blp.response(202, ReportSchema)
    def post(self) -> Any:
        """Request a pipeline report of the last 7 days now; a worker builds it (pending → ready)"""
        with transaction() as session:
            return service.request_report(session, current_actor())


@blp.route("/<int:report_id>")
class ReportById(MethodView):
    @blp.tenant_required
    @blp.response(200, ReportSchema)
    @blp.alt_response(404, description="Not found in this organization")
    def get(self, report_id: int) -> Any:
        """One report"""
        with transaction() as session:
            return service.get_report(session, current_actor(), report_id)
