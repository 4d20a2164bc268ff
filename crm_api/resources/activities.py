"""The deal activity timeline."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from marshmallow import fields, validate

from crm_domain.enums import ActivityType
from crm_domain.services.records import activities as service

from ..extensions import Blueprint, current_actor, transaction
from ..schemas import PageArgs, Schema, page_of

blp = Blueprint("activities", __name__, url_prefix="/deals", description="Deal activity timeline")


class ActivitySchema(Schema):
    id = fields.Integer(dump_only=True)
    deal_id = fields.Integer(dump_only=True)
    author_id = fields.Integer(dump_only=True, allow_none=True)
    type = fields.Enum(ActivityType, by_value=True, dump_only=True)
    payload = fields.Dict(dump_only=True)
    created_at = fields.DateTime(dump_only=True)


class ActivityCreateSchema(Schema):
    type = fields.String(
        required=True,
        validate=validate.Length(min=1, max=32),
        metadata={
            "description": 'only "comment": any other type is 400 ACTIVITY_TYPE_NOT_ALLOWED',
            "enum": [ActivityType.COMMENT.value],
            "example": "comment",
        },
    )
    payload = fields.Dict(
        keys=fields.String(),
        required=True,
        metadata={
            "description": "the comment: `text`, not blank (else 400 VALIDATION_ERROR)",
            "properties": {
                "text": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": service.MAX_COMMENT_LENGTH,
                    "pattern": "\\S",
                }
            },
            "required": ["text"],
            "example": {"text": "Client requested updated proposal"},
        },
    )


@blp.route("/<int:deal_id>/activities")
class DealActivities(MethodView):
    @blp.tenant_required
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, page_of(ActivitySchema))
    @blp.alt_response(404, description="Deal not found in this organization")
    def get(self, args: dict[str, Any], deal_id: int) -> Any:
        """The deal's timeline, newest first"""
        with transaction() as session:
            return service.list_activities(
                session, current_actor(), deal_id, PageArgs.page_request(args)
            )

    @blp.tenant_required
    @blp.arguments(ActivityCreateSchema)
    @blp.response(201, ActivitySchema)
    @blp.alt_response(404, description="Deal not found in this organization")
    def post(self, data: dict[str, Any], deal_id: int) -> Any:
        """Add a comment to the deal's timeline (only type "comment" is accepted)"""
        with transaction() as session:
            return service.add_comment(session, current_actor(), deal_id, **data)
