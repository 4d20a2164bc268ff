"""API keys on the request path: recognising one in `Authorization: Bearer crm_...`,
verifying it, and marking it used.

A key's facts (its row and its user's current role, one indexed query) are remembered per
process for ACCESS_CHECK_CACHE_SECONDS, like the login-session check of a token: a key
revoked, a user demoted or removed elsewhere is seen within that time, and this process
forgets at once what it changed itself (crm_api.access.forget_access). Each request still
hashes the presented key and compares it in constant time with the stored hash, so a memo
hit costs a SHA-256 of 60 bytes; only found keys are remembered (a flood of made-up keys
cannot push real ones out).

`last_used_at` is written at most once a minute per key: only when the facts read say it is
a minute old, at most once a minute per process, and the UPDATE itself only writes a value a
minute old (several processes cannot write it twice).

The key itself is never logged nor kept: the memo is keyed by the public lookup part."""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import cast

from flask import current_app, g, request

from crm_domain.db import Database
from crm_domain.errors import Unauthorized
from crm_domain.services.records import api_keys
from crm_domain.services.records.api_keys import KeyFacts

from .memo import Memo

REQUEST_KEY = "crm_api_key"  # g: the request's verified key (None: no key)
_REFUSED = "crm_api_key_refused"  # g: why the request's key was refused


def presented_key(header: str) -> str | None:
    """The API key of an `Authorization: Bearer crm_...` header, else None (a JWT, nothing)."""
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value.startswith(api_keys.PREFIX):
        return value
    return None


class KeyVerifier:
    """Verifies keys against the database, with the per-process memo of their facts."""

    def __init__(self, db: Database, ttl: float) -> None:
        self.db = db
        self.memo: Memo[str, KeyFacts] = Memo(ttl)
        self._touched: dict[int, float] = {}  # key id -> monotonic time this process wrote
        self._lock = threading.Lock()

    def verify(self, key: str) -> KeyFacts:
        lookup = api_keys.lookup_of(key)
        if lookup is None:
            raise Unauthorized(
                "Malformed API key (expected crm_ followed by 56 characters)",
                code="API_KEY_MALFORMED",
            )
        found = self.memo.get(lookup)
        if found is None:
            with self.db.autocommit() as conn:
                found = api_keys.facts(conn, lookup)
            if found is not None:
                self.memo.put(lookup, found)
        verified = api_keys.verify(found, key, dt.datetime.now(dt.UTC))
        if api_keys.needs_touch(verified) and self._claim_touch(verified.id):
            with self.db.autocommit() as conn:
                api_keys.touch(conn, verified.id)
        return verified

    def _claim_touch(self, key_id: int) -> bool:
        """At most one touch per key per minute from this process."""
        now = time.monotonic()
        with self._lock:
            last = self._touched.get(key_id)
            if last is not None and now - last < api_keys.TOUCH_EVERY.total_seconds():
                return False
            if len(self._touched) >= 10_000:
                self._touched.clear()
            self._touched[key_id] = now
            return True

    def forget(self) -> None:
        self.memo.forget()


def verifier() -> KeyVerifier:
    return cast(KeyVerifier, current_app.extensions["crm_key_verifier"])


def request_key() -> KeyFacts | None:
    """The request's API key, verified once per request (the rate limit's bucket and the
    view's authentication ask in turn): None when the request carries none, 401 for a bad
    one."""
    if REQUEST_KEY in g:
        return cast(KeyFacts | None, g.get(REQUEST_KEY))
    refused = cast(Unauthorized | None, g.get(_REFUSED))
    if refused is not None:
        raise refused
    key = presented_key(request.headers.get("Authorization", ""))
    try:
        found = None if key is None else verifier().verify(key)
    except Unauthorized as exc:
        setattr(g, _REFUSED, exc)
        raise
    setattr(g, REQUEST_KEY, found)
    return found
