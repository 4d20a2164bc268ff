"""The trash: deleted contacts, deals and tasks, restored or purged."""

from __future__ import annotations

import dataclasses
from typing import Any

from flask.views import MethodView
from marshmallow import fields, validate

from crm_domain import representation
from crm_domain.services.records import trash as service

from ..extensions import Blueprint, current_actor, transaction
from ..schemas import PageArgs, Schema, page_example, page_of

blp = Blueprint(
    "trash", __name__, url_prefix="/trash", description="Deleted records: restore or purge"
)

RECORD_EXAMPLE = {
    "id": 7,
    "organization_id": 1,
    "contact_id": 3,
    "owner_id": 2,
    "title": "Website redesign",
    "amount": "1500.00",
    "currency": "USD",
    "status": "in_progress",
    "stage": "proposal",
    "created_at": "2026-01-05T10:00:00+00:00",
    "updated_at": "2026-01-06T09:30:00+00:00",
}


class TrashArgs(PageArgs):
    entity = fields.String(required=True, validate=validate.OneOf(sorted(service.ENTITIES)))


class RestoredSchema(Schema):
    entity = fields.String(dump_only=True, metadata={"enum": sorted(service.ENTITIES)})
    id = fields.Integer(dump_only=True)
    record = fields.Dict(
        dump_only=True,
        metadata={
            "description": "the record as GET /<entity>s/{id} shows it",
            "example": RECORD_EXAMPLE,
        },
    )


class TrashItemSchema(RestoredSchema):
    deleted_at = fields.DateTime(dump_only=True)
    deleted_by = fields.Integer(dump_only=True, allow_none=True)
    merged_into_id = fields.Integer(
        dump_only=True,
        allow_none=True,
        metadata={"description": "contacts: the contact a merge moved this one into"},
    )


def _restored(entity: str, obj: Any) -> dict[str, Any]:
    return {"entity": entity, "id": obj.id, "record": representation.dump(entity, obj)}


def _item(entity: str, obj: Any) -> dict[str, Any]:
    return {
        **_restored(entity, obj),
        "deleted_at": obj.deleted_at,
        "deleted_by": obj.deleted_by,
        "merged_into_id": getattr(obj, "merged_into_id", None),
    }


@blp.route("")
class Trash(MethodView):
    @blp.tenant_required
    @blp.arguments(TrashArgs, location="query")
    @blp.response(
        200,
        page_of(TrashItemSchema),
        example=page_example(
            {
                "entity": "deal",
                "id": 7,
                "record": RECORD_EXAMPLE,
                "deleted_at": "2026-01-07T08:00:00+00:00",
                "deleted_by": 2,
                "merged_into_id": None,
            }
        ),
    )
    def get(self, args: dict[str, Any]) -> Any:
        """The trash of one kind of record, most recently deleted first

        Owners, admins and managers see everything; a member what they own (tasks: on their
        deals). Tasks that went with their deal are not listed: they come back with it."""
        entity = args.pop("entity")
        with transaction() as session:
            page = service.list_trash(session, current_actor(), entity, PageArgs.page_request(args))
            return dataclasses.replace(page, items=[_item(entity, obj) for obj in page.items])


def _register(entity: str) -> None:
    """POST /trash/<entity>/<id>/restore and DELETE /trash/<entity>/<id> for one kind."""
    id_name = f"{entity}_id"

    @blp.tenant_required
    @blp.response(200, RestoredSchema)
    @blp.alt_response(
        404, description=f"Not in this organization's trash ({entity.upper()}_NOT_FOUND)"
    )
    @blp.alt_response(409, description=RESTORE_CONFLICTS[entity])
    def restore(self: Any, **path: int) -> Any:
        with transaction() as session:
            obj = service.restore(session, current_actor(), entity, path[id_name])
            return _restored(entity, obj)

    @blp.tenant_required
    @blp.response(204)
    @blp.alt_response(403, description="Only owners and admins purge")
    @blp.alt_response(404, description="Not in this organization's trash")
    def purge(self: Any, **path: int) -> None:
        with transaction() as session:
            service.purge(session, current_actor(), entity, path[id_name])

    restore.__doc__ = (
        f"Restore a {entity} exactly as it was{RESTORE_NOTES[entity]}\n\n"
        "Allowed to whoever could have deleted it."
    )
    purge.__doc__ = f"Delete a trashed {entity} for good now{PURGE_NOTES[entity]}"
    name = entity.capitalize()
    blp.route(f"/{entity}/<int:{id_name}>/restore")(
        type(f"Trash{name}Restore", (MethodView,), {"post": restore})
    )
    blp.route(f"/{entity}/<int:{id_name}>")(
        type(f"Trash{name}Purge", (MethodView,), {"delete": purge})
    )


RESTORE_CONFLICTS = {
    "contact": "CONTACT_MERGED: a contact trashed by a merge stays merged",
    "deal": "CONTACT_IN_TRASH: restore the deal's contact first",
    "task": "DEAL_IN_TRASH: restore the task's deal first",
}
RESTORE_NOTES = {"contact": "", "deal": " (with its tasks and timeline)", "task": ""}
PURGE_NOTES = {
    "contact": " (with its trashed deals)",
    "deal": " (with its tasks and timeline)",
    "task": "",
}
for _entity in service.ENTITIES:
    _register(_entity)
