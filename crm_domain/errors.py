"""Domain errors. Each carries a stable code; the API maps the kind to an HTTP status."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """Base class: `code` is UPPER_SNAKE, `kind` tells the category of failure."""

    kind = "invalid"
    code = "DOMAIN_ERROR"

    def __init__(
        self, message: str, *, code: str | None = None, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details: dict[str, Any] = details or {}


class ValidationFailed(DomainError):
    kind = "invalid"
    code = "VALIDATION_ERROR"


class Unauthorized(DomainError):
    kind = "unauthorized"
    code = "UNAUTHORIZED"


class Forbidden(DomainError):
    kind = "forbidden"
    code = "FORBIDDEN"


class NotFound(DomainError):
    kind = "not_found"
    code = "NOT_FOUND"


class Conflict(DomainError):
    kind = "conflict"
    code = "CONFLICT"


class Gone(DomainError):
    """The thing existed but cannot be used any more (an expired or used invitation)."""

    kind = "gone"
    code = "GONE"


class PreconditionFailed(DomainError):
    kind = "precondition_failed"
    code = "PRECONDITION_FAILED"


class Unprocessable(DomainError):
    """Well-formed but not acceptable as it stands (an idempotency key reused for another
    request). The API's validation errors are 400s; this kind is 422."""

    kind = "unprocessable"
    code = "UNPROCESSABLE"
