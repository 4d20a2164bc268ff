"""CSV downloads: streamed, chunk by chunk, as the domain produces them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import marshmallow as ma
from flask import Response, stream_with_context
from marshmallow import fields

from crm_domain.services.transfer import exports

from .access import database

CSV_MIMETYPE = "text/csv"


class ExportArgs(ma.Schema):
    """The query parameters of every export besides its list's filters."""

    raw = fields.Boolean(
        load_default=False,
        metadata={
            "description": "false (the default): text cells starting with =, +, -, @, a tab or"
            " a carriage return get a leading ' so a spreadsheet shows them instead of running"
            " them as formulas (the import removes it again). true: every cell exactly as"
            " stored, for programs that never open the file in a spreadsheet. Amounts and ids"
            " are numbers either way."
        },
    )


def csv_download(export: exports.Export, filename: str, *, raw: bool = False) -> Response:
    """A streamed text/csv attachment of `export` (built, and its filters checked, already);
    formulas neutralized unless `raw`."""
    chunks: Iterator[str] = exports.stream(database(), export, raw=raw)
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
