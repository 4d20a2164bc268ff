"""Custom fields over HTTP: definitions (roles, limits, immutability, options), values on
contacts, deals and tasks (types, required, merge, ETags, hiding on deletion), list filters
and sorts with cursors, webhooks' changes and the deal timeline."""

from __future__ import annotations

from typing import Any

import pytest

from .api import ApiClient, User, error_code


def define(api: ApiClient, user: User, **fields: Any) -> dict[str, Any]:
    body = {"entity": "deal", "label": fields.get("key", "Field").title(), **fields}
    r = api.post("/custom-fields", user=user, org=user.org_id, json=body)
    assert r.status_code == 201, r.get_json()
    return r.get_json()


def errors(response: Any) -> dict[str, Any]:
    assert response.status_code == 400, response.get_json()
    assert error_code(response) == "VALIDATION_ERROR"
    return response.get_json()["error"]["details"]["errors"]


SEGMENT_OPTIONS = [
    {"value": "smb", "label": "Small business"},
    {"value": "enterprise", "label": "Enterprise"},
    {"value": "public", "label": "Public sector"},
]


def test_smoke(api: ApiClient) -> None:
    owner = api.register()
    define(api, owner, key="budget", type="number")
    define(api, owner, key="segment", type="single_select", options=SEGMENT_OPTIONS)
    deal = api.deal(owner, custom_fields={"budget": "12.50", "segment": "smb"})
    assert deal["custom_fields"] == {"budget": "12.5", "segment": "smb"}
    r = api.get(f"/deals/{deal['id']}", user=owner, org=owner.org_id)
    assert r.get_json()["custom_fields"] == {"budget": "12.5", "segment": "smb"}
    r = api.get("/deals", user=owner, org=owner.org_id, query={"cf.segment": "smb,public"})
    assert [d["id"] for d in r.get_json()["items"]] == [deal["id"]], r.get_json()
