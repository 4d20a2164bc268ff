"""Path ids are parsed once, by the app's `int` URL converter: every by-id route answers an id
outside 1..2**31-1 with a 404 (the unified body), like an id that does not exist, never a 500.

The routes are taken from app.url_map, so a new by-id route is covered without editing this."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from flask import Flask
from werkzeug.routing import IntegerConverter

from .api import PREFIX, ApiClient, User, error_code

BIG_IDS = [2**31, 2**31 + 1, 2**32, 2**63, 2**64, 99999999999999999999, 10**40]
BODIES: dict[str, Any] = {"POST": {}, "PATCH": {"name": "x"}, "DELETE": None, "GET": None}


def by_id_routes(app: Flask) -> list[tuple[str, str, list[str]]]:
    """(method, rule, integer path arguments) for every API route with an integer argument."""
    found = []
    for rule in app.url_map.iter_rules():
        ints = [n for n, c in rule._converters.items() if isinstance(c, IntegerConverter)]
        if not ints or not rule.rule.startswith(PREFIX):
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            found.append((method, rule.rule, ints))
    return found


def _url(rule: str, values: dict[str, int]) -> str:
    return re.sub(r"<(?:\w+:)?(\w+)>", lambda m: str(values[m.group(1)]), rule)


@pytest.fixture(scope="module")
def owner(app: Flask) -> User:
    return ApiClient(app.test_client()).register(org_name=f"Ids {uuid.uuid4().hex[:6]}")


def _valid_ids(user: User, names: list[str]) -> dict[str, int]:
    """Ids that exist, so only the one argument under test is out of range."""
    known = {"organization_id": user.org_id, "user_id": user.id}
    return {name: known.get(name, 1) for name in names}


def test_every_by_id_route_is_walked(app: Flask) -> None:
    routes = {(m, r) for m, r, _ in by_id_routes(app)}
    expected = {
        ("GET", f"{PREFIX}/contacts/<int:contact_id>"),
        ("PATCH", f"{PREFIX}/deals/<int:deal_id>"),
        ("DELETE", f"{PREFIX}/tasks/<int:task_id>"),
        ("POST", f"{PREFIX}/deals/<int:deal_id>/activities"),
        ("GET", f"{PREFIX}/reports/<int:report_id>"),
        ("POST", f"{PREFIX}/notifications/<int:notification_id>/read"),
        ("GET", f"{PREFIX}/organizations/<int:organization_id>/members"),
        ("PATCH", f"{PREFIX}/organizations/<int:organization_id>/members/<int:user_id>"),
    }
    assert expected <= routes, expected - routes
    assert len(routes) >= 16


def test_ids_of_2_to_the_31_and_above_are_404_on_every_by_id_route(app: Flask, owner: User) -> None:
    client = app.test_client()
    headers = {"Authorization": f"Bearer {owner.token}", "X-Organization-Id": str(owner.org_id)}
    checked = 0
    for method, rule, ints in by_id_routes(app):
        for name in ints:
            for big in BIG_IDS:
                url = _url(rule, {**_valid_ids(owner, ints), name: big})
                r = client.open(url, method=method, headers=headers, json=BODIES[method])
                assert r.status_code == 404, (method, url, r.status_code, r.get_data()[:200])
                assert error_code(r) == "NOT_FOUND", (method, url)
                checked += 1
    assert checked >= 16 * len(BIG_IDS)


def test_id_zero_is_404_and_the_largest_id_reaches_the_view(app: Flask, owner: User) -> None:
    """0 does not match either; 2**31-1 is a valid id that just does not exist (or, for an
    organization, one the caller is not a member of)."""
    client = app.test_client()
    headers = {"Authorization": f"Bearer {owner.token}", "X-Organization-Id": str(owner.org_id)}
    for method, rule, ints in by_id_routes(app):
        for name in ints:
            zero = _url(rule, {**_valid_ids(owner, ints), name: 0})
            r = client.open(zero, method=method, headers=headers, json=BODIES[method])
            assert r.status_code == 404, (method, zero, r.status_code)
            assert error_code(r) == "NOT_FOUND"
            largest = _url(rule, {**_valid_ids(owner, ints), name: 2**31 - 1})
            r = client.open(largest, method=method, headers=headers, json=BODIES[method])
            assert r.status_code in (400, 403, 404), (method, largest, r.status_code)
            # the view's own answer (e.g. CONTACT_NOT_FOUND), not the router's NOT_FOUND
            assert error_code(r) != "NOT_FOUND", (method, largest, r.get_json())


def test_openapi_documents_the_id_bounds(app: Flask) -> None:
    spec = app.test_client().get(f"{PREFIX}/openapi.json").get_json()
    seen = 0
    for path, item in spec["paths"].items():
        for param in item.get("parameters", []):
            if param.get("in") == "path" and path.endswith("/by-field/{key}"):
                assert param["schema"]["type"] == "string"  # a custom field's key, not an id
            elif param.get("in") == "path":
                assert param["schema"] == {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": 2**31 - 1,
                }, (path, param)
                seen += 1
    assert seen >= 8
