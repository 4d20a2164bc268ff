"""The access line of the lean AccessLogger is the line gunicorn's own logger would write."""

from __future__ import annotations

import datetime as dt
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from gunicorn.config import Config
from gunicorn.glogging import Logger, SafeAtoms

from crm_api.access_log import JSON_ACCESS_MESSAGE, TEXT_ACCESS_FORMAT, AccessFields, AccessLogger
from crm_api.observability import API_KEY_ID_KEY, AUTH_KEY, ORGANIZATION_KEY, ROUTE_KEY, USER_KEY


def _exchange(signed_in: bool) -> tuple[Any, Any, dict[str, Any]]:
    environ: dict[str, Any] = {
        "REMOTE_ADDR": "203.0.113.7",
        "REQUEST_METHOD": "PATCH",
        "PATH_INFO": '/api/v1/deals/42"',
        "QUERY_STRING": "token=secret",
        "RAW_URI": "/api/v1/deals/42?token=secret",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_AUTHORIZATION": "Bearer secret",
        "HTTP_USER_AGENT": "test",
        "wsgi.url_scheme": "http",
        ROUTE_KEY: "/api/v1/deals/<int:deal_id>",
        AUTH_KEY: "key" if signed_in else "none",
    }
    if signed_in:
        environ.update({USER_KEY: 7, ORGANIZATION_KEY: 3, API_KEY_ID_KEY: 11})
    headers = [("Content-Type", "application/json"), ("X-Request-ID", "rid-1"), ("ETag", '"a"')]
    resp = SimpleNamespace(status="200 OK", sent=271, headers=headers)
    req = SimpleNamespace(headers=[("AUTHORIZATION", "Bearer secret"), ("HOST", "x")])
    return resp, req, environ


FIELDS = (
    "remote_addr", "method", "path", "route", "auth", "request_id", "status", "bytes",
    "user_id", "organization_id", "api_key_id", "duration_ms",
)  # fmt: skip


@pytest.mark.parametrize("signed_in", [True, False])
def test_the_lean_atoms_give_gunicorns_lines(signed_in: bool) -> None:
    resp, req, environ = _exchange(signed_in)
    took = dt.timedelta(milliseconds=12, microseconds=345)
    ours = SafeAtoms(AccessLogger(Config()).atoms(resp, req, environ, took))
    theirs = SafeAtoms(Logger(Config()).atoms(resp, req, environ, took))

    assert TEXT_ACCESS_FORMAT % ours == TEXT_ACCESS_FORMAT % theirs
    assert JSON_ACCESS_MESSAGE % ours == JSON_ACCESS_MESSAGE % theirs
    fields = []
    for atoms in (ours, theirs):
        record = logging.LogRecord("gunicorn.access", logging.INFO, "", 0, "", (), None)
        record.args = atoms
        AccessFields().filter(record)
        fields.append({k: v for k, v in vars(record).items() if k in FIELDS})
    assert fields[0] == fields[1] and len(fields[0]) == len(FIELDS)
    assert fields[0]["request_id"] == "rid-1" and fields[0]["duration_ms"] == 12.345
    assert "secret" not in TEXT_ACCESS_FORMAT % ours
