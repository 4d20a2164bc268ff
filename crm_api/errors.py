"""One error body everywhere: {"error": {"code", "message", "details"}}."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from flask import Flask, Response, jsonify
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException

from crm_domain.errors import DomainError

log = logging.getLogger(__name__)

STATUS_BY_KIND = {
    "invalid": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "conflict": 409,
    "gone": 410,
    "precondition_failed": 412,
    "unprocessable": 422,
}

DEFAULT_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    410: "GONE",
    412: "PRECONDITION_FAILED",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    429: "TOO_MANY_REQUESTS",
    500: "INTERNAL_ERROR",
    503: "SERVICE_UNAVAILABLE",
}

# Every 503 tells clients and proxies when to try again: a dependency (the database) is away,
# and a restart or failover is over in seconds; the pool reconnects on the next request.
RETRY_AFTER_SECONDS = 5


def error_response(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    response = jsonify({"error": {"code": code, "message": message, "details": details or {}}})
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    if status == 503:
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def http_exception_response(error: HTTPException) -> Response:
    """Render werkzeug/webargs/flask-smorest aborts in the unified shape.

    webargs reports validation failures with `data["messages"]`, keyed by location; those
    are request validation errors and always answer 400 (never 422)."""
    status = error.code or 500
    data: dict[str, Any] = getattr(error, "data", None) or {}
    # werkzeug's own headers (e.g. Allow on a 405, which RFC 9110 requires); the body is ours
    headers = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
    headers.update(data.get("headers") or {})
    if status == 422 or "messages" in data:
        status = 400
        details = {"errors": data.get("messages") or data.get("errors") or {}}
        return error_response(
            status, "VALIDATION_ERROR", "Request validation failed", details, headers
        )
    code = data.get("code") or DEFAULT_CODES.get(
        status, HTTPStatus(status).phrase.upper().replace(" ", "_")
    )
    if status >= 500:
        message = "Internal server error"
    else:
        message = data.get("message") or error.description or HTTPStatus(status).phrase
    details = data.get("details") or ({"errors": data["errors"]} if data.get("errors") else {})
    return error_response(status, code, message, details, headers)


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(DomainError)
    def _domain_error(error: DomainError) -> Response:
        return error_response(
            STATUS_BY_KIND.get(error.kind, 400), error.code, error.message, error.details
        )

    @app.errorhandler(IntegrityError)
    def _integrity_error(error: IntegrityError) -> Response:
        # The service layer checks first; this is the race that slipped past the checks.
        log.info("integrity error mapped to 409: %s", error.orig)
        return error_response(409, "CONFLICT", "The change conflicts with the current data")

    @app.errorhandler(OperationalError)
    def _db_unavailable(error: OperationalError) -> Response:
        log.error("database error: %s", error.orig)
        return error_response(503, "SERVICE_UNAVAILABLE", "The database is unavailable")

    @app.errorhandler(PoolTimeout)
    def _pool_exhausted(error: PoolTimeout) -> Response:
        # Every pooled connection stayed busy for the whole pool timeout: the process is
        # overloaded (or its queries hang); the client may come back, as for a 503 above.
        log.error("database pool checkout timed out: %s", error)
        return error_response(503, "SERVICE_UNAVAILABLE", "The server is at capacity")

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        if isinstance(error, HTTPException):
            return http_exception_response(error)
        log.exception("unhandled error")
        return error_response(500, "INTERNAL_ERROR", "Internal server error")
