"""Project subclasses of flask-smorest's Api and Blueprint, and the request context helpers.

Resource modules import Blueprint from here: it knows how to require a login
(`login_required`: a login token), a tenant (`tenant_required`: a login token or an API key
and the organization), runs POST and PATCH with `Idempotency-Key` idempotently
(crm_api.idempotency), and documents all of it in OpenAPI."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, cast

import flask_smorest
import marshmallow as ma
from flask import g, request
from sqlalchemy.orm import Session
from webargs.flaskparser import FlaskParser
from werkzeug.exceptions import HTTPException

from crm_domain.context import Actor

from . import conditional, idempotency
from .access import (
    ORG_HEADER,
    READ_METHODS,
    authenticate,
    check_access,
    database,
    require_login_token,
    resolve_actor,
)
from .errors import http_exception_response

F = TypeVar("F", bound=Callable[..., Any])

ORG_PARAMETER = "OrganizationId"
IDEMPOTENCY_PARAMETER = "IdempotencyKey"
# Not flask-smorest's lazily registered UNPROCESSABLE_ENTITY: Python 3.13 renamed that
# HTTPStatus member (UNPROCESSABLE_CONTENT), so the document would differ between versions.
IDEMPOTENCY_REUSED_RESPONSE = "IdempotencyKeyReused"
BEARER_SCHEME = "bearerAuth"
API_KEY_SCHEME = "apiKeyAuth"


class Parser(FlaskParser):
    """Request validation failures are 400, never 422."""

    DEFAULT_VALIDATION_STATUS = 400

    def _raw_load_json(self, req: Any) -> Any:
        try:
            return super()._raw_load_json(req)
        except RecursionError as exc:  # nested deeper than the JSON decoder follows
            raise json.JSONDecodeError("JSON nested too deeply", "<body>", 0) from exc

    def _load_location_data(self, *, schema: ma.Schema, req: Any, location: str) -> Any:
        data = super()._load_location_data(schema=schema, req=req, location=location)
        if data is ma.missing and location == "json" and req.method == "PATCH":
            # no body, an empty one, or not JSON: a PATCH that would silently change nothing
            raise ma.ValidationError(
                {"_schema": ["A JSON object body is required (Content-Type: application/json)."]}
            )
        bad = _field_with_bad_text(req.args if location == "query" else data)
        if bad is not None:
            raise ma.ValidationError({bad[0]: [bad[1]]})
        return data


def _text_problem(text: str) -> str | None:
    """Why PostgreSQL (or any UTF-8 encoder) cannot take this string, or None."""
    if "\x00" in text:  # PostgreSQL cannot store NUL in text or JSONB
        return "Must not contain NUL characters."
    if not text.isascii():
        try:  # JSON's "\ud800" escapes decode to unpaired surrogates, which UTF-8 cannot encode
            text.encode()
        except UnicodeEncodeError:
            return "Must be valid Unicode (no unpaired surrogates)."
    return None


def _field_with_bad_text(data: Any) -> tuple[str, str] | None:
    """(top-level field, message) for the first key or value that is a string holding NUL or
    an unpaired surrogate ("_schema" if outside any field, or the key itself is bad), or None.
    Iterative: the JSON may be nested as deep as the decoder allows."""
    if hasattr(data, "items"):
        pairs = list(data.items(multi=True) if hasattr(data, "getlist") else data.items())
    else:
        pairs = [("_schema", data)]
    for field, value in pairs:
        stack = [field, value]
        while stack:
            item = stack.pop()
            problem = _text_problem(item) if isinstance(item, str) else None
            if problem is not None:
                name_ok = isinstance(field, str) and _text_problem(field) is None
                return (field if name_ok else "_schema"), problem
            if isinstance(item, dict):
                stack.extend(item.keys())
                stack.extend(item.values())
            elif isinstance(item, list):
                stack.extend(item)
    return None


class ErrorBody(ma.Schema):
    code = ma.fields.String(required=True, metadata={"example": "VALIDATION_ERROR"})
    message = ma.fields.String(required=True)
    details = ma.fields.Dict(required=True)


class ErrorSchema(ma.Schema):
    """The unified error body."""

    error = ma.fields.Nested(ErrorBody, required=True)


class Api(flask_smorest.Api):
    ERROR_SCHEMA = ErrorSchema

    def handle_http_exception(self, error: HTTPException) -> Any:
        return http_exception_response(error)


def _document_access(
    doc: dict[str, Any], doc_info: dict[str, Any], *, method: str = "", **_: Any
) -> dict[str, Any]:
    """Blueprint doc callback: security (a login token; or an API key where one works), the
    tenant header, the Idempotency-Key header and the auth error responses."""
    access = doc_info.get("crm_access")
    responses = doc.setdefault("responses", {})
    if access == "public":
        doc["security"] = []
    if access in ("login", "tenant"):
        responses.setdefault("401", "UNAUTHORIZED")
        if access == "login" or not doc_info.get("crm_api_keys", True):
            responses.setdefault("403", "FORBIDDEN")  # API_KEY_NOT_ALLOWED
        if method.upper() in idempotency.METHODS and doc_info.get("crm_idempotent", True):
            doc.setdefault("parameters", []).append(IDEMPOTENCY_PARAMETER)
            responses.setdefault("400", "BAD_REQUEST")
            responses.setdefault("409", "CONFLICT")
            responses.setdefault("422", IDEMPOTENCY_REUSED_RESPONSE)
    if access == "tenant":
        if doc_info.get("crm_api_keys", True):
            doc["security"] = [{BEARER_SCHEME: []}, {API_KEY_SCHEME: []}]
        doc.setdefault("parameters", []).append(ORG_PARAMETER)
        responses.setdefault("400", "BAD_REQUEST")
        responses.setdefault("403", "FORBIDDEN")
    return doc


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = Parser()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._prepare_doc_cbks.append(_document_access)
        self._prepare_doc_cbks.append(conditional.document)

    @staticmethod
    def _mark(func: Any, key: str, value: Any) -> None:
        """Leave `key` in the view's doc info for the doc callbacks."""
        apidoc = getattr(func, "_apidoc", None)
        if apidoc is None:
            apidoc = func._apidoc = {}
        apidoc[key] = value

    def login_required(self, func: F) -> F:
        """Require a valid, unrevoked access token (an API key gets 403 API_KEY_NOT_ALLOWED:
        these routes act outside the key's organization)."""

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            authenticate()
            require_login_token()
            check_access(None)
            return idempotency.run(func, *args, **kwargs)

        self._mark(wrapper, "crm_access", "login")
        return cast(F, wrapper)

    def tenant_required(
        self, func: F | None = None, *, api_keys: bool = True, idempotent: bool = True
    ) -> Any:
        """Require a login token or an API key and the organization (X-Organization-Id, which
        a key may leave out); sets g.actor. `api_keys=False`: a login token only.
        `idempotent=False`: the route does not take Idempotency-Key (its answer is a secret
        kept nowhere)."""
        if func is None:
            return functools.partial(self.tenant_required, api_keys=api_keys, idempotent=idempotent)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            authenticate()
            if not api_keys:
                require_login_token()
            g.actor = resolve_actor(request.headers.get(ORG_HEADER))
            if not idempotent:
                return func(*args, **kwargs)
            return idempotency.run(func, *args, **kwargs)

        self._mark(wrapper, "crm_access", "tenant")
        self._mark(wrapper, "crm_api_keys", api_keys)
        self._mark(wrapper, "crm_idempotent", idempotent)
        return cast(F, wrapper)

    def conditional(self, func: F) -> F:
        """Honour If-Match / If-None-Match (crm_api.conditional): a malformed one is 400
        before the view runs; OpenAPI lists both, the ETag and the 304/412 answers."""

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            conditional.check_syntax()
            return func(*args, **kwargs)

        self._mark(wrapper, conditional.DOC_KEY, True)
        return cast(F, wrapper)

    def arguments(self, schema: Any, *args: Any, **kwargs: Any) -> Any:
        """Argument schemas are built once, not by webargs on every request."""
        if isinstance(schema, type):
            schema = schema()
        return super().arguments(schema, *args, **kwargs)

    def alt_response(self, status_code: Any, response: Any = None, **options: Any) -> Any:
        """Alternative (error) responses use the unified error body unless told otherwise."""
        if response is None and options.get("schema") is None:
            options["schema"] = ErrorSchema
        return super().alt_response(status_code, response, **options)

    def public(self, func: F) -> F:
        """Document an operation as needing no token."""
        self._mark(func, "crm_access", "public")
        return func


@contextmanager
def transaction() -> Iterator[Session]:
    """The request's database work: one transaction, except for GET and HEAD, which only
    read (Database.reads: no BEGIN/COMMIT round trips; a write through it raises). A write
    with Idempotency-Key: every block uses the request's one transaction, which commits
    with the stored answer after the view (crm_api.idempotency)."""
    db = database()
    if request.method in READ_METHODS:
        with db.reads() as session:
            yield session
        return
    held = idempotency.attempt()
    if held is None:
        with db.transaction() as session:
            yield session
        return
    session = held.open()
    try:
        yield session
    except BaseException:
        held.abandon()  # as an ordinary transaction would roll back
        raise


def current_actor() -> Actor:
    return cast(Actor, g.actor)
