"""What the import routes take and answer: the upload, job and row-error schemas and the
documented examples."""

from __future__ import annotations

from flask_smorest.fields import Upload
from marshmallow import fields

from crm_domain.enums import ImportKind, ImportStatus, OnDuplicate
from crm_domain.services.transfer import imports as service

from ..schemas import Schema

EXAMPLE_JOB = {
    "id": 7,
    "organization_id": 1,
    "kind": "contacts",
    "on_duplicate": "skip",
    "filename": "contacts.csv",
    "status": "running",
    "rows_total": 50000,
    "rows_done": 12500,
    "created": 12400,
    "updated": 0,
    "skipped": 95,
    "error_rows": 5,
    "error": None,
    "created_by": 3,
    "created_at": "2026-11-23T10:00:00+00:00",
    "started_at": "2026-11-23T10:00:01+00:00",
    "finished_at": None,
}


PENDING = {
    "status": "pending",
    "rows_done": 0,
    "created": 0,
    "skipped": 0,
    "error_rows": 0,
    "started_at": None,
}


class ImportUploadSchema(Schema):
    file = Upload(required=True, metadata={"description": "the CSV file (UTF-8, header row)"})
    kind = fields.Enum(ImportKind, by_value=True, required=True)
    on_duplicate = fields.Enum(
        OnDuplicate,
        by_value=True,
        load_default=OnDuplicate.SKIP,
        metadata={
            "description": "contacts whose e-mail the organization already has, deals whose "
            "contact and title (ignoring case) a live deal has: skip them, or update the "
            "oldest such contact or deal"
        },
    )


class RowErrorSchema(Schema):
    row = fields.Integer(metadata={"description": "row in the file; the header is row 1"})
    field = fields.String(metadata={"description": "the column ('' for the whole row)"})
    code = fields.String(metadata={"example": "OWNER_NOT_FOUND"})
    message = fields.String()


class ImportSchema(Schema):
    id = fields.Integer(dump_only=True)
    organization_id = fields.Integer(dump_only=True)
    kind = fields.Enum(ImportKind, by_value=True, dump_only=True)
    on_duplicate = fields.Enum(OnDuplicate, by_value=True, dump_only=True)
    filename = fields.String(dump_only=True)
    status = fields.Enum(
        ImportStatus,
        by_value=True,
        dump_only=True,
        metadata={"description": "pending -> running -> done | failed"},
    )
    rows_total = fields.Integer(dump_only=True, metadata={"description": "non-blank rows"})
    rows_done = fields.Integer(dump_only=True, metadata={"description": "rows processed so far"})
    created = fields.Integer(attribute="created_count", dump_only=True)
    updated = fields.Integer(attribute="updated_count", dump_only=True)
    skipped = fields.Integer(
        attribute="skipped_count",
        dump_only=True,
        metadata={"description": "duplicates left alone (on_duplicate=skip)"},
    )
    error_rows = fields.Integer(dump_only=True, metadata={"description": "rows not written"})
    error = fields.String(
        dump_only=True, allow_none=True, metadata={"description": "why a failed job stopped"}
    )
    created_by = fields.Integer(dump_only=True, allow_none=True)
    created_at = fields.DateTime(dump_only=True)
    started_at = fields.DateTime(dump_only=True, allow_none=True)
    finished_at = fields.DateTime(dump_only=True, allow_none=True)


class ImportDetailSchema(ImportSchema):
    errors_total = fields.Integer(dump_only=True)
    errors = fields.List(
        fields.Nested(RowErrorSchema),
        dump_only=True,
        metadata={"description": f"the first {service.ERRORS_SHOWN}; all in errors.csv"},
    )
