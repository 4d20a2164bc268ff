"""The caller's notifications in the current organization."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from marshmallow import fields

from crm_domain.services.records import notifications as service

from ..extensions import Blueprint, current_actor, transaction
from ..schemas import PageArgs, Schema, page_of

blp = Blueprint("notifications", __name__, url_prefix="/notifications", description="Notifications")


class NotificationSchema(Schema):
    id = fields.Integer(dump_only=True)
    organization_id = fields.Integer(dump_only=True)
    type = fields.String(dump_only=True, metadata={"example": "task_due"})
    payload = fields.Dict(dump_only=True)
    created_at = fields.DateTime(dump_only=True)
    read_at = fields.DateTime(dump_only=True, allow_none=True)
    is_read = fields.Function(lambda n: n.read_at is not None, dump_only=True)


class NotificationListArgs(PageArgs):
    unread_only = fields.Boolean(load_default=False)


class MarkedRead(Schema):
    updated = fields.Integer(required=True)


@blp.route("")
class Notifications(MethodView):
    @blp.tenant_required
    @blp.arguments(NotificationListArgs, location="query")
    @blp.response(200, page_of(NotificationSchema))
    def get(self, args: dict[str, Any]) -> Any:
        """The caller's notifications, newest first"""
        page = PageArgs.page_request(args)
        with transaction() as session:
            return service.list_notifications(session, current_actor(), page, **args)


@blp.route("/<int:notification_id>/read")
class NotificationRead(MethodView):
    @blp.tenant_required
    @blp.response(200, NotificationSchema)
    @blp.alt_response(404, description="Not one of the caller's notifications here")
    def post(self, notification_id: int) -> Any:
        """Mark a notification read (idempotent)"""
        with transaction() as session:
            return service.mark_read(session, current_actor(), notification_id)


@blp.route("/read-all")
class NotificationsReadAll(MethodView):
    @blp.tenant_required
    @blp.response(200, MarkedRead)
    def post(self) -> Any:
        """Mark all of the caller's notifications in this organization read"""
        with transaction() as session:
            return {"updated": service.mark_all_read(session, current_actor())}
