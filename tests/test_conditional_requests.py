"""Conditional requests as RFC 9110 section 13 says, on every single-resource route (contacts,
deals, tasks, webhook endpoints): If-Match compares strongly (a weak tag never matches, `*`
matches any current representation), If-None-Match weakly (304 to GET/HEAD, 412 to a change),
and a header that is not `*` nor a list of quoted entity tags is 400, never a silent mismatch."""

from __future__ import annotations

import timeit
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from crm_api.conditional import MALFORMED_CODE, is_well_formed

from .api import ApiClient, User, error_code


@dataclass
class Resource:
    api: ApiClient
    user: User
    url: str
    change: Callable[[], dict[str, Any]]  # a PATCH body that changes the representation

    def call(self, method: str, url: str | None = None, **headers: str) -> Any:
        return self.api.call(
            method,
            url or self.url,
            user=self.user,
            org=self.user.org_id,
            json=self.change() if method == "PATCH" else None,
            headers={name.replace("_", "-"): value for name, value in headers.items()},
        )

    def current(self) -> tuple[dict[str, Any], str]:
        r = self.call("GET")
        assert r.status_code == 200, r.get_json()
        return r.get_json(), r.headers["ETag"]


def _fresh() -> dict[str, Any]:
    return {"title": f"T {uuid.uuid4().hex[:8]}"}


def _make(api: ApiClient, user: User, kind: str) -> Resource:
    if kind == "contacts":
        item = api.contact(user)
        return Resource(api, user, f"/contacts/{item['id']}", lambda: {"name": _fresh()["title"]})
    if kind == "deals":
        return Resource(api, user, f"/deals/{api.deal(user)['id']}", _fresh)
    if kind == "tasks":
        task = api.task(user, api.deal(user)["id"])
        return Resource(api, user, f"/tasks/{task['id']}", _fresh)
    r = api.post("/webhooks", user=user, org=user.org_id, json={"url": "http://127.0.0.1:9/h"})
    assert r.status_code == 201, r.get_json()
    return Resource(
        api,
        user,
        f"/webhooks/{r.get_json()['id']}",
        lambda: {"description": _fresh()["title"]},
    )


KINDS = ["contacts", "deals", "tasks", "webhooks"]


@pytest.fixture(scope="module")
def owner(app) -> User:
    return ApiClient(app.test_client()).register()


@pytest.fixture(params=KINDS)
def resource(request, api: ApiClient, owner: User) -> Resource:
    return _make(api, owner, request.param)


def _failed(r: Any, current: str, header: str = "If-Match") -> None:
    assert r.status_code == 412, r.get_json()
    assert error_code(r) == "PRECONDITION_FAILED"
    error = r.get_json()["error"]
    assert error["details"] == {"current_etag": current}
    assert f"{header} " in error["message"]  # which condition failed


def test_if_match_compares_strongly(resource: Resource) -> None:
    body, tag = resource.current()
    assert tag.startswith('"') and tag.endswith('"')  # the API's tags are strong
    weak = f"W/{tag}"
    _failed(resource.call("PATCH", If_Match=weak), tag)
    _failed(resource.call("DELETE", If_Match=weak), tag)
    _failed(resource.call("GET", If_Match=weak), tag)
    assert resource.current() == (body, tag)  # neither change happened

    r = resource.call("PATCH", If_Match=f'"other", {tag}')  # one of the list matches
    assert r.status_code == 200, r.get_json()
    changed = r.headers["ETag"]
    assert changed != tag and resource.current()[1] == changed
    _failed(resource.call("PATCH", If_Match=tag), changed)  # stale now
    assert resource.call("GET", If_Match=changed).status_code == 200


def test_if_match_star_matches_any_current_representation(resource: Resource) -> None:
    assert resource.call("PATCH", If_Match="*").status_code == 200
    assert resource.call("DELETE", If_Match="*").status_code == 204
    # nothing current any more: a 404, never a change
    assert resource.call("PATCH", If_Match="*").status_code == 404
    assert resource.call("DELETE", If_Match="*").status_code == 404


def test_if_none_match_on_get_compares_weakly_and_answers_304(resource: Resource) -> None:
    body, tag = resource.current()
    for offered in (tag, f"W/{tag}", f'"other", W/{tag}', "*"):
        for method in ("GET", "HEAD"):
            r = resource.call(method, If_None_Match=offered)
            assert r.status_code == 304, (method, offered)
            assert r.headers["ETag"] == tag
            assert r.get_data() == b""
    r = resource.call("GET", If_None_Match='"other", W/"another"')
    assert r.status_code == 200 and r.get_json() == body and r.headers["ETag"] == tag


def test_if_none_match_on_a_change_is_412_and_changes_nothing(resource: Resource) -> None:
    body, tag = resource.current()
    for offered in (tag, f"W/{tag}", "*"):
        _failed(resource.call("PATCH", If_None_Match=offered), tag, "If-None-Match")
        _failed(resource.call("DELETE", If_None_Match=offered), tag, "If-None-Match")
    assert resource.current() == (body, tag)
    r = resource.call("PATCH", If_None_Match='"other"')
    assert r.status_code == 200, r.get_json()
    # both conditions: If-Match first (RFC 9110 section 13.2.2), then If-None-Match
    changed = r.headers["ETag"]
    both = resource.call("PATCH", If_Match=changed, If_None_Match=f"W/{changed}")
    _failed(both, changed, "If-None-Match")
    _failed(resource.call("PATCH", If_Match=tag, If_None_Match=changed), changed, "If-Match")
    assert resource.call("DELETE", If_Match=changed, If_None_Match=tag).status_code == 204


MALFORMED = [
    "abc",  # unquoted
    "9b2d4c8e0a1f3b5d7c9e1a3b5d7f9e0c",  # a tag without its quotes
    'w/"abc"',  # the weak prefix is case-sensitive
    'W/ "abc"',
    '"abc',
    'abc"',
    '"a b"',  # no space inside a tag
    '"a"b"',
    '"a" "b"',  # tags need a comma between them
    '"abc";',
    '*, "abc"',  # "*" stands alone
    "**",
    '"\x01"',
    "garbage, !!",
]


@pytest.mark.parametrize("value", MALFORMED)
def test_a_malformed_condition_is_400_before_anything_changes(
    api: ApiClient, owner: User, value: str
) -> None:
    contact = _make(api, owner, "contacts")
    body, tag = contact.current()
    for header in ("If-Match", "If-None-Match"):
        for method in ("GET", "HEAD", "PATCH", "DELETE"):
            r = contact.call(method, **{header.replace("-", "_"): value})
            assert r.status_code == 400, (header, method, r.status_code)
            if method != "HEAD":
                assert error_code(r) == MALFORMED_CODE
                assert r.get_json()["error"]["details"] == {"header": header}
    assert contact.current() == (body, tag)


VALID = [
    "*",
    '"abc"',
    'W/"abc"',
    '""',
    '"a,b"',  # a comma is a tag character
    '"x", W/"y","z"',
    ', "x" ,,',  # empty list elements are allowed
    "",
    '"caf\xe9"',  # obs-text
]


@pytest.mark.parametrize("value", VALID)
def test_well_formed_conditions(value: str) -> None:
    assert is_well_formed(value)


@pytest.mark.parametrize("value", MALFORMED)
def test_malformed_conditions(value: str) -> None:
    assert not is_well_formed(value)


def test_a_well_formed_list_that_matches_nothing_is_412(api: ApiClient, owner: User) -> None:
    contact = _make(api, owner, "contacts")
    _, tag = contact.current()
    for value in ("", ", ,", '""', '"a,b"'):
        _failed(contact.call("PATCH", If_Match=value), tag)


@pytest.mark.parametrize(
    "build", [lambda n: " " * n + "x", lambda n: "," * n + "x", lambda n: '"a",' * (n // 4) + "x"]
)
def test_checking_the_syntax_takes_linear_time(build: Callable[[int], str]) -> None:
    """Headers are client input: the check must not backtrack (8 times the length costs
    about 8 times as much; a quadratic check would cost 64 times)."""

    def cost(n: int) -> float:
        value = build(n)
        return min(timeit.repeat(lambda: is_well_formed(value), number=1, repeat=5))

    assert cost(16_000) / cost(2_000) < 20
