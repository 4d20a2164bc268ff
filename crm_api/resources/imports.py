"""CSV imports: upload (202, run by a worker), progress, per-row errors, retry."""

from __future__ import annotations

from typing import Any

from flask import current_app, url_for
from flask.views import MethodView

from crm_domain import csvio
from crm_domain.services.transfer import custom_columns
from crm_domain.services.transfer import imports as service
from crm_domain.settings import Settings

from ..exports import csv_download, csv_response_doc
from ..extensions import current_actor, transaction
from ..schemas import PageArgs, page_of
from ..uploads import ImportsBlueprint, large_upload
from .import_schemas import (
    EXAMPLE_JOB,
    PENDING,
    ImportDetailSchema,
    ImportSchema,
    ImportUploadSchema,
)

blp = ImportsBlueprint(
    "imports", __name__, url_prefix="/imports", description="CSV imports of contacts and deals"
)


def _settings() -> Settings:
    return current_app.extensions["crm_settings"]  # type: ignore[no-any-return]


class _Detail:
    """A job with its error count and first errors, for ImportDetailSchema."""

    def __init__(self, session: Any, job: Any) -> None:
        self.job = job
        self.errors_total = service.error_count(session, job.id)
        self.errors = service.first_errors(session, job.id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.job, name)


@blp.route("")
class Imports(MethodView):
    @blp.tenant_required
    @blp.arguments(PageArgs, location="query")
    @blp.response(
        200,
        page_of(ImportSchema),
        example={
            "items": [EXAMPLE_JOB],
            "total": 1,
            "page": 1,
            "page_size": 20,
            "pages": 1,
            "next_cursor": None,
        },
    )
    def get(self, args: dict[str, Any]) -> Any:
        """The organization's imports, newest first"""
        with transaction() as session:
            return service.list_jobs(session, current_actor(), PageArgs.page_request(args))

    @blp.tenant_required
    @large_upload
    @blp.arguments(
        ImportUploadSchema,
        location="multipart",
        example={
            "file": "contacts.csv (the file's bytes)",
            "kind": "contacts",
            "on_duplicate": "skip",
        },
    )
    @blp.response(
        202,
        ImportSchema,
        example={**EXAMPLE_JOB, **PENDING},
        headers={"Location": {"schema": {"type": "string"}, "description": "the job"}},
    )
    @blp.alt_response(413, description="The body is larger than IMPORT_MAX_BYTES (20 MiB)")
    def post(self, data: dict[str, Any]) -> Any:
        """Upload a CSV of contacts or deals; a worker imports it (poll GET /imports/{id}).

        The file is checked now: UTF-8 (a BOM is fine), well-formed CSV, the kind's header
        (contacts: name, email, phone, owner_email; deals: title, amount, currency, status,
        stage, contact_id, contact_email, owner_email; plus a column per custom field, its
        header the key), at least one row; each of these is a
        400 (CSV_EMPTY, CSV_NOT_UTF8, CSV_MALFORMED, CSV_MISSING_COLUMNS,
        CSV_UNKNOWN_COLUMNS, CSV_DUPLICATE_COLUMNS, CSV_NO_ROWS). Rows are validated by the
        worker like POST /contacts and /deals; rows that fail are reported with their row
        number and skipped. Members import rows owned by themselves (owner_email may name
        only them); manager and above may name any member."""
        upload = data["file"]
        with transaction() as session:  # a column per custom field too (header = key)
            org = current_actor().organization_id
            custom = custom_columns.import_definitions(session, org, data["kind"])
        layout = csvio.inspect(upload.stream, data["kind"], tuple(custom))
        upload.stream.seek(0)
        content = upload.stream.read()
        with transaction() as session:
            job = service.create(
                session,
                current_actor(),
                kind=data["kind"],
                on_duplicate=data["on_duplicate"],
                filename=upload.filename or "upload.csv",
                content=content,
                rows_total=layout.rows,
            )
        return job, 202, {"Location": url_for("imports.ImportById", import_id=job.id)}


@blp.route("/<int:import_id>")
class ImportById(MethodView):
    @blp.tenant_required
    @blp.response(
        200,
        ImportDetailSchema,
        example={
            **EXAMPLE_JOB,
            "errors_total": 5,
            "errors": [
                {
                    "row": 14,
                    "field": "email",
                    "code": "VALIDATION_ERROR",
                    "message": "Not a valid email address.",
                },
                {
                    "row": 20,
                    "field": "owner_email",
                    "code": "OWNER_NOT_FOUND",
                    "message": "The owner is not a member of this organization",
                },
            ],
        },
    )
    @blp.alt_response(404, description="Not found in this organization")
    def get(self, import_id: int) -> Any:
        """An import's status, progress, counts and its first row errors"""
        with transaction() as session:
            return _Detail(session, service.get(session, current_actor(), import_id))


@blp.route("/<int:import_id>/errors.csv")
class ImportErrors(MethodView):
    @blp.tenant_required
    @blp.doc(
        responses=csv_response_doc(
            "row,field,code,message\r\n"
            "14,email,VALIDATION_ERROR,Not a valid email address.\r\n"
            "20,owner_email,OWNER_NOT_FOUND,The owner is not a member of this organization\r\n"
        )
    )
    @blp.alt_response(404, description="Not found in this organization")
    def get(self, import_id: int) -> Any:
        """Every row error of an import as CSV: row, field, code, message"""
        with transaction() as session:
            service.get(session, current_actor(), import_id)
        return csv_download(service.error_report(import_id), f"import-{import_id}-errors.csv")


@blp.route("/<int:import_id>/retry")
class ImportRetry(MethodView):
    @blp.tenant_required
    @blp.response(202, ImportSchema, example={**EXAMPLE_JOB, **PENDING, "error": None})
    @blp.alt_response(404, description="Not found in this organization")
    @blp.alt_response(409, description="Only a failed import can be retried")
    def post(self, import_id: int) -> Any:
        """Run a failed import again: it resumes after the last row written (nothing twice).
        Members may retry only their own imports."""
        with transaction() as session:
            return service.retry(session, current_actor(), import_id)
