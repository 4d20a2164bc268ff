"""The id of the request a piece of work belongs to, for log lines and outbox events.

The API binds it for each HTTP request (crm_api.observability), the workers for each task
(crm_worker.observability); the log filter (crm_domain.logs) and `outbox.record()` read it.
A ContextVar, so every thread (gthread workers) and task sees only its own."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token

# An id a client may choose: 1-128 letters, digits and - _ . : @ + = / (uuids, trace ids,
# base64). No spaces, quotes, brackets or control characters: an id ends up in log lines and
# database rows, where nothing may forge or break a line. deploy/nginx.conf keeps a client's
# id by the same pattern.
ACCEPTED = r"[A-Za-z0-9._:@+=/-]{1,128}"
_ACCEPTED = re.compile(ACCEPTED)

_current: ContextVar[str | None] = ContextVar("crm_request_id", default=None)


def current() -> str | None:
    return _current.get()


def new() -> str:
    return uuid.uuid4().hex


def accept(offered: str | None) -> str:
    """The client's id when it matches ACCEPTED, a new one otherwise."""
    if offered and _ACCEPTED.fullmatch(offered):
        return offered
    return new()


def bind(value: str | None) -> Token[str | None]:
    return _current.set(value)


def reset(token: Token[str | None]) -> None:
    _current.reset(token)


@contextmanager
def bound(value: str | None) -> Iterator[None]:
    """`value` is the current request id inside the block, the previous one after it."""
    token = bind(value)
    try:
        yield
    finally:
        reset(token)
