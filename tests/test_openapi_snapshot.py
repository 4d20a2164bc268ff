"""The published API does not change by accident: the served OpenAPI document is byte for
byte the committed snapshot (tests/openapi_snapshot.json). A deliberate API change
regenerates it in the same commit with `make openapi-snapshot` (scripts/openapi_snapshot.py)."""

from __future__ import annotations

import difflib

from flask import Flask

from scripts.openapi_snapshot import SNAPSHOT, served_document


def test_the_served_openapi_document_is_the_committed_snapshot(app: Flask) -> None:
    served = served_document(app)
    committed = SNAPSHOT.read_bytes()
    if served != committed:
        diff = difflib.unified_diff(
            committed.decode().splitlines(),
            served.decode().splitlines(),
            "tests/openapi_snapshot.json",
            "served",
            lineterm="",
            n=2,
        )
        raise AssertionError(
            "the OpenAPI document changed; if that is intended, run `make openapi-snapshot`\n"
            + "\n".join(list(diff)[:80])
        )
