"""The id of the request a piece of work belongs to, for log lines and outbox events.

The API binds it for each HTTP request (crm_api.observability), the workers for each task
(crm_worker.observability); the log filter (crm_domain.logs) and `outbox.record()` read it.
A ContextVar, so every thread (gthread workers) and task sees only its own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token

MAX_LENGTH = 128

_current: ContextVar[str | None] = ContextVar("crm_request_id", default=None)


def current() -> str | None:
    return _current.get()


def new() -> str:
    return uuid.uuid4().hex


def accept(offered: str | None) -> str:
    """The client's id when it is 1-128 printable ASCII characters, a new one otherwise (an
    id ends up in log lines and database rows: nothing that could forge or break a line)."""
    if offered and len(offered) <= MAX_LENGTH and offered.isascii() and offered.isprintable():
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
