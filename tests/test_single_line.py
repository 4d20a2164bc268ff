"""The single-line rule (crm_domain.text, crm_domain.validation.fields.SingleLine): names,
titles, e-mail addresses, phone numbers, URLs and labels refuse control characters and line or
paragraph separators with a 400 naming the field, on every route and in CSV import rows alike,
while multi-line text keeps its line breaks. Also: every input string of every schema is either
single-line or listed here with the reason it is not."""

from __future__ import annotations

import datetime as dt
import unicodedata
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import marshmallow as ma
import pytest
from flask import Flask
from hypothesis import given
from hypothesis import strategies as st

from crm_domain import text
from crm_domain.services.transfer import rows as csv_rows
from crm_domain.validation.fields import SingleLine

from .api import PASSWORD, ApiClient, User
from .test_errors import Ctx as ErrorsCtx
from .test_imports import _csv, _import

# Each kind the rule names: C0 controls (tab, LF, VT, FF, CR, ESC, the information
# separators), DEL, C1 controls (NEL among them), the line and paragraph separators.
CHARACTERS = [
    "\x01",
    "\t",
    "\n",
    "\x0b",
    "\x0c",
    "\r",
    "\r\n",
    "\x1b",
    "\x1c",
    "\x1d",
    "\x1e",
    "\x1f",
    "\x7f",
    "\x80",
    "\x85",
    "\x9f",
    "\u2028",
    "\u2029",
]


def _refused(character: str) -> bool:
    return unicodedata.category(character) in {"Cc", "Zl", "Zp"}


# --- the rule itself --------------------------------------------------------------------------


@given(st.text())
def test_the_rule_refuses_exactly_controls_and_line_separators(value: str) -> None:
    bad = [c for c in value if _refused(c)]
    assert text.line_breaking_character(value) == (bad[0] if bad else None)
    flat = text.one_line(value)
    assert text.line_breaking_character(flat) is None
    assert (flat == value) is (not bad)


def test_every_listed_character_is_refused() -> None:
    for character in CHARACTERS:
        assert text.line_breaking_character(f"Acme{character}Corp") == character[0]
    for fine in ("Acme Corp", "Müller & Söhne \u2013 Zürich", "東京", "O'Brien", "a\u00a0b", "🙂"):
        assert text.line_breaking_character(fine) is None


# --- every route ------------------------------------------------------------------------------


@dataclass
class Ctx(ErrorsCtx):
    webhook: int
    other: User  # someone to add as a member


@pytest.fixture(scope="module")
def ctx(app: Flask) -> Ctx:
    api = ApiClient(app.test_client())
    user = api.register()
    deal = api.deal(user)
    task = api.task(user, deal["id"])
    r = api.post("/webhooks", user=user, org=user.org_id, json={"url": "http://127.0.0.1:9/hooks"})
    assert r.status_code == 201, r.get_json()
    webhook = r.get_json()["id"]
    return Ctx(api, user, deal["contact_id"], deal["id"], task["id"], webhook, api.register())


def _email(tag: str) -> str:
    """An address with `tag` in its domain, where the e-mail validator lets U+2028 through."""
    return f"u-{uuid.uuid4().hex[:8]}@exa{tag}mple.com"


def _tomorrow() -> str:
    return (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)).isoformat()


def _register(field: str) -> Callable[[Ctx, str], dict[str, Any]]:
    def body(_ctx: Ctx, value: str) -> dict[str, Any]:
        base = {
            "email": _email(""),
            "password": PASSWORD,
            "name": "Ann",
            "organization_name": "Acme",
        }
        return {**base, field: value}

    return body


# (method, path, body with the value in the field, field, is an e-mail address)
Case = tuple[str, Callable[[Ctx], str], Callable[[Ctx, str], dict[str, Any]], str, bool]
CASES: dict[str, Case] = {
    "register.name": ("POST", lambda c: "/auth/register", _register("name"), "name", False),
    "register.organization_name": (
        "POST",
        lambda c: "/auth/register",
        _register("organization_name"),
        "organization_name",
        False,
    ),
    "register.email": ("POST", lambda c: "/auth/register", _register("email"), "email", True),
    "organization.name": (
        "POST",
        lambda c: "/organizations",
        lambda c, v: {"name": v},
        "name",
        False,
    ),
    "member.email": (
        "POST",
        lambda c: f"/organizations/{c.user.org_id}/members",
        lambda c, v: {"email": v},
        "email",
        True,
    ),
    "invitation.email": (
        "POST",
        lambda c: f"/organizations/{c.user.org_id}/invitations",
        lambda c, v: {"email": v},
        "email",
        True,
    ),
    "accept_invitation.name": (
        "POST",
        lambda c: "/auth/accept-invitation",
        lambda c, v: {"token": "x" * 43, "name": v, "password": PASSWORD},
        "name",
        False,
    ),
    "contact.name": ("POST", lambda c: "/contacts", lambda c, v: {"name": v}, "name", False),
    "contact.phone": (
        "POST",
        lambda c: "/contacts",
        lambda c, v: {"name": "N", "phone": v},
        "phone",
        False,
    ),
    "contact.email": (
        "POST",
        lambda c: "/contacts",
        lambda c, v: {"name": "N", "email": v},
        "email",
        True,
    ),
    "contact_update.name": (
        "PATCH",
        lambda c: f"/contacts/{c.contact}",
        lambda c, v: {"name": v},
        "name",
        False,
    ),
    "contact_update.phone": (
        "PATCH",
        lambda c: f"/contacts/{c.contact}",
        lambda c, v: {"phone": v},
        "phone",
        False,
    ),
    "contact_update.email": (
        "PATCH",
        lambda c: f"/contacts/{c.contact}",
        lambda c, v: {"email": v},
        "email",
        True,
    ),
    "deal.title": (
        "POST",
        lambda c: "/deals",
        lambda c, v: {"contact_id": c.contact, "title": v},
        "title",
        False,
    ),
    "deal_update.title": (
        "PATCH",
        lambda c: f"/deals/{c.deal}",
        lambda c, v: {"title": v},
        "title",
        False,
    ),
    "task.title": (
        "POST",
        lambda c: "/tasks",
        lambda c, v: {"deal_id": c.deal, "title": v, "due_date": _tomorrow()},
        "title",
        False,
    ),
    "task_update.title": (
        "PATCH",
        lambda c: f"/tasks/{c.task}",
        lambda c, v: {"title": v},
        "title",
        False,
    ),
    "webhook.description": (
        "POST",
        lambda c: "/webhooks",
        lambda c, v: {"url": "http://127.0.0.1:9/hooks", "description": v},
        "description",
        False,
    ),
    "webhook_update.description": (
        "PATCH",
        lambda c: f"/webhooks/{c.webhook}",
        lambda c, v: {"description": v},
        "description",
        False,
    ),
    "webhook_update.url": (
        "PATCH",
        lambda c: f"/webhooks/{c.webhook}",
        lambda c, v: {"url": f"http://127.0.0.1:9/ho{v}oks"},
        "url",
        False,
    ),
}

CLEAN: dict[str, Callable[[Ctx], str]] = {
    "member.email": lambda c: c.other.email,  # an account to add
    "webhook_update.url": lambda c: "-",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_single_line_fields_refuse_each_character_with_400(ctx: Ctx, case: str) -> None:
    method, path, body, field, is_email = CASES[case]
    if case != "accept_invitation.name":  # the control: the body is fine with a clean value
        clean = CLEAN[case](ctx) if case in CLEAN else _email("") if is_email else "Clean"
        r = ctx.call(method, path(ctx), json=body(ctx, clean))
        assert r.status_code in (200, 201), (case, r.get_json())
    for character in CHARACTERS:
        value = _email(character) if is_email else f"Acme{character}Corp"
        r = ctx.call(method, path(ctx), json=body(ctx, value))
        assert r.status_code == 400, (case, character, r.get_json())
        error = r.get_json()["error"]
        assert error["code"] == "VALIDATION_ERROR", error
        messages = error["details"]["errors"]["json"][field]
        if not is_email or character == "\u2028":  # the e-mail validator refuses most itself
            assert any("single line" in m for m in messages), (case, character, messages)
            assert f"U+{ord(character[0]):04X}" in str(messages), messages


def test_surrounding_line_breaks_are_trimmed_and_multi_line_text_keeps_them(ctx: Ctx) -> None:
    r = ctx.call("PATCH", f"/contacts/{ctx.contact}", json={"name": "\u2028 Trimmed \r\n"})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["name"] == "Trimmed"
    multi = {"description": "line 1\nline 2\r\n\tindented"}
    r = ctx.call("PATCH", f"/tasks/{ctx.task}", json=multi)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["description"] == "line 1\nline 2\r\n\tindented"
    comment = {"type": "comment", "payload": {"text": "first\nsecond\u2028third"}}
    r = ctx.call("POST", f"/deals/{ctx.deal}/activities", json=comment)
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["payload"]["text"] == "first\nsecond\u2028third"


def test_import_rows_meet_the_same_rule(api: ApiClient) -> None:
    owner = api.register()
    contact = api.contact(owner, email=f"c-{uuid.uuid4().hex[:8]}@example.com")
    bad = "\u2028"
    contacts = _csv(
        ["name", "email", "phone", "owner_email"],
        [
            ["Good one", "", "", ""],
            [f"Bad{bad}name", "", "", ""],
            ["Bad phone", "", f"+1{bad}2", ""],
            ["Bad email", _email(bad), "", ""],
            ["Bad owner", "", "", _email(bad)],
            ["Good two", "", "\x85", ""],  # surrounding white space is trimmed
        ],
    )
    job = _import(api, owner, contacts)
    assert (job["created"], job["error_rows"]) == (2, 4), job["errors"]
    fields = {(e["row"], e["field"]) for e in job["errors"]}
    assert fields == {(3, "name"), (4, "phone"), (5, "email"), (6, "owner_email")}
    assert all(e["code"] == "VALIDATION_ERROR" for e in job["errors"])
    deals = _csv(
        ["title", "contact_id", "contact_email", "owner_email"],
        [
            ["Good deal", contact["id"], "", ""],
            [f"Bad{bad}title", contact["id"], "", ""],
            ["Bad contact", "", _email(bad), ""],
            ["Bad owner", contact["id"], "", _email(bad)],
        ],
    )
    job = _import(api, owner, deals, kind="deals")
    assert (job["created"], job["error_rows"]) == (1, 3), job["errors"]
    fields = {(e["row"], e["field"]) for e in job["errors"]}
    assert fields == {(3, "title"), (4, "contact_email"), (5, "owner_email")}


# --- no single-line field is forgotten ---------------------------------------------------------

# Input strings that are not single-line, and why. Fields whose values come from a fixed list
# or pattern (OneOf, Regexp) are left out on their own.
FREE_TEXT = {
    ("TaskCreateSchema", "description"): "multi-line text",
    ("TaskUpdateSchema", "description"): "multi-line text",
    ("CustomFieldCreateSchema", "description"): "multi-line help text of a custom field",
    ("CustomFieldUpdateSchema", "description"): "multi-line help text of a custom field",
    ("ActivityCreateSchema", "type"): 'only "comment" is accepted (the service checks it)',
    ("LoginSchema", "email"): "a lookup: an account stored before the rule must still log in",
    ("ContactListArgs", "search"): "a lookup, never stored",
    ("ContactExportArgs", "search"): "a lookup, never stored",
    ("LoginSchema", "password"): "a secret, never shown",
    ("RegisterSchema", "password"): "a secret, never shown",
    ("AcceptNewUserSchema", "password"): "a secret, never shown",
    ("RefreshSchema", "refresh_token"): "opaque, never stored",
    ("AcceptNewUserSchema", "token"): "opaque, never stored",
    ("AcceptSchema", "token"): "opaque, never stored",
    ("PreviewArgs", "token"): "opaque, never stored",
    ("FeedArgs", "after"): "the change feed's cursor: opaque, never stored",
}
OPAQUE_EVERYWHERE = {"cursor": "opaque, never stored (every list's PageArgs)"}


def _input_schemas(app: Flask) -> list[ma.Schema]:
    """The argument schemas of every route (flask-smorest keeps them in the view's
    `_apidoc`), and the schemas CSV import rows are loaded with."""
    schemas: list[ma.Schema] = [csv_rows.ContactRowSchema(), csv_rows.DealRowSchema()]
    for view in app.view_functions.values():
        view_class = getattr(view, "view_class", None)
        functions = (
            [getattr(view_class, m.lower()) for m in view_class.methods] if view_class else [view]
        )
        for function in functions:
            apidoc = getattr(function, "_apidoc", {})
            schemas += [p["schema"] for p in apidoc.get("arguments", {}).get("parameters", [])]
    return schemas


def _constrained(field: ma.fields.Field) -> bool:
    return any(isinstance(v, ma.validate.OneOf | ma.validate.Regexp) for v in field.validators)


def test_every_input_string_is_single_line_or_listed_as_free_text(app: Flask) -> None:
    seen_single_line = set()
    unlisted = []
    for schema in _input_schemas(app):
        schema_name = type(schema).__name__
        for name, field in schema.load_fields.items():
            if not isinstance(field, ma.fields.String) or _constrained(field):
                continue
            if any(isinstance(v, SingleLine) for v in field.validators):
                seen_single_line.add((schema_name, name))
            elif (schema_name, name) not in FREE_TEXT and name not in OPAQUE_EVERYWHERE:
                unlisted.append((schema_name, name))
    assert unlisted == [], "single-line (SingleLine) or listed in FREE_TEXT with a reason"
    # the guard sees the fields it is about (the import rows' schemas among them)
    assert {
        ("RegisterSchema", "organization_name"),
        ("ContactRowSchema", "owner_email"),
        ("DealRowSchema", "title"),
        ("WebhookEndpointCreateSchema", "url"),
    } <= seen_single_line
