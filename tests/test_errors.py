"""The unified error body {"error": {"code", "message", "details"}} for every kind of failure.

Routing errors (404/405), malformed bodies, validation (always 400, never 422), oversized
bodies (413), integrity races (409) and a small fuzz that no input gives a 500.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.test import TestResponse

from .api import PASSWORD, PREFIX, ApiClient, User, error_code

CODE = re.compile(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)*")
MIB = 1024 * 1024


def unified(r: TestResponse, status: int, code: str | None = None) -> dict[str, Any]:
    """Assert the status and the unified error shape; return the `error` object."""
    assert r.status_code == status, (r.status_code, r.get_data(as_text=True)[:500])
    assert r.is_json, r.content_type
    got = error_code(r)
    err = r.get_json()["error"]
    assert CODE.fullmatch(got), got
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["details"], dict)
    if code is not None:
        assert got == code, err
    return err


def field_errors(err: dict[str, Any], location: str = "json") -> dict[str, Any]:
    """details.errors for one request location ({field: [messages]})."""
    errors = err["details"]["errors"]
    assert isinstance(errors, dict), err
    assert location in errors, err
    return errors[location]


def _tomorrow() -> str:
    return (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)).isoformat()


def _yesterday() -> str:
    return (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)).isoformat()


@dataclass
class Ctx:
    api: ApiClient
    user: User
    contact: int
    deal: int
    task: int

    @property
    def headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.user.token}",
            "X-Organization-Id": str(self.user.org_id),
        }

    def raw(self, method: str, path: str, *, auth: bool = True, **kw: Any) -> TestResponse:
        headers = {**(self.headers if auth else {}), **kw.pop("headers", {})}
        return self.api.client.open(PREFIX + path, method=method, headers=headers, **kw)

    def call(self, method: str, path: str, **kw: Any) -> TestResponse:
        return self.api.call(method, path, user=self.user, org=self.user.org_id, **kw)


@pytest.fixture(scope="module")
def ctx(app: Flask) -> Ctx:
    api = ApiClient(app.test_client())
    user = api.register(name="Errors", org_name=f"Errors {uuid.uuid4().hex[:6]}")
    contact = api.contact(user)["id"]
    deal = api.deal(user, contact_id=api.contact(user)["id"])["id"]
    task = api.task(user, deal)["id"]
    return Ctx(api=api, user=user, contact=contact, deal=deal, task=task)


# --- routing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/nope",
        "/nope",
        "/api/v2/contacts",
        "/api/v1/contacts/abc",
        "/api/v1/contacts/1/extra",
        "/api/v1/deals/-1",
        "/api/v1/analytics/deals",
    ],
)
def test_unknown_route_is_404(ctx: Ctx, url: str) -> None:
    for headers in ({}, ctx.headers):
        r = ctx.api.client.get(url, headers=headers)
        unified(r, 404, "NOT_FOUND")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/contacts", {"GET", "POST"}),
        ("DELETE", "/contacts", {"GET", "POST"}),
        ("PUT", "/deals/1", {"GET", "PATCH", "DELETE"}),
        ("POST", "/tasks/1", {"GET", "PATCH", "DELETE"}),
        ("GET", "/auth/login", {"POST"}),
        ("DELETE", "/organizations/me", {"GET"}),
        ("POST", "/analytics/deals/summary", {"GET"}),
        ("PATCH", "/deals/1/activities", {"GET", "POST"}),
    ],
)
def test_wrong_method_is_405(ctx: Ctx, method: str, path: str, allowed: set[str]) -> None:
    r = ctx.raw(method, path, json={})
    unified(r, 405, "METHOD_NOT_ALLOWED")
    advertised = {m.strip() for m in r.headers.get("Allow", "").split(",") if m.strip()}
    assert allowed <= advertised, r.headers.get("Allow")


def test_wrong_method_outside_the_api_is_405(ctx: Ctx) -> None:
    r = ctx.api.client.post("/health")
    unified(r, 405, "METHOD_NOT_ALLOWED")


# --- malformed bodies ----------------------------------------------------------------------

BODY_ENDPOINTS = [
    ("POST", "/contacts"),
    ("PATCH", "/contacts/{contact}"),
    ("POST", "/deals"),
    ("PATCH", "/deals/{deal}"),
    ("POST", "/tasks"),
    ("PATCH", "/tasks/{task}"),
    ("POST", "/deals/{deal}/activities"),
    ("POST", "/auth/register"),
    ("POST", "/auth/login"),
    ("POST", "/auth/refresh"),
    ("POST", "/organizations"),
]


def _path(ctx: Ctx, template: str) -> str:
    return template.format(contact=ctx.contact, deal=ctx.deal, task=ctx.task)


@pytest.mark.parametrize(("method", "path"), BODY_ENDPOINTS)
@pytest.mark.parametrize(
    "raw",
    ['{"name": ', '{"name": "x",}', "{'name': 'x'}", "nul", "[1, 2", b"\xff\xfe{}", "{} {}"],
)
def test_invalid_json_is_400(ctx: Ctx, method: str, path: str, raw: str | bytes) -> None:
    r = ctx.raw(method, _path(ctx, path), data=raw, content_type="application/json")
    err = unified(r, 400, "VALIDATION_ERROR")
    assert "json" in err["details"]["errors"], err


def test_deeply_nested_json_is_400(ctx: Ctx) -> None:
    depth = 100_000
    for raw in ("[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth):
        r = ctx.raw("POST", "/contacts", data=raw, content_type="application/json")
        unified(r, 400, "VALIDATION_ERROR")


@pytest.mark.parametrize(("method", "path"), BODY_ENDPOINTS)
@pytest.mark.parametrize("value", [[], [{"name": "x"}], "name", 42, 1.5, True])
def test_json_that_is_not_an_object_is_400(ctx: Ctx, method: str, path: str, value: Any) -> None:
    r = ctx.raw(method, _path(ctx, path), json=value)
    err = unified(r, 400, "VALIDATION_ERROR")
    assert "json" in err["details"]["errors"], err


def test_patch_without_a_json_body_is_400_on_every_patch_route(app: Flask, ctx: Ctx) -> None:
    """A PATCH needs a JSON object: no body, an empty body or a non-JSON one is a 400, not a
    200 that changes nothing. The PATCH routes come from app.url_map."""
    ids = {
        "contact_id": ctx.contact,
        "deal_id": ctx.deal,
        "task_id": ctx.task,
        "organization_id": ctx.user.org_id,
        "user_id": ctx.user.id,
    }
    hook = ctx.call("POST", "/webhooks", json={"url": "http://127.0.0.1:9/hook"})
    assert hook.status_code == 201, hook.get_json()
    ids["endpoint_id"] = hook.get_json()["id"]
    field = ctx.call(
        "POST", "/custom-fields", json={"entity": "deal", "key": "n", "label": "N", "type": "text"}
    )
    assert field.status_code == 201, field.get_json()
    ids["field_id"] = field.get_json()["id"]
    rules = [r.rule for r in app.url_map.iter_rules() if "PATCH" in (r.methods or ())]
    assert len(rules) >= 4, rules
    for rule in rules:
        url = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: str(ids[m.group(1)]), rule)
        before = ctx.api.client.get(url, headers=ctx.headers).get_data()
        for kw in (
            {},
            {"data": b"", "content_type": "application/json"},
            {"data": b'{"name": "x"}', "content_type": "text/plain"},
            {"data": b"name=x", "content_type": "application/x-www-form-urlencoded"},
        ):
            r = ctx.api.client.patch(url, headers=ctx.headers, **kw)
            err = unified(r, 400, "VALIDATION_ERROR")
            assert "_schema" in field_errors(err), (url, kw, err)
        assert ctx.api.client.get(url, headers=ctx.headers).get_data() == before, url
    # an empty JSON object is a JSON object: a valid (if useless) PATCH
    r = ctx.call("PATCH", f"/contacts/{ctx.contact}", json={})
    assert r.status_code == 200, r.get_json()


VALID_BODIES: dict[tuple[str, str], Any] = {
    ("POST", "/contacts"): lambda c: {"name": "Valid"},
    ("PATCH", "/contacts/{contact}"): lambda c: {"name": "Valid"},
    ("POST", "/deals"): lambda c: {"contact_id": c.contact, "title": "Valid"},
    ("PATCH", "/deals/{deal}"): lambda c: {"title": "Valid"},
    ("POST", "/tasks"): lambda c: {"deal_id": c.deal, "title": "Valid", "due_date": _tomorrow()},
    ("PATCH", "/tasks/{task}"): lambda c: {"title": "Valid"},
    ("POST", "/deals/{deal}/activities"): lambda c: {"type": "comment", "payload": {"text": "x"}},
    ("POST", "/auth/register"): lambda c: {
        "email": f"u-{uuid.uuid4().hex[:10]}@example.com",
        "password": PASSWORD,
        "name": "N",
        "organization_name": "O",
    },
    ("POST", "/auth/login"): lambda c: {"email": c.user.email, "password": PASSWORD},
    ("POST", "/auth/refresh"): lambda c: {"refresh_token": "x"},
    ("POST", "/organizations"): lambda c: {"name": "Valid"},
}


@pytest.mark.parametrize(("method", "path"), BODY_ENDPOINTS)
@pytest.mark.parametrize("unknown", ["foo_bar", "organization_id", "ID", "n\u0430me"])  # Cyrillic
def test_unknown_body_field_is_400_naming_the_field(
    ctx: Ctx, method: str, path: str, unknown: str
) -> None:
    body = {**VALID_BODIES[(method, path)](ctx), unknown: 1}
    r = ctx.raw(method, _path(ctx, path), json=body)
    err = unified(r, 400, "VALIDATION_ERROR")
    fields = field_errors(err)
    assert unknown in fields, err
    assert set(fields) == {unknown}, err  # the valid fields are fine


def test_unknown_field_does_not_change_anything(ctx: Ctx) -> None:
    before = ctx.call("GET", f"/deals/{ctx.deal}").get_json()
    r = ctx.call("PATCH", f"/deals/{ctx.deal}", json={"title": "Changed", "colour": "red"})
    unified(r, 400, "VALIDATION_ERROR")
    assert ctx.call("GET", f"/deals/{ctx.deal}").get_json() == before


WRONG_TYPES = [
    ("POST", "/contacts", {"name": 5}, "name"),
    ("POST", "/contacts", {"name": ["x"]}, "name"),
    ("POST", "/contacts", {"name": "x", "email": 7}, "email"),
    ("POST", "/contacts", {"name": "x", "owner_id": "1"}, "owner_id"),
    ("PATCH", "/contacts/{contact}", {"phone": {"n": 1}}, "phone"),
    ("POST", "/deals", {"contact_id": "1", "title": "t"}, "contact_id"),
    ("POST", "/deals", {"contact_id": True, "title": "t"}, "contact_id"),
    ("POST", "/deals", {"contact_id": 1.5, "title": "t"}, "contact_id"),
    ("POST", "/deals", {"contact_id": "{contact}", "title": "t", "amount": []}, "amount"),
    ("POST", "/deals", {"contact_id": "{contact}", "title": "t", "amount": "ten"}, "amount"),
    ("POST", "/deals", {"contact_id": "{contact}", "title": "t", "currency": 978}, "currency"),
    ("PATCH", "/deals/{deal}", {"status": 1}, "status"),
    ("PATCH", "/deals/{deal}", {"stage": None}, "stage"),
    ("PATCH", "/deals/{deal}", {"title": None}, "title"),
    ("POST", "/tasks", {"deal_id": "{deal}", "title": "t", "due_date": 20300101}, "due_date"),
    ("POST", "/tasks", {"deal_id": "{deal}", "title": "t", "due_date": "tomorrow"}, "due_date"),
    ("PATCH", "/tasks/{task}", {"is_done": []}, "is_done"),
    ("PATCH", "/tasks/{task}", {"is_done": "perhaps"}, "is_done"),
    ("POST", "/deals/{deal}/activities", {"type": "comment", "payload": "hi"}, "payload"),
    ("POST", "/deals/{deal}/activities", {"type": 1, "payload": {"text": "x"}}, "type"),
    ("POST", "/auth/login", {"email": ["a"], "password": "x"}, "email"),
    ("POST", "/auth/refresh", {"refresh_token": 123}, "refresh_token"),
]


def _fill(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    ids = {"{contact}": ctx.contact, "{deal}": ctx.deal}
    return {k: ids.get(v, v) if isinstance(v, str) else v for k, v in body.items()}


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    WRONG_TYPES,
    ids=[f"{w[0]} {w[1]} {w[3]}" for w in WRONG_TYPES],
)
def test_wrong_type_is_400_naming_the_field(
    ctx: Ctx, method: str, path: str, body: dict[str, Any], field: str
) -> None:
    r = ctx.raw(method, _path(ctx, path), json=_fill(ctx, body))
    err = unified(r, 400, "VALIDATION_ERROR")
    assert field in field_errors(err), err


# --- validation is 400, never 422 ----------------------------------------------------------

# (method, path, query, body, expected code)
BAD_INPUTS: list[tuple[str, str, dict[str, Any] | None, Any, str]] = [
    # query strings
    ("GET", "/contacts", {"page": 0}, None, "VALIDATION_ERROR"),
    ("GET", "/contacts", {"page": -1}, None, "VALIDATION_ERROR"),
    ("GET", "/contacts", {"page": "abc"}, None, "VALIDATION_ERROR"),
    ("GET", "/contacts", {"page_size": 0}, None, "VALIDATION_ERROR"),
    ("GET", "/contacts", {"page_size": 101}, None, "VALIDATION_ERROR"),
    ("GET", "/contacts", {"page_size": "1e2"}, None, "VALIDATION_ERROR"),
    ("GET", "/contacts", {"owner_id": 0}, None, "VALIDATION_ERROR"),
    ("GET", "/contacts", {"owner_id": "me"}, None, "VALIDATION_ERROR"),
    ("GET", "/contacts", {"search": "x" * 256}, None, "VALIDATION_ERROR"),
    ("GET", "/deals", {"status": "bogus"}, None, "VALIDATION_ERROR"),
    ("GET", "/deals", {"stage": "done"}, None, "VALIDATION_ERROR"),
    ("GET", "/deals", {"order_by": "title; drop table deals"}, None, "VALIDATION_ERROR"),
    ("GET", "/deals", {"order": "up"}, None, "VALIDATION_ERROR"),
    ("GET", "/deals", {"min_amount": "-1"}, None, "VALIDATION_ERROR"),
    ("GET", "/deals", {"min_amount": "10", "max_amount": "5"}, None, "VALIDATION_ERROR"),
    ("GET", "/deals", {"max_amount": "NaN"}, None, "VALIDATION_ERROR"),
    ("GET", "/deals", {"max_amount": "1e400"}, None, "VALIDATION_ERROR"),
    ("GET", "/tasks", {"deal_id": "abc"}, None, "VALIDATION_ERROR"),
    ("GET", "/tasks", {"only_open": "maybe"}, None, "VALIDATION_ERROR"),
    ("GET", "/tasks", {"due_before": "31/12/2030"}, None, "VALIDATION_ERROR"),
    (
        "GET",
        "/tasks",
        {"due_after": "2030-02-01", "due_before": "2030-01-01"},
        None,
        "VALIDATION_ERROR",
    ),
    ("GET", "/deals/{deal}/activities", {"page_size": 1000}, None, "VALIDATION_ERROR"),
    ("GET", "/analytics/deals/summary", {"days": 0}, None, "VALIDATION_ERROR"),
    ("GET", "/analytics/deals/summary", {"days": 366}, None, "VALIDATION_ERROR"),
    ("GET", "/analytics/deals/summary", {"days": "week"}, None, "VALIDATION_ERROR"),
    # bodies
    ("POST", "/contacts", None, {}, "VALIDATION_ERROR"),
    ("POST", "/contacts", None, {"name": ""}, "VALIDATION_ERROR"),
    ("POST", "/contacts", None, {"name": "   "}, "VALIDATION_ERROR"),
    ("POST", "/contacts", None, {"name": "x" * 256}, "VALIDATION_ERROR"),
    ("POST", "/contacts", None, {"name": "x", "email": "not-an-email"}, "VALIDATION_ERROR"),
    ("POST", "/contacts", None, {"name": "x", "owner_id": 2**31}, "VALIDATION_ERROR"),
    ("POST", "/deals", None, {"title": "t"}, "VALIDATION_ERROR"),
    (
        "POST",
        "/deals",
        None,
        {"contact_id": "{contact}", "title": "t", "amount": "-1"},
        "VALIDATION_ERROR",
    ),
    (
        "POST",
        "/deals",
        None,
        {"contact_id": "{contact}", "title": "t", "amount": "1e20"},
        "VALIDATION_ERROR",
    ),
    (
        "POST",
        "/deals",
        None,
        {"contact_id": "{contact}", "title": "t", "currency": "EURO"},
        "VALIDATION_ERROR",
    ),
    ("PATCH", "/deals/{deal}", None, {"status": "done"}, "VALIDATION_ERROR"),
    ("PATCH", "/deals/{deal}", None, {"stage": "won"}, "VALIDATION_ERROR"),
    (
        "PATCH",
        "/deals/{deal}",
        None,
        {"amount": "0", "status": "won"},
        "WON_REQUIRES_POSITIVE_AMOUNT",
    ),
    ("POST", "/tasks", None, {"deal_id": "{deal}", "title": "t"}, "VALIDATION_ERROR"),
    (
        "POST",
        "/tasks",
        None,
        {"deal_id": "{deal}", "title": "t", "due_date": "2030-02-30"},
        "VALIDATION_ERROR",
    ),
    (
        "POST",
        "/tasks",
        None,
        {"deal_id": "{deal}", "title": "t", "due_date": "yesterday"},
        "VALIDATION_ERROR",
    ),
    (
        "POST",
        "/tasks",
        None,
        {"deal_id": "{deal}", "title": "t", "due_date": "{yesterday}"},
        "DUE_DATE_IN_PAST",
    ),
    ("PATCH", "/tasks/{task}", None, {"due_date": "{yesterday}"}, "DUE_DATE_IN_PAST"),
    (
        "POST",
        "/deals/{deal}/activities",
        None,
        {"type": "call", "payload": {"text": "x"}},
        "ACTIVITY_TYPE_NOT_ALLOWED",
    ),
    (
        "POST",
        "/deals/{deal}/activities",
        None,
        {"type": "comment", "payload": {}},
        "VALIDATION_ERROR",
    ),
    (
        "POST",
        "/deals/{deal}/activities",
        None,
        {"type": "comment", "payload": {"text": " "}},
        "VALIDATION_ERROR",
    ),
    ("POST", "/deals/{deal}/activities", None, {"type": "comment"}, "VALIDATION_ERROR"),
    ("POST", "/auth/register", None, {"email": "x@example.com"}, "VALIDATION_ERROR"),
    (
        "POST",
        "/auth/register",
        None,
        {"email": "bad", "password": PASSWORD, "name": "n", "organization_name": "o"},
        "VALIDATION_ERROR",
    ),
    ("POST", "/auth/login", None, {"email": "", "password": ""}, "VALIDATION_ERROR"),
    ("POST", "/auth/refresh", None, {}, "VALIDATION_ERROR"),
    ("POST", "/organizations", None, {"name": ""}, "VALIDATION_ERROR"),
    (
        "POST",
        "/organizations/{org}/members",
        None,
        {"email": "x@example.com", "role": "king"},
        "VALIDATION_ERROR",
    ),
    ("PATCH", "/organizations/{org}/members/{user}", None, {}, "VALIDATION_ERROR"),
]


def _subst(ctx: Ctx, value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _subst(ctx, v) for k, v in value.items()}
    if not isinstance(value, str):
        return value
    names = {
        "contact": ctx.contact,
        "deal": ctx.deal,
        "task": ctx.task,
        "org": ctx.user.org_id,
        "user": ctx.user.id,
        "yesterday": _yesterday(),
    }
    if re.fullmatch(r"\{\w+\}", value) and value[1:-1] in names:
        return names[value[1:-1]]
    return re.sub(r"\{(\w+)\}", lambda m: str(names[m.group(1)]), value)


@pytest.mark.parametrize(
    ("method", "path", "query", "body", "code"),
    BAD_INPUTS,
    ids=[f"{b[0]} {b[1]} {b[2] or b[3]}"[:80] for b in BAD_INPUTS],
)
def test_bad_input_is_400_never_422(
    ctx: Ctx, method: str, path: str, query: dict[str, Any] | None, body: Any, code: str
) -> None:
    r = ctx.call(method, _subst(ctx, path), query=query, json=_subst(ctx, body))
    assert r.status_code != 422
    unified(r, 400, code)


def test_page_size_1000_is_400_naming_the_parameter(ctx: Ctx) -> None:
    for path in ("/contacts", "/deals", "/tasks", f"/deals/{ctx.deal}/activities"):
        r = ctx.call("GET", path, query={"page_size": 1000})
        err = unified(r, 400, "VALIDATION_ERROR")
        assert "page_size" in field_errors(err, "query"), err
        # the limit itself is fine
        assert ctx.call("GET", path, query={"page_size": 100}).status_code == 200


def test_text_with_nul_character_is_400(ctx: Ctx) -> None:
    """PostgreSQL cannot store NUL in text: the API must reject it, not fail with a 500."""
    cases = [
        ("POST", "/contacts", None, {"name": "a\x00b"}),
        ("PATCH", f"/contacts/{ctx.contact}", None, {"phone": "\x00"}),
        ("POST", "/deals", None, {"contact_id": ctx.contact, "title": "\x00"}),
        (
            "POST",
            f"/deals/{ctx.deal}/activities",
            None,
            {"type": "comment", "payload": {"text": "a\x00"}},
        ),
        ("POST", "/auth/login", None, {"email": "a\x00@example.com", "password": "x"}),
        ("GET", "/contacts", {"search": "a\x00"}, None),
    ]
    for method, path, query, body in cases:
        r = ctx.call(method, path, query=query, json=body)
        unified(r, 400, "VALIDATION_ERROR")


def test_unpaired_surrogate_is_400_naming_the_field(ctx: Ctx) -> None:
    """JSON's "\\ud800" escape decodes to a lone surrogate, which no UTF-8 encoder (psycopg,
    bcrypt) accepts: 400 naming the field, not a 500 from deep inside."""
    register = VALID_BODIES[("POST", "/auth/register")](ctx)
    login = {"email": ctx.user.email, "password": PASSWORD}  # a real user: bcrypt is reached
    comment = {"type": "comment", "payload": {"text": "ok"}}
    cases = [
        ("POST", "/contacts", {"name": "x\ud800"}, "name"),
        ("PATCH", f"/contacts/{ctx.contact}", {"name": "x\udfff"}, "name"),
        ("POST", "/deals", {"contact_id": ctx.contact, "title": "\ud800"}, "title"),
        ("PATCH", f"/deals/{ctx.deal}", {"title": "a\ud83d"}, "title"),
        (
            "POST",
            f"/deals/{ctx.deal}/activities",
            {**comment, "payload": {"text": "\ud800"}},
            "payload",
        ),
        (
            "POST",
            f"/deals/{ctx.deal}/activities",
            {**comment, "payload": {"t\ud800": "x"}},
            "payload",
        ),
        ("POST", "/auth/register", {**register, "name": "N\ud800"}, "name"),
        ("POST", "/auth/register", {**register, "password": PASSWORD + "\ud800"}, "password"),
        ("POST", "/auth/login", {**login, "email": "a\ud800@example.com"}, "email"),
        ("POST", "/auth/login", {**login, "password": PASSWORD + "\ud800"}, "password"),
        ("POST", "/contacts", {"n\ud800": "x"}, "_schema"),
    ]
    before = ctx.call("GET", "/contacts").get_json()["total"]
    for method, path, body, field in cases:
        raw = json.dumps(body, ensure_ascii=True)  # the surrogate travels as a \\uXXXX escape
        assert "\\ud" in raw.lower(), raw
        r = ctx.raw(method, path, data=raw, content_type="application/json")
        err = unified(r, 400, "VALIDATION_ERROR")
        assert field in field_errors(err), (method, path, err)
        assert "surrogate" in str(field_errors(err)[field]), err
    assert ctx.call("GET", "/contacts").get_json()["total"] == before
    # a valid pair of surrogates is a real character (U+1F600) and is accepted
    r = ctx.raw(
        "POST",
        "/contacts",
        data='{"name": "smile \\ud83d\\ude00"}',
        content_type="application/json",
    )
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["name"] == "smile \U0001f600"


# --- oversized bodies ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "auth"),
    [
        ("POST", "/contacts", True),
        ("PATCH", "/deals/{deal}", True),
        ("POST", "/deals/{deal}/activities", True),
        ("POST", "/auth/register", False),
        ("POST", "/auth/login", False),
    ],
)
def test_body_over_one_mib_is_413(ctx: Ctx, method: str, path: str, auth: bool) -> None:
    before = ctx.call("GET", "/contacts").get_json()["total"]
    body = json.dumps({"name": "x" * (MIB + 1)})
    r = ctx.raw(method, _path(ctx, path), auth=auth, data=body, content_type="application/json")
    unified(r, 413, "PAYLOAD_TOO_LARGE")
    assert ctx.call("GET", "/contacts").get_json()["total"] == before


def test_body_just_under_the_limit_is_validated_not_413(ctx: Ctx) -> None:
    body = json.dumps({"name": "x" * (MIB - 100)})
    r = ctx.raw("POST", "/contacts", data=body, content_type="application/json")
    err = unified(r, 400, "VALIDATION_ERROR")
    assert "name" in field_errors(err)


# --- integrity races -----------------------------------------------------------------------


def _race(app: Flask, n: int, request: Any) -> list[TestResponse]:
    barrier = threading.Barrier(n)
    results: list[TestResponse | BaseException] = [None] * n  # type: ignore[list-item]

    def run(i: int) -> None:
        client = app.test_client()
        try:
            barrier.wait(timeout=10)
            results[i] = request(client)
        except BaseException as exc:  # reported below
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    for res in results:
        assert isinstance(res, TestResponse), res
    return results  # type: ignore[return-value]


def test_concurrent_registrations_with_one_email_give_one_201_and_409s(app: Flask) -> None:
    email = f"race-{uuid.uuid4().hex[:10]}@example.com"
    body = {"email": email, "password": PASSWORD, "name": "R", "organization_name": "R"}
    results = _race(app, 6, lambda c: c.post(f"{PREFIX}/auth/register", json=body))
    statuses = sorted(r.status_code for r in results)
    assert statuses == [201] + [409] * 5, statuses
    for r in results:
        if r.status_code == 409:
            unified(r, 409, "EMAIL_ALREADY_EXISTS")


def test_concurrent_member_adds_give_one_201_and_409s(app: Flask, api: ApiClient) -> None:
    owner, newcomer = api.register(), api.register()
    headers = {"Authorization": f"Bearer {owner.token}"}
    url = f"{PREFIX}/organizations/{owner.org_id}/members"
    results = _race(
        app,
        5,
        lambda c: c.post(url, headers=headers, json={"email": newcomer.email, "role": "member"}),
    )
    statuses = sorted(r.status_code for r in results)
    assert statuses == [201] + [409] * 4, statuses
    for r in results:
        if r.status_code == 409:
            unified(r, 409, "MEMBER_ALREADY_EXISTS")


def test_integrity_and_database_errors_map_to_unified_bodies(app: Flask) -> None:
    """The last-resort handlers: an IntegrityError that slipped past the service checks is a
    409, a lost database connection and a pool that stayed exhausted for its whole timeout
    503s with Retry-After; none leaks SQL in the body."""
    cases = [
        (IntegrityError("INSERT INTO secret", {}, Exception("dup key")), 409, "CONFLICT"),
        (OperationalError("SELECT secret", {}, Exception("gone")), 503, "SERVICE_UNAVAILABLE"),
        (
            PoolTimeout("QueuePool limit of size 5 overflow 5 reached, secret"),
            503,
            "SERVICE_UNAVAILABLE",
        ),
        (RuntimeError("boom secret"), 500, "INTERNAL_ERROR"),
    ]
    for exc, status, code in cases:
        with app.test_request_context(f"{PREFIX}/contacts", method="POST"):
            response = app.make_response(app.handle_user_exception(exc))
            assert response.status_code == status
            body = response.get_json()
            assert body["error"]["code"] == code
            assert set(body["error"]) == {"code", "message", "details"}
            assert "secret" not in response.get_data(as_text=True)
            assert ("Retry-After" in response.headers) == (status == 503)


# --- no input gives a 500 --------------------------------------------------------------------

# values known to trip parsers and databases, mixed into the random text
TRICKY_STRINGS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\u2028",
    "\U0001f600",
    "NaN",
    "Infinity",
    "-1",
    "0",
    "1e400",
    "9" * 40,
    "2030-02-30",
    "0001-01-01",
    "%",
    "_",
    "'; DROP TABLE deals; --",
    "x" * 300,
]
texts = st.text(max_size=20) | st.sampled_from(TRICKY_STRINGS)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | texts,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)

KNOWN_FIELDS = [
    "name",
    "email",
    "phone",
    "owner_id",
    "contact_id",
    "deal_id",
    "title",
    "amount",
    "currency",
    "status",
    "stage",
    "description",
    "due_date",
    "is_done",
    "type",
    "payload",
    "password",
    "organization_name",
    "refresh_token",
]
# dicts with real field names reach the field validators, not just the unknown-field check
field_dicts = st.dictionaries(
    st.sampled_from(KNOWN_FIELDS) | st.text(max_size=8), json_values, max_size=6
)
fuzz_bodies = st.one_of(json_values, field_dicts)

FUZZ_ENDPOINTS = [
    ("POST", "/contacts", True),
    ("PATCH", "/contacts/{contact}", True),
    ("POST", "/deals", True),
    ("PATCH", "/deals/{deal}", True),
    ("POST", "/tasks", True),
    ("PATCH", "/tasks/{task}", True),
    ("POST", "/deals/{deal}/activities", True),
    ("POST", "/auth/register", False),
    ("POST", "/auth/login", False),
]


def check_no_server_error(r: TestResponse) -> None:
    assert r.status_code < 500, (r.status_code, r.get_data(as_text=True)[:300])
    assert r.status_code != 422
    if r.status_code >= 400:
        unified(r, r.status_code)


# the fields each endpoint accepts: overriding them in a valid body gets past the schema's
# unknown-field and required-field checks, so odd values reach the services and the database
ENDPOINT_FIELDS = {
    "/contacts": ["name", "email", "phone", "owner_id"],
    "/contacts/{contact}": ["name", "email", "phone", "owner_id"],
    "/deals": ["contact_id", "title", "amount", "currency", "owner_id"],
    "/deals/{deal}": ["title", "amount", "currency", "status", "stage", "owner_id", "contact_id"],
    "/tasks": ["deal_id", "title", "description", "due_date"],
    "/tasks/{task}": ["title", "description", "due_date", "is_done"],
    "/deals/{deal}/activities": ["type", "payload"],
    "/auth/register": ["email", "password", "name", "organization_name"],
    "/auth/login": ["email", "password"],
}


@pytest.mark.parametrize(("method", "path", "auth"), FUZZ_ENDPOINTS)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_fuzzed_json_bodies_never_give_500(
    ctx: Ctx, method: str, path: str, auth: bool, data: st.DataObject
) -> None:
    fields = st.sampled_from(ENDPOINT_FIELDS[path])
    value = st.one_of(st.sampled_from(TRICKY_STRINGS), st.text(max_size=20), json_values)
    one = st.tuples(fields, value).map(lambda kv: {kv[0]: kv[1]})  # one odd value, alone
    some = st.dictionaries(fields, value, max_size=3)
    valid = VALID_BODIES[(method, path)](ctx)
    overrides = st.one_of(one, one, some).map(lambda o: {**valid, **o})
    body = data.draw(st.one_of(overrides, overrides, fuzz_bodies), label="body")
    r = ctx.raw(method, _path(ctx, path), auth=auth, json=body)
    check_no_server_error(r)


@settings(max_examples=40, deadline=None)
@given(
    path=st.sampled_from(["/contacts", "/deals", "/tasks", "/analytics/deals/summary"]),
    query=st.dictionaries(
        st.sampled_from(
            [
                "page",
                "page_size",
                "search",
                "owner_id",
                "status",
                "stage",
                "min_amount",
                "max_amount",
                "order_by",
                "order",
                "deal_id",
                "only_open",
                "due_before",
                "due_after",
                "days",
            ]
        ),
        texts | st.integers().map(str),
        max_size=4,
    ),
)
def test_fuzzed_query_strings_never_give_500(ctx: Ctx, path: str, query: dict[str, str]) -> None:
    check_no_server_error(ctx.raw("GET", path, query_string=query))


@settings(max_examples=40, deadline=None)
@given(
    target=st.sampled_from(FUZZ_ENDPOINTS),
    raw=st.binary(max_size=64) | st.text(max_size=64).map(str.encode),
)
def test_fuzzed_raw_bodies_never_give_500(
    ctx: Ctx, target: tuple[str, str, bool], raw: bytes
) -> None:
    method, path, auth = target
    r = ctx.raw(method, _path(ctx, path), auth=auth, data=raw, content_type="application/json")
    check_no_server_error(r)
