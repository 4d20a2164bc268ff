"""The OpenAPI document, the offline Swagger UI, and the health/readiness endpoints."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

import pytest
from flask import Flask
from openapi_spec_validator import validate

from crm_domain.text import SINGLE_LINE_PATTERN

from .api import PREFIX, ApiClient

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
PUBLIC_OPERATIONS = {
    ("post", f"{PREFIX}/auth/register"),
    ("post", f"{PREFIX}/auth/login"),
    ("post", f"{PREFIX}/auth/refresh"),
    ("post", f"{PREFIX}/auth/accept-invitation"),
    ("get", f"{PREFIX}/invitations/preview"),
}
# every other /api/v1 operation is tenant-scoped (contacts, deals, tasks, activities, ...)
NON_TENANT_PREFIXES = (f"{PREFIX}/auth", f"{PREFIX}/organizations", f"{PREFIX}/invitations")
ORG_PARAMETER_REF = "#/components/parameters/OrganizationId"


@pytest.fixture(scope="module")
def spec(app: Flask) -> dict[str, Any]:
    r = app.test_client().get(f"{PREFIX}/openapi.json")
    assert r.status_code == 200
    assert r.is_json
    return r.get_json()


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, op)
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if method in HTTP_METHODS
    ]


def _resolve(spec: dict[str, Any], obj: dict[str, Any]) -> dict[str, Any]:
    ref = obj.get("$ref")
    if ref is None:
        return obj
    node: Any = spec
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def _parameters(spec: dict[str, Any], path: str, op: dict[str, Any]) -> list[dict[str, Any]]:
    """Path-level and operation-level parameters, as written (refs unresolved)."""
    return list(spec["paths"][path].get("parameters", [])) + list(op.get("parameters", []))


def is_tenant(path: str) -> bool:
    return not path.startswith(NON_TENANT_PREFIXES)


# --- the document --------------------------------------------------------------------------


def test_spec_is_valid_openapi(spec: dict[str, Any]) -> None:
    assert spec["openapi"].startswith("3.")
    validate(spec)
    assert spec["info"]["title"]
    assert spec["info"]["version"]


def test_spec_documents_every_api_route(app: Flask, spec: dict[str, Any]) -> None:
    """Every /api/v1 endpoint of the app (except the docs themselves) is in the spec."""
    documented = {(m, p) for m, p, _ in operations(spec)}
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith(PREFIX + "/") or rule.rule.startswith(
            (f"{PREFIX}/docs", f"{PREFIX}/openapi.json")
        ):
            continue
        path = re.sub(r"<(?:[a-z]+:)?(\w+)>", r"{\1}", rule.rule)
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            assert (method.lower(), path) in documented, (method, path)


BARE_ARRAYS = {f"{PREFIX}/organizations/me", f"{PREFIX}/organizations/{{organization_id}}/members"}


def test_lists_that_answer_a_bare_array_say_so(spec: dict[str, Any]) -> None:
    """Every other list answers a page ({"items": [...], "total", ...}): these two answer a
    bare array (kept for existing clients), and their documentation says so."""
    bare = set()
    for method, path, op in operations(spec):
        ok = op["responses"].get("200", {}).get("content", {}).get("application/json", {})
        if method == "get" and ok.get("schema", {}).get("type") == "array":
            bare.add(path)
            assert "bare array" in op.get("description", ""), path
    assert bare == BARE_ARRAYS


def test_bearer_and_api_key_security_schemes_and_global_security(spec: dict[str, Any]) -> None:
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    # the second scheme: Swagger UI's Authorize takes an API key too (sent as a bearer token)
    assert schemes["apiKeyAuth"]["type"] == "http"
    assert schemes["apiKeyAuth"]["scheme"] == "bearer"
    assert spec["security"] == [{"bearerAuth": []}]


TOKEN_OR_KEY = [{"bearerAuth": []}, {"apiKeyAuth": []}]
TOKEN_ONLY_TENANT_OPERATIONS = {("post", f"{PREFIX}/api-keys")}  # keys do not make keys


def test_public_operations_need_no_token_tenant_ones_take_a_key(spec: dict[str, Any]) -> None:
    found = set()
    for method, path, op in operations(spec):
        if (method, path) in PUBLIC_OPERATIONS:
            assert op.get("security") == [], (method, path)
            found.add((method, path))
        elif is_tenant(path) and (method, path) not in TOKEN_ONLY_TENANT_OPERATIONS:
            assert op["security"] == TOKEN_OR_KEY, (method, path)
        else:
            # account and organization routes, and making keys: a login token only
            assert op.get("security", spec["security"]) == spec["security"], (method, path)
    assert found == PUBLIC_OPERATIONS


def test_org_header_parameter_component(spec: dict[str, Any]) -> None:
    param = _resolve(spec, {"$ref": ORG_PARAMETER_REF})
    assert param["name"] == "X-Organization-Id"
    assert param["in"] == "header"
    # required with a login token, optional with an API key: the description says which
    assert param["required"] is False
    assert "API key" in param["description"] and "required" in param["description"]
    assert param["schema"]["type"] == "integer"


IDEMPOTENCY_PARAMETER_REF = "#/components/parameters/IdempotencyKey"
NOT_IDEMPOTENT = {("post", f"{PREFIX}/api-keys")}  # the answer is a secret kept nowhere


def test_every_post_and_patch_with_a_caller_documents_idempotency_key(
    spec: dict[str, Any],
) -> None:
    param = _resolve(spec, {"$ref": IDEMPOTENCY_PARAMETER_REF})
    assert (param["name"], param["in"], param["required"]) == ("Idempotency-Key", "header", False)
    assert param["schema"]["maxLength"] == 255
    documented = 0
    for method, path, op in operations(spec):
        refs = [p.get("$ref") for p in _parameters(spec, path, op)]
        takes_it = (
            method in ("post", "patch")
            and op.get("security") != []
            and (method, path) not in NOT_IDEMPOTENT
        )
        assert refs.count(IDEMPOTENCY_PARAMETER_REF) == int(takes_it), (method, path)
        if takes_it:
            documented += 1
            assert {"400", "409", "422"} <= set(op["responses"]), (method, path)
    assert documented >= 20


def test_every_tenant_operation_lists_the_org_header(spec: dict[str, Any]) -> None:
    tenant_ops = [(m, p, op) for m, p, op in operations(spec) if is_tenant(p)]
    assert len(tenant_ops) >= 19  # the routes of the isolation matrix
    for method, path, op in tenant_ops:
        refs = [p.get("$ref") for p in _parameters(spec, path, op)]
        assert refs.count(ORG_PARAMETER_REF) == 1, (method, path, refs)
        # and it is not also spelled out inline
        inline = [
            p for p in _parameters(spec, path, op) if "$ref" not in p and p.get("in") == "header"
        ]
        assert not [p for p in inline if p["name"].lower() == "x-organization-id"], (method, path)
        responses = op["responses"]
        assert "403" in responses, (method, path)
        assert "400" in responses, (method, path)


def test_non_tenant_operations_do_not_ask_for_the_org_header(spec: dict[str, Any]) -> None:
    for method, path, op in operations(spec):
        if is_tenant(path):
            continue
        refs = [p.get("$ref") for p in _parameters(spec, path, op)]
        assert ORG_PARAMETER_REF not in refs, (method, path)


def test_every_non_public_operation_documents_401(spec: dict[str, Any]) -> None:
    checked = 0
    for method, path, op in operations(spec):
        if op.get("security") == []:
            continue
        assert "401" in op["responses"], (method, path)
        checked += 1
    assert checked >= 25


def test_error_responses_use_the_unified_error_schema(spec: dict[str, Any]) -> None:
    error = spec["components"]["schemas"]["Error"]
    assert error["required"] == ["error"] or set(error["required"]) == {"error"}
    body = _resolve(spec, error["properties"]["error"])
    if "allOf" in body:
        body = _resolve(spec, body["allOf"][0])
    assert {"code", "message", "details"} <= set(body["properties"])
    for method, path, op in operations(spec):
        for status, response in op["responses"].items():
            if not (status.isdigit() and int(status) >= 400):
                continue
            schema = _resolve(spec, response).get("content", {}).get("application/json", {})
            assert schema.get("schema") == {"$ref": "#/components/schemas/Error"}, (
                method,
                path,
                status,
            )


def test_operations_have_summaries_and_success_responses(spec: dict[str, Any]) -> None:
    for method, path, op in operations(spec):
        assert op.get("summary"), (method, path)
        assert any(s.startswith("2") for s in op["responses"]), (method, path)


# --- Swagger UI, served offline ------------------------------------------------------------


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.urls.append(value)


def test_docs_page_uses_local_assets(api: ApiClient) -> None:
    r = api.client.get(f"{PREFIX}/docs")
    assert r.status_code == 200
    assert r.mimetype == "text/html"
    html = r.get_data(as_text=True)
    assert "SwaggerUIBundle" in html
    assert f"{PREFIX}/openapi.json" in html
    assert not re.search(r"https?://", html), "the docs page must not load anything remote"
    parser = _Assets()
    parser.feed(html)
    names = {url.rsplit("/", 1)[-1] for url in parser.urls}
    assert {"swagger-ui-bundle.js", "swagger-ui.css"} <= names, parser.urls
    for url in parser.urls:
        assert url.startswith("/"), url  # same origin
        asset = api.client.get(url)
        assert asset.status_code == 200, url
        body = asset.get_data()
        assert len(body) > 1000, url
        if url.endswith(".js"):
            assert "javascript" in asset.mimetype, (url, asset.mimetype)
        if url.endswith(".css"):
            assert asset.mimetype == "text/css", (url, asset.mimetype)
        asset.close()


def test_docs_with_a_trailing_slash_lead_to_the_docs(api: ApiClient) -> None:
    r = api.client.get(f"{PREFIX}/docs/")
    assert r.status_code == 308
    assert r.headers["Location"] == f"{PREFIX}/docs"
    followed = api.client.get(f"{PREFIX}/docs/", follow_redirects=True)
    assert followed.status_code == 200 and "SwaggerUIBundle" in followed.get_data(as_text=True)


def test_swagger_bundle_asset(api: ApiClient) -> None:
    r = api.client.get(f"{PREFIX}/docs/assets/swagger-ui-bundle.js")
    assert r.status_code == 200
    assert b"SwaggerUIBundle" in r.get_data()
    r.close()
    r = api.client.get(f"{PREFIX}/docs/assets/swagger-ui.css")
    assert r.status_code == 200
    assert b".swagger-ui" in r.get_data()
    r.close()


@pytest.mark.parametrize(
    "name", ["../../../../etc/passwd", "..%2F..%2Fsecret", "missing.js", "%2e%2e/%2e%2e/x"]
)
def test_docs_assets_do_not_escape_their_directory(api: ApiClient, name: str) -> None:
    r = api.client.get(f"{PREFIX}/docs/assets/{name}")
    assert r.status_code == 404
    assert r.get_json()["error"]["code"] == "NOT_FOUND"


# --- health and readiness -------------------------------------------------------------------


def test_health(api: ApiClient) -> None:
    r = api.get("/health")
    assert r.status_code == 200
    assert r.get_json() == {"status": "ok"}


def test_health_needs_no_token_and_ignores_bad_ones(api: ApiClient) -> None:
    r = api.get("/health", token="not-a-jwt", org="abc")
    assert r.status_code == 200
    assert r.get_json() == {"status": "ok"}


def test_ready_checks_database_and_redis(api: ApiClient) -> None:
    r = api.get("/ready")
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["status"] == "ok"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["redis"] == "ok"


# --- the contract of values ------------------------------------------------------------------


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every (json path, schema object) that has `properties`, in the whole document."""
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        if isinstance(node.get("properties"), dict):
            found.append((path, node))
        for key, value in node.items():
            found.extend(_walk(value, f"{path}/{key}"))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found.extend(_walk(value, f"{path}/{i}"))
    return found


def _amount_schemas(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every property or query parameter named like an amount, with its schema."""
    found = [
        (f"{where}/{name}", prop)
        for where, obj in _walk(spec)
        for name, prop in obj["properties"].items()
        if "amount" in name
    ]
    for method, path, op in operations(spec):
        for param in _parameters(spec, path, op):
            if "amount" in param.get("name", ""):
                found.append((f"{method} {path} ?{param['name']}", param["schema"]))
    return found


def test_amounts_are_decimal_strings_everywhere(spec: dict[str, Any]) -> None:
    """The API answers "10000.00" (a string): the document says so for deals, their filters
    and the analytics, never `type: number`."""
    found = _amount_schemas(spec)
    names = {where.rsplit("/", 1)[-1].split("?")[-1] for where, _ in found}
    assert {"amount", "min_amount", "max_amount", "total_amount", "avg_won_amount"} <= names
    for where, schema in found:
        assert schema.get("type") == "string", (where, schema)
        assert schema.get("format") == "decimal", (where, schema)
        assert re.fullmatch(schema["pattern"], "10000.00"), (where, schema)
        assert not re.fullmatch(schema["pattern"], "1e3"), (where, schema)
        assert "minimum" not in schema and "maximum" not in schema, (where, schema)


def test_deal_amount_answers_match_the_documented_pattern(
    spec: dict[str, Any], api: ApiClient
) -> None:
    user = api.register()
    pattern = spec["components"]["schemas"]["Deal"]["properties"]["amount"]["pattern"]
    for sent in ("0", "5", "10.5", "9999999999.99"):
        deal = api.deal(user, amount=sent)
        assert isinstance(deal["amount"], str), deal
        assert re.fullmatch(pattern, deal["amount"]), deal["amount"]
        assert re.fullmatch(r"[0-9]+\.[0-9]{2}", deal["amount"]), deal["amount"]


def test_documented_deal_defaults_are_what_the_api_does(
    spec: dict[str, Any], api: ApiClient
) -> None:
    props = spec["components"]["schemas"]["DealCreate"]["properties"]
    assert props["amount"]["default"] == "0.00"
    assert props["currency"]["default"] == "USD"
    user = api.register()
    contact = api.contact(user)["id"]
    for body in ({}, {"amount": None}):
        r = api.post(
            "/deals", user=user, org=user.org_id, json={"contact_id": contact, "title": "T", **body}
        )
        assert r.status_code == 201, r.get_json()
        deal = r.get_json()
        assert deal["amount"] == props["amount"]["default"], deal
        assert deal["currency"] == props["currency"]["default"], deal


def test_enforced_input_rules_are_documented(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    password = schemas["Register"]["properties"]["password"]
    assert (password["minLength"], password["maxLength"]) == (8, 72)
    assert "8 to 72 bytes" in password["description"]
    activity_type = schemas["ActivityCreate"]["properties"]["type"]
    assert activity_type["enum"] == ["comment"]
    text = schemas["ActivityCreate"]["properties"]["payload"]["properties"]["text"]
    assert text["type"] == "string" and text["minLength"] == 1
    # every free-text input says it takes no NUL (PostgreSQL cannot store it), and every
    # single-line one that it takes no line break nor control character either
    no_nul = "^[^\\u0000]*$"
    for name, field in (("TaskCreate", "description"), ("Login", "email"), ("Login", "password")):
        assert schemas[name]["properties"][field]["pattern"] == no_nul, (name, field)
        assert re.search(schemas[name]["properties"][field]["pattern"], "a\x00b") is None
        assert re.search(schemas[name]["properties"][field]["pattern"], "a\nb") is not None
    for name, field in (
        ("ContactCreate", "name"),
        ("ContactUpdate", "phone"),
        ("DealCreate", "title"),
        ("TaskUpdate", "title"),
        ("Register", "name"),
        ("Register", "organization_name"),
        ("OrganizationCreate", "name"),
        ("WebhookEndpointCreate", "description"),
        ("WebhookEndpointUpdate", "url"),
    ):
        pattern = schemas[name]["properties"][field]["pattern"]
        assert pattern == SINGLE_LINE_PATTERN, (name, field)
        for bad in ("a\x00b", "a\nb", "a\x85b", "a\u2028b", "a\x7fb"):
            assert re.search(pattern, bad) is None, (name, field, bad)
        assert re.search(pattern, "Acme Inc. \u2013 Zürich") is not None
    search = next(
        p
        for p in spec["paths"][f"{PREFIX}/contacts"]["get"]["parameters"]
        if p.get("name") == "search"
    )
    assert search["schema"]["pattern"] == no_nul
    assert "NUL" in spec["info"]["description"]
    assert "surrogate" in spec["info"]["description"]
    assert "U+2028" in spec["info"]["description"]


# --- the API root ----------------------------------------------------------------------------


@pytest.mark.parametrize("url", [PREFIX, f"{PREFIX}/"])
def test_api_root_is_an_index_whose_links_work(api: ApiClient, url: str) -> None:
    """`make run` prints /api/v1 as "the API": it answers JSON with working links."""
    r = api.client.get(url)
    assert r.status_code == 200, r.get_data()[:200]
    assert r.is_json
    body = r.get_json()
    assert body["version"] == "v1"
    links = body["links"]
    assert links == {
        "docs": f"{PREFIX}/docs",
        "openapi": f"{PREFIX}/openapi.json",
        "health": "/health",
        "ready": "/ready",
    }
    for link in links.values():
        followed = api.client.get(link)
        assert followed.status_code == 200, link
        followed.close()
    assert api.client.get(links["openapi"]).get_json()["openapi"].startswith("3.")


NEW_INVITATION_OPERATIONS = [
    ("get", f"{PREFIX}/organizations/{{organization_id}}/invitations"),
    ("post", f"{PREFIX}/organizations/{{organization_id}}/invitations"),
    ("delete", f"{PREFIX}/organizations/{{organization_id}}/invitations/{{invitation_id}}"),
    ("get", f"{PREFIX}/invitations/preview"),
    ("post", f"{PREFIX}/auth/accept-invitation"),
    ("post", f"{PREFIX}/invitations/accept"),
    ("patch", f"{PREFIX}/auth/me"),
]


@pytest.mark.parametrize(("method", "path"), NEW_INVITATION_OPERATIONS)
def test_invitation_and_email_routes_have_examples(
    spec: dict[str, Any], method: str, path: str
) -> None:
    op = spec["paths"][path][method]
    body = op.get("requestBody")
    if body is not None:
        assert body["content"]["application/json"].get("example"), (method, path)
    success = [_resolve(spec, r) for s, r in op["responses"].items() if s.startswith("2")]
    for response in success:
        content = response.get("content")
        if content is not None:  # 204 has none
            assert content["application/json"].get("example"), (method, path)
    if path.endswith(("/accept-invitation", "/accept", "/preview")):
        # the token errors are documented with the unified body and an example
        for status in ("404", "410"):
            error = _resolve(spec, op["responses"][status])
            assert error["content"]["application/json"]["example"]["error"]["code"].startswith(
                "INVITATION_"
            )


def test_csv_import_and_export_routes_have_examples(spec: dict[str, Any]) -> None:
    csv_ops = [
        (m, p, op) for m, p, op in operations(spec) if "/imports" in p or p.endswith("export.csv")
    ]
    assert len(csv_ops) == 8  # + the audit log's export
    for method, path, op in csv_ops:
        success = [r for s, r in op["responses"].items() if s.startswith("2")]
        contents = [c for r in success for c in _resolve(spec, r).get("content", {}).values()]
        assert contents and all("example" in c for c in contents), (method, path)
    upload = spec["paths"][f"{PREFIX}/imports"]["post"]["requestBody"]["content"]
    assert set(upload) == {"multipart/form-data"}
    assert upload["multipart/form-data"]["example"]["kind"] == "contacts"
    schema = _resolve(spec, upload["multipart/form-data"]["schema"])
    assert schema["properties"]["file"] == {
        "description": "the CSV file (UTF-8, header row)",
        "type": "string",
        "format": "binary",
    }
    assert set(schema["required"]) == {"file", "kind"}
    for kind in ("contacts", "deals"):
        ok = spec["paths"][f"{PREFIX}/{kind}/export.csv"]["get"]["responses"]["200"]
        assert set(ok["content"]) == {"text/csv"}


# --- conditional requests --------------------------------------------------------------------

CONDITIONAL_PATHS = [
    f"{PREFIX}/contacts/{{contact_id}}",
    f"{PREFIX}/deals/{{deal_id}}",
    f"{PREFIX}/tasks/{{task_id}}",
    f"{PREFIX}/webhooks/{{endpoint_id}}",
]


def _header_parameters(spec: dict[str, Any], path: str, op: dict[str, Any]) -> dict[str, Any]:
    resolved = [_resolve(spec, p) for p in _parameters(spec, path, op)]
    return {p["name"]: p for p in resolved if p["in"] == "header"}


def test_conditional_headers_are_documented_where_they_are_honoured(
    spec: dict[str, Any],
) -> None:
    """A generated client learns If-Match / If-None-Match, the ETag and the 304/412 answers
    from the document alone, on exactly the routes that honour them."""
    honoured = {(m, p) for p in CONDITIONAL_PATHS for m in ("get", "patch", "delete")}
    documented = {
        (method, path)
        for method, path, op in operations(spec)
        if {"If-Match", "If-None-Match"} & set(_header_parameters(spec, path, op))
    }
    assert documented == honoured
    for method, path in honoured:
        op = spec["paths"][path][method]
        headers = _header_parameters(spec, path, op)
        for name in ("If-Match", "If-None-Match"):
            assert headers[name]["required"] is False, (method, path, name)
            pattern = headers[name]["schema"]["pattern"]
            for good in ('"abc"', 'W/"abc"', "*", '"a", W/"b"'):
                assert re.fullmatch(pattern, good), (name, good)
            for bad in ("abc", '*, "a"', 'w/"a"', '"a" "b"'):
                assert not re.fullmatch(pattern, bad), (name, bad)
        assert "strong" in headers["If-Match"]["description"]
        assert "weak" in headers["If-None-Match"]["description"]
        responses = op["responses"]
        failed = _resolve(spec, responses["412"])["content"]["application/json"]
        assert failed["schema"] == {"$ref": "#/components/schemas/Error"}
        assert failed["example"]["error"]["code"] == "PRECONDITION_FAILED"
        assert "400" in responses  # a malformed header
        if method == "get":
            not_modified = _resolve(spec, responses["304"])
            assert "content" not in not_modified
            assert set(not_modified["headers"]) == {"ETag"}
        else:
            assert "304" not in responses
        if method != "delete":
            etag = _resolve(spec, responses["200"]["headers"]["ETag"])
            assert etag["schema"]["type"] == "string"
