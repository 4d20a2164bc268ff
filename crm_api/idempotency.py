"""`Idempotency-Key` on POST and PATCH: the first answer is replayed to the same caller for
IDEMPOTENCY_KEY_HOURS instead of doing the work again (crm_domain.idempotency keeps them).

How a request with a key runs (`run`, around the view, after authentication):
- the key is 1 to 255 printable ASCII characters (400 IDEMPOTENCY_KEY_INVALID otherwise);
- the view's `transaction()` blocks all use one transaction of the request's (an `Attempt`),
  opened by the first of them with the key's claim, so that the view's body has been read
  and validated by then (the fingerprint covers the method, path, query and body: JSON by
  its content, not its spelling; a multipart upload by its fields and files' content);
- the first use runs the view; its answer (status, body, Content-Type, Location, ETag) is
  stored right before the transaction commits, with the change. An error answer (4xx/5xx)
  rolls everything back and stores nothing: nothing was done, a retry runs again;
- a later use with the same fingerprint gets the stored answer with `Idempotent-Replayed:
  true` (the view's work is never done); with another fingerprint 422 IDEMPOTENCY_KEY_REUSED;
  while the first use is still running it waits up to IDEMPOTENCY_WAIT_SECONDS for it, then
  409 IDEMPOTENCY_KEY_IN_USE with Retry-After.

Routes without a caller (registration, login, refresh) do not take the header, nor does
`POST /api-keys`: its answer is a secret that is stored nowhere, a replay could not show it."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Callable
from typing import Any, cast

from flask import Response, current_app, g, request
from sqlalchemy.orm import Session

from crm_domain import idempotency
from crm_domain.context import Actor
from crm_domain.errors import ValidationFailed
from crm_domain.idempotency import Answer, KeyInUse, Scope
from crm_domain.settings import Settings

from . import access
from .errors import error_response

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
METHODS = frozenset({"POST", "PATCH"})
KEPT_HEADERS = ("Content-Type", "Location", "ETag")
ATTEMPT = "crm_idempotency"  # g: the request's Attempt
_KEY = re.compile(rf"[\x20-\x7e]{{1,{MAX_KEY_LENGTH}}}")
_FORM_TYPES = frozenset({"multipart/form-data", "application/x-www-form-urlencoded"})


class _Replay(Exception):
    """Raised out of the view's first `transaction()`: answer with the stored answer."""

    def __init__(self, answer: Answer) -> None:
        super().__init__("replay")
        self.answer = answer


class Attempt:
    """One request's use of its key: the request's one transaction, held open from the claim
    (the view's first `transaction()`) until the answer is stored with the change."""

    def __init__(self, scope: Scope, key: str) -> None:
        self.scope = scope
        self.key = key
        self.session: Session | None = None
        self.row_id: int | None = None
        self.active = True  # False after an error: later transactions are ordinary ones

    def open(self) -> Session:
        """The request's session; the first call claims the key (raises _Replay, KeyReused,
        KeyInUse when this request is not the key's first use)."""
        if self.session is not None:
            return self.session
        settings: Settings = current_app.extensions["crm_settings"]
        session = access.database().new_session()
        try:
            claimed = idempotency.claim(
                session,
                self.scope,
                self.key,
                fingerprint(),
                ttl=dt.timedelta(hours=settings.idempotency_key_hours),
                wait=settings.idempotency_wait_seconds,
            )
        except BaseException:
            session.close()
            self.active = False
            raise
        if isinstance(claimed, Answer):
            session.close()  # rolls back: nothing was written
            self.active = False
            raise _Replay(claimed)
        self.session, self.row_id = session, claimed
        return session

    def abandon(self) -> None:
        """Roll back whatever the request did (its key's claim with it)."""
        self.active = False
        if self.session is not None:
            self.session.close()
            self.session = None

    def finish(self, response: Response) -> Response:
        """Store a success answer with the change and commit both; roll back an error."""
        session, self.session, self.active = self.session, None, False
        if session is None:  # the view opened no transaction: nothing to keep
            return response
        try:
            if response.status_code >= 400:
                return response  # closing rolls back: nothing done, nothing stored
            assert self.row_id is not None
            kept = {
                name: response.headers[name] for name in KEPT_HEADERS if name in response.headers
            }
            idempotency.record(
                session, self.row_id, Answer(response.status_code, kept, response.get_data())
            )
            session.commit()
        finally:
            session.close()
        if g.pop(access.FORGET_AGAIN, False):
            access.forget_access()  # the membership change is visible only now
        return response


def attempt() -> Attempt | None:
    """The request's attempt while its transaction may still be claimed or used."""
    found = cast(Attempt | None, g.get(ATTEMPT))
    return found if found is not None and found.active else None


def run(view: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call the view, idempotently when the request carries the header (POST and PATCH)."""
    key = request.headers.get(HEADER)
    if key is None or request.method not in METHODS:
        return view(*args, **kwargs)
    if not _KEY.fullmatch(key):
        raise ValidationFailed(
            f"{HEADER} must be 1 to {MAX_KEY_LENGTH} printable ASCII characters",
            code="IDEMPOTENCY_KEY_INVALID",
            details={"length": len(key), "max_length": MAX_KEY_LENGTH},
        )
    current = Attempt(_scope(), key)
    setattr(g, ATTEMPT, current)
    try:
        response = current_app.make_response(view(*args, **kwargs))
    except _Replay as replay:
        return _replayed(replay.answer)
    except KeyInUse as exc:
        current.abandon()
        return error_response(409, exc.code, exc.message, exc.details, {"Retry-After": "1"})
    except BaseException:
        current.abandon()
        raise
    return current.finish(response)


def _scope() -> Scope:
    actor = cast(Actor | None, g.get("actor"))
    if actor is not None:
        return Scope(actor.organization_id, actor.user_id, actor.api_key_id or 0)
    return Scope(0, access.current_user_id())  # a route outside any organization


def _replayed(answer: Answer) -> Response:
    response = current_app.response_class(answer.body, status=answer.status)
    for name, value in answer.headers.items():
        response.headers[name] = value
    response.headers[REPLAYED_HEADER] = "true"
    return response


def fingerprint() -> str:
    """SHA-256 of what makes two requests the same request: method, path, query, body."""
    digest = hashlib.sha256()
    for part in (request.method, request.path, _canonical(sorted(request.args.items(multi=True)))):
        digest.update(part.encode("utf-8", "surrogatepass") + b"\0")
    digest.update(_body_digest())
    return digest.hexdigest()


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _body_digest() -> bytes:
    """JSON by its content; forms and uploads by their fields and files; else the bytes."""
    if request.mimetype in _FORM_TYPES:
        files = [
            (name, upload.filename or "", _stream_digest(upload.stream))
            for name, upload in request.files.items(multi=True)
        ]
        form = sorted(request.form.items(multi=True))
        return _canonical([form, sorted(files)]).encode()
    if request.is_json:
        try:
            body = request.get_json(silent=True)
            if body is not None:
                return _canonical(body).encode()
        except (ValueError, RecursionError):
            pass
    return hashlib.sha256(request.get_data(cache=True)).digest()


def _stream_digest(stream: Any) -> str:
    digest = hashlib.sha256()
    stream.seek(0)
    for chunk in iter(lambda: stream.read(1 << 16), b""):
        digest.update(chunk)
    stream.seek(0)
    return digest.hexdigest()
