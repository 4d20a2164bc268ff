"""CSV downloads: streamed, chunk by chunk, as the domain produces them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Response, stream_with_context

from crm_domain.services.transfer import exports

from .access import database

CSV_MIMETYPE = "text/csv"


def csv_download(export: exports.Export, filename: str) -> Response:
    """A streamed text/csv attachment of `export` (built, and its filters checked, already)."""
    chunks: Iterator[str] = exports.stream(database(), export)
    return Response(
        stream_with_context(chunks),
        mimetype=CSV_MIMETYPE,
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Cache-Control": "no-store",
        },
    )


def csv_response_doc(example: str, description: str = "CSV (UTF-8)") -> dict[str, Any]:
    """The OpenAPI 200 response of a CSV download."""
    return {
        "200": {
            "description": description,
            "content": {CSV_MIMETYPE: {"schema": {"type": "string"}, "example": example}},
        }
    }
