"""Conditional requests (RFC 9110 section 13) on a single resource: every representation
carries a strong `ETag`; `If-Match` compares strongly (a weak tag never matches, `*` matches
any current representation) and `If-None-Match` weakly; both are evaluated in the RFC's order
(section 13.2.2), on GET and HEAD against the representation read, on PATCH and DELETE
against the locked row before the change. A false `If-Match` is 412; a matching
`If-None-Match` is 304 to GET/HEAD and 412 otherwise. A header that is not the RFC's
`"*" / #entity-tag` is 400 before anything is read: werkzeug's parser (`request.if_match`),
which does the matching, is lenient (it skips what it cannot read and takes an unquoted word
for a tag), so a malformed header would silently mismatch, or even match.

`Blueprint.conditional` (crm_api.extensions) checks the syntax and marks a view; `document`
then lists both headers, the ETag on its 200 and the 304/412 answers in OpenAPI."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from typing import Any, cast

from flask import Response, current_app, request
from werkzeug.http import quote_etag

from crm_domain.errors import PreconditionFailed, ValidationFailed

# RFC 9110 section 13.1.2: only these answer 304; other methods answer 412.
NOT_MODIFIED_METHODS = frozenset({"GET", "HEAD"})
IF_MATCH = "If-Match"
IF_NONE_MATCH = "If-None-Match"
HEADERS = (IF_MATCH, IF_NONE_MATCH)
MALFORMED_CODE = "PRECONDITION_HEADER_INVALID"

# entity-tag = [ %s"W/" ] DQUOTE *etagc DQUOTE, etagc = %x21 / %x23-7E / obs-text (section
# 8.8.3; "W/" is case-sensitive). A list may hold empty elements (section 5.6.1). Written so
# that nothing backtracks: a separator character or a whole tag followed by a separator.
_ENTITY_TAG_LIST = re.compile(r'(?:[ \t,]|(?:W/)?"[\x21\x23-\x7e\x80-\xff]*"(?=[ \t]*(?:,|\Z)))*')


def is_well_formed(value: str) -> bool:
    """`"*" / #entity-tag` (RFC 9110 sections 13.1.1 and 13.1.2)."""
    return value == "*" or _ENTITY_TAG_LIST.fullmatch(value) is not None


def check_syntax() -> None:
    """400 for an If-Match or If-None-Match that is not `*` nor a list of quoted tags."""
    for name in HEADERS:
        value = request.headers.get(name)
        if value is not None and not is_well_formed(value):
            raise ValidationFailed(
                f'The {name} header must be "*" or a comma-separated list of quoted entity '
                'tags (e.g. "abc" or W/"abc")',
                code=MALFORMED_CODE,
                details={"header": name},
            )


def opaque_tag(data: Any) -> str:
    """The ETag of a dumped representation, unquoted (werkzeug quotes it)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _evaluate(tag: str) -> tuple[int, str] | None:
    """The status and header of the first false condition (If-Match, then If-None-Match)."""
    if IF_MATCH in request.headers and not request.if_match.contains(tag):
        return 412, IF_MATCH
    if IF_NONE_MATCH in request.headers and request.if_none_match.contains_weak(tag):
        return (304 if request.method in NOT_MODIFIED_METHODS else 412), IF_NONE_MATCH
    return None


MESSAGES = {
    IF_MATCH: "The resource was changed since you read it: If-Match does not match its ETag",
    IF_NONE_MATCH: "If-None-Match matches the resource's current ETag",
}


def _precondition_failed(tag: str, header: str) -> PreconditionFailed:
    return PreconditionFailed(
        MESSAGES[header], code="PRECONDITION_FAILED", details={"current_etag": quote_etag(tag)}
    )


def precondition(schema: Any) -> Callable[[Any], None] | None:
    """For PATCH and DELETE: a check the service runs on the freshly locked row before the
    change (412 when a condition is false); None without conditional headers."""
    if not any(name in request.headers for name in HEADERS):
        return None

    def check(obj: Any) -> None:
        tag = opaque_tag(schema.dump(obj))
        failed = _evaluate(tag)
        if failed is not None:
            raise _precondition_failed(tag, failed[1])

    return check


def with_etag(obj: Any, schema: Any) -> Response:
    """The representation with its ETag (one dump for both). On GET/HEAD the conditions are
    evaluated against it (304 or 412); a change evaluated them before it was made."""
    data = schema.dump(obj)
    tag = opaque_tag(data)
    failed = _evaluate(tag) if request.method in NOT_MODIFIED_METHODS else None
    if failed is not None and failed[0] == 412:
        raise _precondition_failed(tag, failed[1])
    response = Response(status=304) if failed else cast(Response, current_app.json.response(data))
    response.set_etag(tag)
    return response


# --- OpenAPI -------------------------------------------------------------------------------

DOC_KEY = "crm_conditional"
EXAMPLE_TAG = '"9b2d4c8e0a1f3b5d7c9e1a3b5d7f9e0c"'
ETAG_COMPONENT = "ETag"
# The document states the tags the API sends back (ASCII); the server takes the RFC's grammar.
_TAG_PATTERN = '(W/)?"[!#-~]*"'
_LIST_PATTERN = f"^(\\*|{_TAG_PATTERN}( *, *{_TAG_PATTERN})*)$"
PARAMETERS = {
    "IfMatch": {
        "name": IF_MATCH,
        "in": "header",
        "required": False,
        "description": (
            "Apply only if the current representation's ETag is one of these (strong "
            "comparison: a weak `W/` tag never matches) or, with `*`, if it exists; otherwise "
            f"412. Malformed (unquoted, garbage): 400 `{MALFORMED_CODE}`."
        ),
        "schema": {"type": "string", "pattern": _LIST_PATTERN, "example": EXAMPLE_TAG},
    },
    "IfNoneMatch": {
        "name": IF_NONE_MATCH,
        "in": "header",
        "required": False,
        "description": (
            "Unless the current representation's ETag is one of these (weak comparison: "
            "`W/` is ignored) or, with `*`, it exists: then 304 to a GET or HEAD (no body) "
            f"and 412 to a change. Malformed: 400 `{MALFORMED_CODE}`."
        ),
        "schema": {"type": "string", "pattern": _LIST_PATTERN, "example": EXAMPLE_TAG},
    },
}
ETAG_HEADER = {
    "description": "Strong validator of this representation: send it back as If-Match or "
    "If-None-Match",
    "schema": {"type": "string", "example": EXAMPLE_TAG},
}
FAILED_EXAMPLE = {
    "error": {
        "code": "PRECONDITION_FAILED",
        "message": MESSAGES[IF_MATCH],
        "details": {"current_etag": EXAMPLE_TAG},
    }
}


def register_components(spec: Any, error_schema: Any) -> None:
    """The parameters, header and responses `document` refers to."""
    spec.components.header(ETAG_COMPONENT, ETAG_HEADER)
    for name, parameter in PARAMETERS.items():
        spec.components.parameter(name, "header", parameter)
    spec.components.response(
        "NotModified",
        {
            "description": "If-None-Match matched: the representation you have is current",
            "headers": {"ETag": ETAG_COMPONENT},
        },
    )
    spec.components.response(
        "PreconditionFailed",
        {
            "description": "If-Match did not match, or If-None-Match did (details.current_etag)",
            "content": {"application/json": {"schema": error_schema, "example": FAILED_EXAMPLE}},
        },
    )


def document(doc: dict[str, Any], doc_info: dict[str, Any], *, method: str, **_: Any) -> Any:
    """Blueprint doc callback for views marked by `Blueprint.conditional`."""
    if not doc_info.get(DOC_KEY):
        return doc
    doc.setdefault("parameters", []).extend(PARAMETERS)
    responses = doc.setdefault("responses", {})
    ok = responses.get(200)
    if isinstance(ok, dict):
        ok.setdefault("headers", {})["ETag"] = ETAG_COMPONENT
    if method.upper() in NOT_MODIFIED_METHODS:
        responses["304"] = "NotModified"
    responses["412"] = "PreconditionFailed"
    return doc
