"""A bounded schemathesis run against the app in-process (WSGI): every operation of the OpenAPI
document gets a few generated requests (positive data, fixed seed, derandomized), sent with a
real registered user's token and organization; no answer may be a server error or disagree
with the documented response schema.

The document is loaded at import (schemathesis parametrizes one test per operation at
collection time) from an app that only serves it; the requests go to the session's `app`."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import schemathesis
from flask import Flask
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from crm_api import create_app

from .api import PASSWORD, PREFIX, ApiClient, User

MAX_EXAMPLES = 6  # per operation: a bounded run, well under 2 minutes for the whole API
SEED = 20240601
CHECKS = [not_a_server_error, response_schema_conformance]


def _load_schema() -> Any:
    document_app = create_app(OUTBOX_DISPATCH="none", TESTING=True)  # connects to nothing
    loaded = schemathesis.openapi.from_wsgi(
        f"{PREFIX}/openapi.json", document_app, config=schemathesis.Config()
    )
    loaded.config.generation.update(
        modes=[GenerationMode.POSITIVE], max_examples=MAX_EXAMPLES, deterministic=True
    )
    loaded.config.seed = SEED
    return loaded


schema = _load_schema()


@pytest.fixture(scope="module")
def fuzz_user(app: Flask) -> User:
    api = ApiClient(app.test_client())
    user = api.register(name="Fuzz", org_name=f"Fuzz {uuid.uuid4().hex[:6]}")
    # something to find: small generated ids hit real rows of this organization now and then
    deal = api.deal(user)
    api.task(user, deal["id"])
    return user


def _fresh_token(app: Flask, user: User) -> str:
    """A token of a new login session, for the calls that end their session."""
    r = app.test_client().post(
        f"{PREFIX}/auth/login", json={"email": user.email, "password": PASSWORD}
    )
    assert r.status_code == 200, r.get_json()
    return r.get_json()["access_token"]


@schema.parametrize()
def test_no_server_errors_and_responses_match_the_schema(
    case: Any, app: Flask, fuzz_user: User
) -> None:
    token = fuzz_user.token
    if case.path == f"{PREFIX}/auth/logout":  # would revoke the token every other case uses
        token = _fresh_token(app, fuzz_user)
    headers = {"Authorization": f"Bearer {token}", "X-Organization-Id": str(fuzz_user.org_id)}
    case.call_and_validate(app=app, headers=headers, checks=CHECKS)
