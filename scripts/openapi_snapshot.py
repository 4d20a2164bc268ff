"""Write the API's OpenAPI document, byte for byte as `GET /api/v1/openapi.json` serves it,
to tests/openapi_snapshot.json; tests/test_openapi_snapshot.py fails when the served document
differs from it.

A refactoring leaves the document as it is. A deliberate API change regenerates it in the
same commit (`make openapi-snapshot`), so the diff of the snapshot shows reviewers what the
change did to the published API."""

from __future__ import annotations

import sys
from pathlib import Path

from flask import Flask

SNAPSHOT = Path(__file__).resolve().parent.parent / "tests" / "openapi_snapshot.json"
DOCUMENT_PATH = "/api/v1/openapi.json"


def served_document(app: Flask) -> bytes:
    """The document exactly as the app serves it."""
    response = app.test_client().get(DOCUMENT_PATH)
    if response.status_code != 200:
        raise RuntimeError(f"{DOCUMENT_PATH} answered {response.status_code}")
    return response.get_data()


def main() -> int:
    from crm_api import create_app

    document = served_document(create_app())
    SNAPSHOT.write_bytes(document)
    print(f"wrote {SNAPSHOT} ({len(document)} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
