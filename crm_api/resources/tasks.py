"""Tasks on deals."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from marshmallow import ValidationError, fields, validates_schema

from crm_domain.services.records import tasks as service
from crm_domain.validation.custom_values import custom_fields_field
from crm_domain.validation.writes import TaskUpdateSchema, description_field

from ..by_id import ByIdDocs, register_by_id
from ..extensions import Blueprint, current_actor, transaction
from ..schemas import PageArgs, Schema, id_field, name_field, page_of, query_id_field
from .custom_fields_schemas import CustomListArgs, custom_fields_of

blp = Blueprint("tasks", __name__, url_prefix="/tasks", description="Tasks on deals")


class TaskSchema(Schema):
    id = fields.Integer(dump_only=True)
    organization_id = fields.Integer(dump_only=True)
    deal_id = fields.Integer(dump_only=True)
    title = fields.String(dump_only=True)
    description = fields.String(dump_only=True, allow_none=True)
    due_date = fields.Date(dump_only=True)
    is_done = fields.Boolean(dump_only=True)
    created_at = fields.DateTime(dump_only=True)
    updated_at = fields.DateTime(dump_only=True)
    custom_fields = custom_fields_of()


class TaskCreateSchema(Schema):
    deal_id = id_field(required=True)
    title = name_field(required=True)
    description = description_field
    due_date = fields.Date(required=True, metadata={"description": "today (UTC) or later"})
    custom_fields = custom_fields_field()


class TaskListArgs(PageArgs, CustomListArgs):
    deal_id = query_id_field()
    only_open = fields.Boolean(load_default=False)
    due_before = fields.Date(metadata={"description": "inclusive"})
    due_after = fields.Date(metadata={"description": "inclusive"})

    @validates_schema
    def window_in_order(self, data: dict[str, Any], **_: Any) -> None:
        after, before = data.get("due_after"), data.get("due_before")
        if after is not None and before is not None and after > before:
            raise ValidationError("due_after must not be later than due_before", "due_after")


schema = TaskSchema()


@blp.route("")
class Tasks(MethodView):
    @blp.tenant_required
    @blp.arguments(TaskListArgs, location="query")
    @blp.response(200, page_of(TaskSchema))
    @blp.alt_response(404, description="deal_id not found in this organization")
    def get(self, args: dict[str, Any]) -> Any:
        """List tasks of the organization's deals, soonest due first"""
        page = PageArgs.page_request(args)
        with transaction() as session:
            return service.list_tasks(session, current_actor(), page, **args)

    @blp.tenant_required
    @blp.arguments(TaskCreateSchema)
    @blp.response(201, TaskSchema)
    @blp.alt_response(404, description="Deal not found in this organization")
    def post(self, data: dict[str, Any]) -> Any:
        """Create a task on a deal (members: only on their own deals); due_date >= today UTC"""
        with transaction() as session:
            return service.create_task(session, current_actor(), **data)


register_by_id(
    blp,
    id_name="task_id",
    schema=TaskSchema,
    update_schema=TaskUpdateSchema,
    get=service.get_task,
    update=service.update_task,
    delete=service.delete_task,
    docs=ByIdDocs(
        get="Get a task (with an ETag for If-Match)",
        patch="Update a task (e.g. mark it done); members: only tasks on their own deals",
        delete="Delete a task; members: only tasks on their own deals",
    ),
)
