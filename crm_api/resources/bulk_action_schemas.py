"""What the bulk-action routes take and answer, and the documented examples. A request's
`changes` are checked with the single PATCH's body schema of its entity and its `filter`
with the list endpoint's own query schema (crm_api.resources.bulk_actions.SELECTIONS)."""

from __future__ import annotations

from typing import Any

from marshmallow import ValidationError, fields, validate, validates_schema

from crm_domain.enums import BulkActionStatus
from crm_domain.services.transfer import bulk_actions as service
from crm_domain.services.transfer.bulk_registry import (
    ENTITIES,
    IDS_ONLY,
    TAKES_CHANGES,
    actions,
)

from ..schemas import Schema, id_field

EXAMPLE_JOB = {
    "id": 12,
    "organization_id": 1,
    "entity": "deal",
    "action": "update",
    "changes": {"stage": "negotiation"},
    "filter": {"status": ["in_progress"], "min_amount": "1000.00"},
    "status": "running",
    "total": 5000,
    "done": 2400,
    "succeeded": 2391,
    "failed": 9,
    "cancel_requested": False,
    "error": None,
    "created_by": 3,
    "created_at": "2026-12-07T10:00:00+00:00",
    "started_at": "2026-12-07T10:00:01+00:00",
    "finished_at": None,
}
EXAMPLE_ERROR = {
    "record_id": 4411,
    "code": "NOT_OWNER",
    "message": "Members can only modify their own deals",
}
PENDING = {"status": "pending", "done": 0, "succeeded": 0, "failed": 0, "started_at": None}


class BulkActionCreateSchema(Schema):
    entity = fields.String(required=True, validate=validate.OneOf(sorted(ENTITIES)))
    action = fields.String(
        required=True,
        validate=validate.OneOf(actions.names()),
        metadata={"description": "restore: records in the trash, by ids only"},
    )
    ids = fields.List(
        id_field(),
        validate=validate.Length(min=1, max=service.MAX_IDS),
        metadata={"description": f"the records (at most {service.MAX_IDS}); or `filter`"},
    )
    filter = fields.Dict(
        keys=fields.String(),
        metadata={
            "description": "the list endpoint's own query arguments, as JSON (GET /deals: "
            '`{"status": ["new"], "min_amount": "100.00"}`); the records it matches now, '
            f"at most {service.MAX_MATCHES}; `{{}}`: all of them"
        },
    )
    changes = fields.Dict(
        keys=fields.String(),
        load_default=dict,
        metadata={"description": "update: the single PATCH's body; delete: none"},
    )

    @validates_schema
    def one_selection(self, data: dict[str, Any], **_: Any) -> None:
        if ("ids" in data) == ("filter" in data):
            raise ValidationError("Send either ids or filter", "ids")
        if data.get("action") in IDS_ONLY and "filter" in data:
            raise ValidationError("A restore names its records by ids (see GET /trash)", "filter")

    @validates_schema
    def changes_fit(self, data: dict[str, Any], **_: Any) -> None:
        entity, action, changes = data.get("entity"), data.get("action"), data.get("changes")
        if entity not in ENTITIES or action is None:
            return
        if action not in TAKES_CHANGES:
            if changes:
                raise ValidationError(f"{action} takes no changes", "changes")
            return
        if not changes:
            raise ValidationError("Name at least one field to change", "changes")
        try:
            ENTITIES[entity].changes().load(changes)
        except ValidationError as exc:
            raise ValidationError({"changes": exc.messages}) from exc


class BulkActionArgs(Schema):
    dry_run = fields.Boolean(
        load_default=False,
        metadata={"description": "true: only count the records it would touch (200, no job)"},
    )


class DryRunSchema(Schema):
    entity = fields.String()
    action = fields.String()
    matched = fields.Integer(
        metadata={"description": "records it would touch (ids: those in the organization)"}
    )


class RecordErrorSchema(Schema):
    record_id = fields.Integer()
    code = fields.String(metadata={"example": "NOT_OWNER"})
    message = fields.String()


class BulkActionSchema(Schema):
    id = fields.Integer(dump_only=True)
    organization_id = fields.Integer(dump_only=True)
    entity = fields.String(dump_only=True)
    action = fields.String(dump_only=True)
    changes = fields.Dict(dump_only=True)
    filter = fields.Dict(dump_only=True, allow_none=True, metadata={"description": "null: ids"})
    status = fields.Enum(
        BulkActionStatus,
        by_value=True,
        dump_only=True,
        metadata={"description": "pending -> running -> done | cancelled | failed"},
    )
    total = fields.Integer(dump_only=True, metadata={"description": "records selected"})
    done = fields.Integer(dump_only=True, metadata={"description": "records processed so far"})
    succeeded = fields.Integer(dump_only=True)
    failed = fields.Integer(dump_only=True, metadata={"description": "records left unchanged"})
    cancel_requested = fields.Boolean(dump_only=True)
    error = fields.String(dump_only=True, allow_none=True, metadata={"description": "failed"})
    created_by = fields.Integer(dump_only=True, allow_none=True)
    created_at = fields.DateTime(dump_only=True)
    started_at = fields.DateTime(dump_only=True, allow_none=True)
    finished_at = fields.DateTime(dump_only=True, allow_none=True)


class BulkActionDetailSchema(BulkActionSchema):
    errors_total = fields.Integer(dump_only=True, attribute="failed")
    errors = fields.List(
        fields.Nested(RecordErrorSchema),
        dump_only=True,
        metadata={
            "description": f"the first {service.ERRORS_SHOWN} by record id; all of them: "
            "GET /bulk-actions/{id}/errors"
        },
    )
