"""Cross-tenant isolation matrix over every tenant route.

The matrix is driven by ROUTES: one row per (method, path) of a tenant-scoped endpoint. A test
fails when the app gains a tenant route under /api/v1 that the table does not list, so new
routes cannot silently skip the tenant checks. The organization routes
(`/organizations/{id}/...`, which name the organization in the path instead of the
X-Organization-Id header) have a table of their own, ORG_ROUTES, covered the same way.

Path placeholders name the entity kind ({contact}, {deal}, {task}); they are filled with the ids
of the organization a case targets. Request bodies are built from the same ids, so a broken
tenant check would make the request succeed (and the snapshot comparison catch the change).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import string
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import text

from crm_domain.db import Database
from crm_domain.models import Notification

from .api import PREFIX, ApiClient, User, error_code

Ids = dict[str, int]


def _tomorrow() -> str:
    return (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)).isoformat()


# Path parameters that name no row of one organization (every organization has a custom
# field "segment"): the routes are checked like those without an entity.
NOT_ENTITIES = frozenset({"custom_field_key"})


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # relative to /api/v1, with {contact}/{deal}/{task} placeholders
    body: Callable[[Ids], Any] | None = None
    query: dict[str, Any] | None = None
    # where to GET the state a write could change (default: the route's own path)
    snapshot: str | None = None

    @property
    def entity(self) -> str | None:
        """The entity kind in the path, if any (the last placeholder decides the 404 code)."""
        names = [
            f for _, f, _, _ in string.Formatter().parse(self.path) if f and f not in NOT_ENTITIES
        ]
        return names[-1] if names else None

    @property
    def not_found_code(self) -> str | None:
        return None if self.entity is None else f"{self.entity.upper()}_NOT_FOUND"

    @property
    def mutating(self) -> bool:
        return self.method != "GET"

    def url(self, ids: Ids) -> str:
        return self.path.format(**ids)

    def json(self, ids: Ids) -> Any:
        return None if self.body is None else self.body(ids)

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


ROUTES: tuple[Route, ...] = (
    # contacts
    Route("GET", "/contacts", query={"search": "e"}),
    Route("GET", "/contacts/export.csv", query={"search": "e"}),
    Route("POST", "/contacts", body=lambda ids: {"name": "Intruder", "email": "x@example.com"}),
    Route("GET", "/contacts/{contact}"),
    Route("PATCH", "/contacts/{contact}", body=lambda ids: {"name": "Hacked", "phone": "666"}),
    Route("DELETE", "/contacts/{contact}"),
    Route("GET", "/contacts/{contact}/duplicates"),
    Route(
        "POST",
        "/contacts/{contact}/merge",
        body=lambda ids: {"merge_ids": [ids["deal_contact"]]},
        snapshot="/contacts/{contact}",
    ),
    # deals
    Route("GET", "/deals"),
    Route("GET", "/deals/export.csv"),
    Route(
        "POST",
        "/deals",
        body=lambda ids: {"contact_id": ids["deal_contact"], "title": "Intruder", "amount": "1.00"},
    ),
    Route("GET", "/deals/{deal}"),
    Route(
        "PATCH",
        "/deals/{deal}",
        body=lambda ids: {"title": "Hacked", "status": "lost", "stage": "closed"},
    ),
    Route("DELETE", "/deals/{deal}"),
    # tasks
    Route("GET", "/tasks"),
    Route(
        "POST",
        "/tasks",
        body=lambda ids: {"deal_id": ids["deal"], "title": "Intruder", "due_date": _tomorrow()},
    ),
    Route("GET", "/tasks/{task}"),
    Route("PATCH", "/tasks/{task}", body=lambda ids: {"title": "Hacked", "is_done": True}),
    Route("DELETE", "/tasks/{task}"),
    # activities
    Route("GET", "/deals/{deal}/activities"),
    Route(
        "POST",
        "/deals/{deal}/activities",
        body=lambda ids: {"type": "comment", "payload": {"text": "intruder"}},
    ),
    # trash (the ids are live records: another org's id, or a live one, is not in the trash)
    Route("GET", "/trash", query={"entity": "deal"}),
    *(
        Route(method, path.format(kind=kind) + suffix, snapshot=f"/{kind}s/{{{kind}}}")
        for kind in ("contact", "deal", "task")
        for method, path, suffix in (
            ("POST", "/trash/{kind}/{{{kind}}}", "/restore"),
            ("DELETE", "/trash/{kind}/{{{kind}}}", ""),
        )
    ),
    # analytics
    Route("GET", "/analytics/deals/summary", query={"days": 30}),
    Route("GET", "/analytics/deals/funnel"),
    Route("GET", "/analytics/deals/by-field/{custom_field_key}"),
    # reports
    Route("GET", "/reports"),
    Route("POST", "/reports"),
    Route("GET", "/reports/{report}"),
    # imports (a JSON body is no upload: every rejection below comes before the body)
    Route("GET", "/imports"),
    Route("POST", "/imports", body=lambda ids: {"kind": "contacts"}),
    Route("GET", "/imports/{import}"),
    Route("GET", "/imports/{import}/errors.csv", snapshot="/imports/{import}"),
    Route("POST", "/imports/{import}/retry", snapshot="/imports/{import}"),
    # bulk actions (the records named in the body are the header's org's, or fail one by one)
    Route("GET", "/bulk-actions"),
    Route(
        "POST",
        "/bulk-actions",
        body=lambda ids: {
            "entity": "deal",
            "action": "update",
            "ids": [ids["deal"]],
            "changes": {"title": "Hacked"},
        },
        snapshot="/deals/{deal}",
    ),
    Route("GET", "/bulk-actions/{bulk_action}"),
    Route("GET", "/bulk-actions/{bulk_action}/errors"),
    Route("POST", "/bulk-actions/{bulk_action}/cancel", snapshot="/bulk-actions/{bulk_action}"),
    # notifications (the caller's own, in the header's org)
    Route("GET", "/notifications"),
    Route("POST", "/notifications/{notification}/read", snapshot="/notifications"),
    Route("POST", "/notifications/read-all", snapshot="/notifications"),
    # webhooks (owner/admin)
    Route("GET", "/webhooks"),
    Route("POST", "/webhooks", body=lambda ids: {"url": "http://127.0.0.1:9/intruder"}),
    Route("GET", "/webhooks/{webhook}"),
    Route(
        "PATCH",
        "/webhooks/{webhook}",
        body=lambda ids: {"url": "http://127.0.0.1:9/hacked", "enabled": False},
    ),
    Route("DELETE", "/webhooks/{webhook}"),
    Route("POST", "/webhooks/{webhook}/rotate-secret", snapshot="/webhooks/{webhook}"),
    Route("GET", "/webhooks/{webhook}/deliveries"),
    Route(
        "POST",
        "/webhooks/{webhook}/deliveries/{webhook_delivery}/redeliver",
        snapshot="/webhooks/{webhook}/deliveries",
    ),
    Route("POST", "/webhooks/{webhook}/test", snapshot="/webhooks/{webhook}/deliveries"),
    # API keys (the caller's own; owner/admin: everyone's)
    Route("GET", "/api-keys"),
    Route("POST", "/api-keys", body=lambda ids: {"name": "Intruder", "scope": "write"}),
    Route("DELETE", "/api-keys/{api_key}", snapshot="/api-keys"),
    # custom fields (definitions: owner/admin manage, members read; values on the records)
    Route("GET", "/custom-fields", query={"entity": "deal"}),
    Route(
        "POST",
        "/custom-fields",
        body=lambda ids: {"entity": "deal", "key": "intruder", "label": "X", "type": "text"},
        snapshot="/custom-fields",
    ),
    Route("GET", "/custom-fields/{custom_field}"),
    Route("PATCH", "/custom-fields/{custom_field}", body=lambda ids: {"label": "Hacked"}),
    Route("DELETE", "/custom-fields/{custom_field}"),
    # the audit log and the change feed (owner/admin)
    Route("GET", "/audit-log", query={"entity_type": "contact"}),
    Route("GET", "/audit-log/export.csv"),
    Route("GET", "/events"),
)

# The organization is named in the path ({org}); {member} is a user id, {invitation} an
# invitation id. A broken check would let the intruder (a user of neither organization) in as
# the owner, which the before/after snapshot of the target's members and invitations catches.
INTRUDER_EMAIL = f"intruder-{uuid.uuid4().hex[:8]}@example.com"
ORG_ROUTES: tuple[Route, ...] = (
    Route("GET", "/organizations/{org}/members"),
    Route(
        "POST",
        "/organizations/{org}/members",
        body=lambda ids: {"email": INTRUDER_EMAIL, "role": "owner"},
    ),
    Route("PATCH", "/organizations/{org}/members/{member}", body=lambda ids: {"role": "owner"}),
    Route("DELETE", "/organizations/{org}/members/{member}"),
    Route("GET", "/organizations/{org}/invitations"),
    Route(
        "POST",
        "/organizations/{org}/invitations",
        body=lambda ids: {"email": INTRUDER_EMAIL, "role": "owner"},
    ),
    Route("DELETE", "/organizations/{org}/invitations/{invitation}"),
)
ORG_ENTITY_ROUTES = tuple(r for r in ORG_ROUTES if r.entity != "org")
# The caller's own: no organization in the path.
SELF_ROUTES = (("GET", "/organizations/me"), ("POST", "/organizations"))

# How to see that an entity exists for its own org: a single GET, or a list holding its id.
ENTITY_LOOKUP = {
    "contact": "/contacts/{contact}",
    "deal": "/deals/{deal}",
    "task": "/tasks/{task}",
    "report": "/reports/{report}",
    "import": "/imports/{import}",
    "bulk_action": "/bulk-actions/{bulk_action}",
    "notification": "/notifications",
    "webhook": "/webhooks/{webhook}",
    "webhook_delivery": "/webhooks/{webhook}/deliveries",
    "api_key": "/api-keys",
    "custom_field": "/custom-fields/{custom_field}",
}

ENTITY_ROUTES = tuple(r for r in ROUTES if r.entity is not None)

# /api/v1 routes that are not tenant-scoped by the header (ORG_ROUTES and SELF_ROUTES name
# the organization in the path, or are the caller's own).
NON_TENANT_PREFIXES = ("/auth", "/organizations", "/invitations", "/openapi.json", "/docs")

_CONVERTER = re.compile(r"<(?:[a-z]+:)?(\w+)>")


def _normalize(path: str) -> str:
    """/contacts/<int:contact_id> and /contacts/{contact} both become /contacts/{}."""
    return re.sub(r"\{\w+\}", "{}", _CONVERTER.sub("{}", path))


# --- the world: two organizations with one of everything ----------------------------------


@dataclass
class Org:
    id: int
    owner: User
    ids: Ids = field(default_factory=dict)
    key: str = ""  # a write API key of the owner's


@dataclass
class World:
    api: ApiClient
    a: Org
    b: Org
    b_only: User  # a member of org B only
    both: User  # a manager in org A and in org B (plus their own org)

    def org(self, name: str) -> Org:
        return {"a": self.a, "b": self.b}[name]


def _populate(api: ApiClient, db: Database, owner: User, label: str) -> Org:
    org = Org(id=owner.org_id, owner=owner)
    contact = api.contact(owner, name=f"{label} Lonely", email=f"lonely-{label}@example.com")
    deal_contact = api.contact(owner, name=f"{label} Buyer", email=f"buyer-{label}@example.com")
    deal = api.deal(owner, contact_id=deal_contact["id"], title=f"{label} deal")
    task = api.task(owner, deal["id"], title=f"{label} task")
    r = api.post(
        f"/deals/{deal['id']}/activities",
        user=owner,
        org=owner.org_id,
        json={"type": "comment", "payload": {"text": f"{label} comment"}},
    )
    assert r.status_code == 201, r.get_json()
    activity = r.get_json()["id"]
    r = api.post("/reports", user=owner, org=owner.org_id)
    assert r.status_code == 202, r.get_json()
    report = r.get_json()["id"]
    r = api.post(
        "/webhooks", user=owner, org=owner.org_id, json={"url": f"http://127.0.0.1:9/{label}"}
    )
    assert r.status_code == 201, r.get_json()
    webhook = r.get_json()["id"]
    r = api.post(f"/webhooks/{webhook}/test", user=owner, org=owner.org_id)
    webhook_delivery = r.get_json()["id"]
    member = api.register(name=f"{label} Member")  # a member of this organization only
    api.add_member(owner, owner.org_id, member, "member")
    r = api.post(
        f"/organizations/{owner.org_id}/invitations",
        user=owner,
        json={"email": f"invited-{label}@example.com", "role": "member"},
    )
    assert r.status_code == 201, r.get_json()
    invitation = r.get_json()["id"]
    made = api.post(
        "/api-keys", user=owner, org=owner.org_id, json={"name": f"{label} key", "scope": "write"}
    )
    assert made.status_code == 201, made.get_json()
    org.key = made.get_json()["key"]
    r = api.post(
        "/custom-fields",
        user=owner,
        org=owner.org_id,
        json={
            "entity": "deal",
            "key": "segment",
            "label": f"{label} segment",
            "type": "single_select",
            "options": [{"value": "smb", "label": "SMB"}],
        },
    )
    assert r.status_code == 201, r.get_json()
    custom_field = r.get_json()["id"]
    bulk = api.post(
        "/bulk-actions",
        user=owner,
        org=owner.org_id,
        json={"entity": "task", "action": "update", "ids": [task["id"]], "changes": {"title": "T"}},
    )
    assert bulk.status_code == 202, bulk.get_json()
    r = api.upload(owner, f"name,email\r\n{label} Imported,imported-{label}@example.com\r\n")
    assert r.status_code == 202, r.get_json()
    org.ids = {
        "org": owner.org_id,
        "member": member.id,
        "invitation": invitation,
        "contact": contact["id"],
        "deal_contact": deal_contact["id"],
        "deal": deal["id"],
        "task": task["id"],
        "activity": activity,
        "report": report,
        "import": r.get_json()["id"],
        "bulk_action": bulk.get_json()["id"],
        "notification": _notify(db, owner),
        "webhook": webhook,
        "webhook_delivery": webhook_delivery,
        "api_key": made.get_json()["id"],
        "custom_field": custom_field,
        "custom_field_key": "segment",
    }
    return org


def _notify(db: Database, user: User) -> int:
    """Notifications are made by workers; the fixture writes one for the user directly."""
    with db.transaction() as session:
        item = Notification(
            organization_id=user.org_id, user_id=user.id, type="task_due", payload={"x": 1}
        )
        session.add(item)
        session.flush()
        return item.id


@pytest.fixture(scope="module")
def world(app: Flask, db: Database) -> World:
    api = ApiClient(app.test_client())
    tag = uuid.uuid4().hex[:6]
    a = _populate(api, db, api.register(name="Alice", org_name=f"Org A {tag}"), f"a{tag}")
    b = _populate(api, db, api.register(name="Bob", org_name=f"Org B {tag}"), f"b{tag}")
    b_only = api.register(name="Bea")
    api.add_member(b.owner, b.id, b_only, "member")
    api.register(name="Intruder", email=INTRUDER_EMAIL)  # registered, member of neither
    both = api.register(name="Dual")
    api.add_member(a.owner, a.id, both, "manager")
    api.add_member(b.owner, b.id, both, "manager")
    return World(api=api, a=a, b=b, b_only=b_only, both=both)


def _snapshot(world: World, route: Route, target: Org) -> Any:
    """What the target org's owner sees where the route could write (GET), for before/after."""
    path = (route.snapshot or route.path).format(**target.ids)
    r = world.api.get(path, user=target.owner, org=target.id, query=route.query)
    assert r.status_code == 200, (str(route), r.get_json())
    return r.get_json()


def _assert_exists(world: World, kind: str, org: Org) -> None:
    r = world.api.get(
        ENTITY_LOOKUP[kind].format(**org.ids), user=org.owner, org=org.id, query={"page_size": 100}
    )
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    if "items" in body:
        assert org.ids[kind] in {i["id"] for i in body["items"]}
    else:
        assert body["id"] == org.ids[kind]


def _call(
    world: World,
    route: Route,
    *,
    ids: Ids,
    body_ids: Ids | None = None,
    user: User | None = None,
    token: str | None = None,
    org: Any = None,
) -> Any:
    return world.api.call(
        route.method,
        route.url(ids),
        user=user,
        token=token,
        org=org,
        json=route.json(body_ids if body_ids is not None else ids),
        query=route.query,
    )


def _check_rejected(
    world: World, route: Route, target: Org, status: int, code: str, **call: Any
) -> None:
    """The call is rejected with status/code and (for writes) leaves the target org unchanged."""
    before = _snapshot(world, route, target) if route.mutating else None
    r = _call(world, route, ids=target.ids, **call)
    assert r.status_code == status, (str(route), r.status_code, r.get_json())
    assert error_code(r) == code
    if route.mutating:
        assert _snapshot(world, route, target) == before, f"{route} changed org data"


route_params = pytest.mark.parametrize("route", ROUTES, ids=str)


# --- the table covers the app -------------------------------------------------------------


def test_route_table_covers_every_tenant_route(app: Flask) -> None:
    served: set[tuple[str, str]] = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith(PREFIX + "/"):
            continue
        path = rule.rule.removeprefix(PREFIX)
        if path.startswith(NON_TENANT_PREFIXES):
            continue
        for method in rule.methods or ():
            if method not in ("HEAD", "OPTIONS"):
                served.add((method, _normalize(path)))
    covered = {(r.method, _normalize(r.path)) for r in ROUTES}
    assert served, "no tenant routes found in the url_map"
    missing = served - covered
    assert not missing, f"tenant routes missing from the isolation table: {sorted(missing)}"
    stale = covered - served
    assert not stale, f"table rows the app does not serve: {sorted(stale)}"


def test_org_route_table_covers_every_organization_route(app: Flask) -> None:
    served: set[tuple[str, str]] = set()
    for rule in app.url_map.iter_rules():
        path = rule.rule.removeprefix(PREFIX)
        if rule.rule.startswith(PREFIX + "/organizations"):
            for method in rule.methods or ():
                if method not in ("HEAD", "OPTIONS"):
                    served.add((method, _normalize(path)))
    covered = {(r.method, _normalize(r.path)) for r in ORG_ROUTES} | set(SELF_ROUTES)
    assert served == covered, {"not in the table": served - covered, "stale": covered - served}


def test_route_table_has_no_duplicates() -> None:
    for table in (ROUTES, ORG_ROUTES):
        keys = [(r.method, _normalize(r.path)) for r in table]
        assert len(keys) == len(set(keys))


# --- tenant header --------------------------------------------------------------------------


@route_params
def test_missing_org_header_is_400(world: World, route: Route) -> None:
    _check_rejected(world, route, world.a, 400, "ORGANIZATION_HEADER_REQUIRED", user=world.a.owner)


BAD_HEADERS = [
    ("abc", "ORGANIZATION_HEADER_INVALID"),
    ("-1", "ORGANIZATION_HEADER_INVALID"),
    ("0", "ORGANIZATION_HEADER_INVALID"),
    ("1.5", "ORGANIZATION_HEADER_INVALID"),
    ("+1", "ORGANIZATION_HEADER_INVALID"),
    ("1e3", "ORGANIZATION_HEADER_INVALID"),
    ("0x10", "ORGANIZATION_HEADER_INVALID"),
    ("\u00b2", "ORGANIZATION_HEADER_INVALID"),  # SUPERSCRIPT TWO: isdigit(), not ascii
    ("99999999999999999999999", "ORGANIZATION_HEADER_INVALID"),
    (str(2**31), "ORGANIZATION_HEADER_INVALID"),
    (" ", "ORGANIZATION_HEADER_REQUIRED"),
    ("", "ORGANIZATION_HEADER_REQUIRED"),
]


@route_params
@pytest.mark.parametrize(("header", "code"), BAD_HEADERS, ids=[repr(h) for h, _ in BAD_HEADERS])
def test_malformed_org_header_is_400(world: World, route: Route, header: str, code: str) -> None:
    _check_rejected(world, route, world.a, 400, code, user=world.a.owner, org=header)


@route_params
def test_org_header_of_another_org_is_403(world: World, route: Route) -> None:
    """A's user names org B (and B's ids): not a member, so nothing in B is read or changed."""
    _check_rejected(
        world, route, world.b, 403, "NOT_ORGANIZATION_MEMBER", user=world.a.owner, org=world.b.id
    )


@route_params
def test_a_key_naming_another_org_is_403(world: World, route: Route) -> None:
    """A's API key with org B's header (and B's ids): refused, nothing in B read or changed."""
    code = (
        "API_KEY_NOT_ALLOWED"
        if route.method == "POST" and route.path == "/api-keys"
        else ("API_KEY_ORGANIZATION_MISMATCH")
    )
    _check_rejected(world, route, world.b, 403, code, token=world.a.key, org=world.b.id)


@route_params
@pytest.mark.parametrize("org_id", [2**31 - 1, 987654321])
def test_unknown_org_is_403(world: World, route: Route, org_id: int) -> None:
    _check_rejected(
        world, route, world.a, 403, "NOT_ORGANIZATION_MEMBER", user=world.a.owner, org=org_id
    )


@pytest.mark.parametrize("route", [r for r in ROUTES if not r.mutating], ids=str)
def test_header_with_padding_is_accepted(world: World, route: Route) -> None:
    """Surrounding white space is tolerated: the header still selects the caller's org."""
    r = _call(world, route, ids=world.a.ids, user=world.a.owner, org=f" {world.a.id} ")
    assert r.status_code == 200, r.get_json()


# --- authentication comes first -----------------------------------------------------------


@route_params
@pytest.mark.parametrize(
    ("token", "code"),
    [(None, "UNAUTHORIZED"), ("not-a-jwt", "INVALID_TOKEN")],
    ids=["no-token", "garbage-token"],
)
def test_without_valid_token_is_401(
    world: World, route: Route, token: str | None, code: str
) -> None:
    _check_rejected(world, route, world.a, 401, code, token=token, org=world.a.id)


@route_params
def test_no_token_and_no_header_is_401(world: World, route: Route) -> None:
    """Authentication is checked before the tenant header."""
    _check_rejected(world, route, world.a, 401, "UNAUTHORIZED")


@route_params
def test_refresh_token_is_not_an_access_token(world: World, route: Route) -> None:
    r = _call(world, route, ids=world.a.ids, token=world.a.owner.refresh_token, org=world.a.id)
    assert r.status_code == 401
    assert error_code(r) in {"INVALID_TOKEN", "UNAUTHORIZED"}


# --- entity ids of another organization ---------------------------------------------------


@pytest.mark.parametrize("route", ENTITY_ROUTES, ids=str)
@pytest.mark.parametrize("caller", ["owner", "both", "key"])
def test_entity_of_another_org_is_404(world: World, route: Route, caller: str) -> None:
    """Org A's header with org B's entity id: 404 with the entity's code, B's data unchanged.

    `both` is a manager in B too, so only the header (not the user's rights) decides; `key`
    is A's owner's API key, without a header."""
    who: dict[str, Any] = {
        "owner": {"user": world.a.owner, "org": world.a.id},
        "both": {"user": world.both, "org": world.a.id},
        "key": {"token": world.a.key},
    }[caller]
    assert route.not_found_code is not None
    before = _snapshot(world, route, world.b) if route.mutating else None
    r = _call(world, route, ids=world.b.ids, body_ids=world.a.ids, **who)
    assert r.status_code == 404, (str(route), r.get_json())
    assert error_code(r) == route.not_found_code
    if route.mutating:
        assert _snapshot(world, route, world.b) == before
    # the entity is really there for its own org
    assert route.entity is not None
    _assert_exists(world, route.entity, world.b)


# --- organization routes (the organization in the path) ----------------------------------


def _org_state(world: World, target: Org) -> Any:
    """The target organization's members and pending invitations, as its owner sees them."""
    state = []
    for path in ("/organizations/{org}/members", "/organizations/{org}/invitations"):
        r = world.api.get(path.format(**target.ids), user=target.owner)
        assert r.status_code == 200, r.get_json()
        state.append(r.get_json())
    return state


def _check_org_rejected(
    world: World, route: Route, target: Org, status: int, code: str, **call: Any
) -> None:
    before = _org_state(world, target)
    r = _call(world, route, ids=target.ids, **call)
    assert r.status_code == status, (str(route), r.status_code, r.get_json())
    assert error_code(r) == code
    assert _org_state(world, target) == before, f"{route} changed the organization"


org_route_params = pytest.mark.parametrize("route", ORG_ROUTES, ids=str)


@org_route_params
@pytest.mark.parametrize("header", ["none", "own"])
def test_org_route_of_another_org_is_403(world: World, route: Route, header: str) -> None:
    """A's owner names org B in the path: not a member of B, so nothing in B is read or
    changed, whatever X-Organization-Id says (the path decides)."""
    org = world.a.id if header == "own" else None
    _check_org_rejected(
        world, route, world.b, 403, "NOT_ORGANIZATION_MEMBER", user=world.a.owner, org=org
    )


@org_route_params
@pytest.mark.parametrize("org_id", [2**31 - 1, 987654321])
def test_org_route_of_an_unknown_org_is_403(world: World, route: Route, org_id: int) -> None:
    r = _call(world, route, ids={**world.a.ids, "org": org_id}, user=world.a.owner)
    assert r.status_code == 403, (str(route), r.get_json())
    assert error_code(r) == "NOT_ORGANIZATION_MEMBER"


@org_route_params
@pytest.mark.parametrize("token", ["none", "garbage", "refresh"])
def test_org_route_without_a_valid_access_token_is_401(
    world: World, route: Route, token: str
) -> None:
    given = {"none": None, "garbage": "not-a-jwt", "refresh": world.b.owner.refresh_token}[token]
    before = _org_state(world, world.b)
    r = _call(world, route, ids=world.b.ids, token=given)
    assert r.status_code == 401, (str(route), r.get_json())
    assert error_code(r) in {"UNAUTHORIZED", "INVALID_TOKEN"}
    assert _org_state(world, world.b) == before


@pytest.mark.parametrize("route", ORG_ENTITY_ROUTES, ids=str)
def test_org_entity_of_another_org_is_404(world: World, route: Route) -> None:
    """A's owner, in A's path, with B's member or invitation id: 404 with the entity's code;
    neither organization changes."""
    assert route.not_found_code is not None
    before = _org_state(world, world.a), _org_state(world, world.b)
    r = _call(world, route, ids={**world.b.ids, "org": world.a.id}, user=world.a.owner)
    assert r.status_code == 404, (str(route), r.get_json())
    assert error_code(r) == route.not_found_code
    assert (_org_state(world, world.a), _org_state(world, world.b)) == before


def test_members_and_invitations_lists_show_only_their_org(world: World) -> None:
    for me, other in ((world.a, world.b), (world.b, world.a)):
        members, invitations = _org_state(world, me)
        member_ids = {m["user_id"] for m in members}
        assert {me.owner.id, me.ids["member"], world.both.id} <= member_ids
        assert not member_ids & {other.owner.id, other.ids["member"]}
        assert [i["id"] for i in invitations["items"]] == [me.ids["invitation"]]
        assert {i["organization_id"] for i in invitations["items"]} == {me.id}


def test_the_audit_log_and_the_feed_show_only_their_org(world: World, db: Database) -> None:
    with db.transaction() as session:
        rows = session.execute(text("SELECT organization_id, id FROM audit_entries")).all()
    for me, other in ((world.a, world.b), (world.b, world.a)):
        mine = {i for org, i in rows if org == me.id}
        theirs = {i for org, i in rows if org == other.id}
        assert mine and theirs
        log = world.api.get("/audit-log", user=me.owner, org=me.id, query={"limit": 100})
        feed = world.api.get("/events", token=me.key, query={"limit": 1000})
        csv_ids = world.api.get("/audit-log/export.csv", user=me.owner, org=me.id)
        shown = {e["id"] for e in log.get_json()["items"] + feed.get_json()["items"]}
        csv_rows = csv.DictReader(io.StringIO(csv_ids.get_data(as_text=True)))
        shown |= {int(row["id"]) for row in csv_rows}
        assert shown <= mine and not shown & theirs
        entities = {(e["entity_type"], e["entity_id"]) for e in feed.get_json()["items"]}
        assert ("contact", me.ids["contact"]) in entities
        assert ("contact", other.ids["contact"]) not in entities
        # A cursor of the other organization's feed is refused, not followed.
        cursor = world.api.get("/events", token=other.key).get_json()["next_cursor"]
        r = world.api.get("/events", token=me.key, query={"after": cursor})
        assert r.status_code == 400 and error_code(r) == "INVALID_CURSOR"


def test_my_organizations_are_mine_only(world: World) -> None:
    def mine(user: User) -> set[int]:
        r = world.api.get("/organizations/me", user=user)
        assert r.status_code == 200, r.get_json()
        return {o["id"] for o in r.get_json()}

    assert mine(world.a.owner) == {world.a.id}
    assert mine(world.b_only) == {world.b.id, world.b_only.org_id}
    assert mine(world.both) == {world.a.id, world.b.id, world.both.org_id}


def test_a_new_organization_belongs_to_its_creator_only(world: World) -> None:
    creator = world.api.register(name="Founder")
    r = world.api.post("/organizations", user=creator, json={"name": "Side project"})
    assert r.status_code == 201, r.get_json()
    created = r.get_json()["id"]
    members = world.api.get(f"/organizations/{created}/members", user=creator).get_json()
    assert [(m["user_id"], m["role"]) for m in members] == [(creator.id, "owner")]
    for outsider in (world.a.owner, world.both):
        r = world.api.get(f"/organizations/{created}/members", user=outsider)
        assert r.status_code == 403 and error_code(r) == "NOT_ORGANIZATION_MEMBER"
        listed = world.api.get("/organizations/me", user=outsider).get_json()
        assert created not in {o["id"] for o in listed}


# --- cross-organization links ---------------------------------------------------------------


def _total(world: World, path: str, org: Org, **query: Any) -> int:
    r = world.api.get(path, user=org.owner, org=org.id, query={"page_size": 100, **query})
    assert r.status_code == 200, r.get_json()
    return int(r.get_json()["total"])


def test_deal_with_contact_of_another_org_is_404(world: World) -> None:
    a, b = world.a, world.b
    deals_a, deals_b = _total(world, "/deals", a), _total(world, "/deals", b)
    for user in (a.owner, world.both):
        r = world.api.post(
            "/deals",
            user=user,
            org=a.id,
            json={"contact_id": b.ids["deal_contact"], "title": "Cross", "amount": "5.00"},
        )
        assert r.status_code == 404, r.get_json()
        assert error_code(r) == "CONTACT_NOT_FOUND"
    assert (_total(world, "/deals", a), _total(world, "/deals", b)) == (deals_a, deals_b)


def test_moving_deal_to_contact_of_another_org_is_404(world: World) -> None:
    a, b = world.a, world.b
    before = world.api.get(f"/deals/{a.ids['deal']}", user=a.owner, org=a.id).get_json()
    r = world.api.patch(
        f"/deals/{a.ids['deal']}", user=a.owner, org=a.id, json={"contact_id": b.ids["contact"]}
    )
    assert r.status_code == 404, r.get_json()
    assert error_code(r) == "CONTACT_NOT_FOUND"
    after = world.api.get(f"/deals/{a.ids['deal']}", user=a.owner, org=a.id).get_json()
    assert after == before


def test_task_on_deal_of_another_org_is_404(world: World) -> None:
    a, b = world.a, world.b
    tasks_a, tasks_b = _total(world, "/tasks", a), _total(world, "/tasks", b)
    activities_b = _total(world, f"/deals/{b.ids['deal']}/activities", b)
    for user in (a.owner, world.both):
        r = world.api.post(
            "/tasks",
            user=user,
            org=a.id,
            json={"deal_id": b.ids["deal"], "title": "Cross", "due_date": _tomorrow()},
        )
        assert r.status_code == 404, r.get_json()
        assert error_code(r) == "DEAL_NOT_FOUND"
    assert (_total(world, "/tasks", a), _total(world, "/tasks", b)) == (tasks_a, tasks_b)
    assert _total(world, f"/deals/{b.ids['deal']}/activities", b) == activities_b


def test_task_list_filtered_by_deal_of_another_org_is_404(world: World) -> None:
    a, b = world.a, world.b
    r = world.api.get("/tasks", user=a.owner, org=a.id, query={"deal_id": b.ids["deal"]})
    assert r.status_code == 404, r.get_json()
    assert error_code(r) == "DEAL_NOT_FOUND"
    # the same filter works inside the deal's own org and finds its task
    r = world.api.get("/tasks", user=b.owner, org=b.id, query={"deal_id": b.ids["deal"]})
    assert r.status_code == 200, r.get_json()
    assert [t["id"] for t in r.get_json()["items"]] == [b.ids["task"]]


@pytest.mark.parametrize("who", ["b_only", "b_owner"])
def test_owner_id_of_user_outside_the_org_is_404(world: World, who: str) -> None:
    a = world.a
    outsider = world.b_only if who == "b_only" else world.b.owner
    contacts_a, deals_a = _total(world, "/contacts", a), _total(world, "/deals", a)
    cases = [
        ("POST", "/contacts", {"name": "Given away", "owner_id": outsider.id}),
        (
            "POST",
            "/deals",
            {"contact_id": a.ids["deal_contact"], "title": "Given", "owner_id": outsider.id},
        ),
        ("PATCH", f"/contacts/{a.ids['contact']}", {"owner_id": outsider.id}),
        ("PATCH", f"/deals/{a.ids['deal']}", {"owner_id": outsider.id}),
    ]
    for method, path, body in cases:
        r = world.api.call(method, path, user=a.owner, org=a.id, json=body)
        assert r.status_code == 404, (method, path, r.get_json())
        assert error_code(r) == "OWNER_NOT_FOUND"
    assert (_total(world, "/contacts", a), _total(world, "/deals", a)) == (contacts_a, deals_a)
    for kind in ("contact", "deal"):
        r = world.api.get(f"/{kind}s/{a.ids[kind]}", user=a.owner, org=a.id)
        assert r.get_json()["owner_id"] == a.owner.id


@pytest.mark.parametrize(
    "route", [r for r in ROUTES if not r.mutating and r.entity is None], ids=str
)
def test_a_key_reads_its_own_org_only(world: World, route: Route) -> None:
    """Without a header, A's key reads A: the same answer A's owner gets with A's header."""
    answers = []
    for who in ({"token": world.a.key}, {"user": world.a.owner, "org": world.a.id}):
        r = _call(world, route, ids=world.a.ids, **who)
        assert r.status_code == 200, (str(route), r.get_data())
        answers.append(r.get_data())  # read now: an export streams within its request
    if route.path.startswith("/analytics"):  # the figures; `as_of` may differ
        figures = [{k: v for k, v in json.loads(a).items() if k != "as_of"} for a in answers]
        assert figures[0] == figures[1], str(route)
    else:
        assert answers[0] == answers[1], str(route)


def test_lists_only_show_own_org(world: World) -> None:
    for me, other in ((world.a, world.b), (world.b, world.a)):
        for path, kind in (
            ("/contacts", "contact"),
            ("/deals", "deal"),
            ("/tasks", "task"),
            ("/reports", "report"),
            ("/notifications", "notification"),
        ):
            r = world.api.get(path, user=me.owner, org=me.id, query={"page_size": 100})
            assert r.status_code == 200
            items = r.get_json()["items"]
            assert items, path
            assert {i["organization_id"] for i in items} == {me.id}, path
            assert me.ids[kind] in {i["id"] for i in items}
            assert not ({i["id"] for i in items} & {other.ids[kind]}), path
        r = world.api.get(f"/deals/{me.ids['deal']}/activities", user=me.owner, org=me.id)
        items = r.get_json()["items"]
        assert {i["deal_id"] for i in items} == {me.ids["deal"]}
        assert other.ids["activity"] not in {i["id"] for i in items}


# --- search ---------------------------------------------------------------------------------


def test_contact_search_never_returns_other_orgs_contacts(api: ApiClient) -> None:
    tok = uuid.uuid4().hex[:10]
    a, b = api.register(), api.register()
    mine = api.contact(a, name=f"Alpha {tok}", email=f"alpha-{tok}@example.com")
    theirs = api.contact(b, name=f"Zebra {tok}", email=f"zebra-{tok}@corp.example")
    api.contact(b, name="Percent % and _under_", email="pct@example.com")

    def search(user: User, q: str) -> list[dict[str, Any]]:
        r = api.get("/contacts", user=user, org=user.org_id, query={"search": q, "page_size": 100})
        assert r.status_code == 200, r.get_json()
        return r.get_json()["items"]

    assert [c["id"] for c in search(a, tok)] == [mine["id"]]
    assert [c["id"] for c in search(b, tok)] == [theirs["id"]]
    for q in (f"Zebra {tok}", f"zebra-{tok}", "corp.example", tok.upper(), "%", "_", "Percent"):
        found = search(a, q)
        assert theirs["id"] not in {c["id"] for c in found}, q
        assert {c["organization_id"] for c in found} <= {a.org_id}, q
    assert search(a, "zebra") == []
    assert [c["id"] for c in search(b, f"zebra-{tok}")] == [theirs["id"]]


# --- analytics ------------------------------------------------------------------------------


def test_analytics_count_only_the_header_org(api: ApiClient) -> None:
    a, b, both = api.register(), api.register(), api.register()
    api.add_member(a, a.org_id, both, "manager")
    api.add_member(b, b.org_id, both, "manager")
    api.deal(a, amount="100.00", currency="EUR")
    for amount, changes in (
        ("5000.00", {"status": "won", "stage": "closed"}),
        ("300.00", {"status": "lost", "stage": "proposal"}),
        ("700.00", {"status": "in_progress", "stage": "negotiation"}),
    ):
        deal = api.deal(b, amount=amount, currency="USD")
        r = api.patch(f"/deals/{deal['id']}", user=b, org=b.org_id, json=changes)
        assert r.status_code == 200, r.get_json()

    for user in (a, both):
        r = api.get("/analytics/deals/summary", user=user, org=a.org_id)
        assert r.status_code == 200, r.get_json()
        s = r.get_json()
        assert s["total_deals"] == 1
        assert s["new_deals_last_n_days"] == 1
        assert s["by_status"]["new"] == {"count": 1, "total_amount": "100.00"}
        for status in ("in_progress", "won", "lost"):
            assert s["by_status"][status] == {"count": 0, "total_amount": "0.00"}
        assert s["avg_won_amount"] is None
        assert set(s["by_currency"]) == {"EUR"}

        r = api.get("/analytics/deals/funnel", user=user, org=a.org_id)
        assert r.status_code == 200, r.get_json()
        stages = {st["stage"]: st for st in r.get_json()["stages"]}
        assert sum(st["count"] for st in stages.values()) == 1
        assert stages["qualification"]["count"] == 1
        assert stages["qualification"]["reached"] == 1
        assert stages["closed"]["reached"] == 0

    for user in (b, both):
        s = api.get("/analytics/deals/summary", user=user, org=b.org_id).get_json()
        assert s["total_deals"] == 3
        assert s["by_status"]["new"]["count"] == 0
        assert s["by_status"]["won"] == {"count": 1, "total_amount": "5000.00"}
        assert s["avg_won_amount"] == "5000.00"
        assert set(s["by_currency"]) == {"USD"}
        f = api.get("/analytics/deals/funnel", user=user, org=b.org_id).get_json()
        stages = {st["stage"]: st for st in f["stages"]}
        assert stages["qualification"]["count"] == 0
        assert stages["qualification"]["reached"] == 3

    # the dual member's own org is empty
    s = api.get("/analytics/deals/summary", user=both, org=both.org_id).get_json()
    assert s["total_deals"] == 0


# --- a user in both organizations ----------------------------------------------------------


def test_member_of_both_orgs_sees_each_org_only_under_its_header(world: World) -> None:
    api, both, a, b = world.api, world.both, world.a, world.b

    def ids(path: str, org: int) -> set[int]:
        r = api.get(path, user=both, org=org, query={"page_size": 100})
        assert r.status_code == 200, r.get_json()
        items = r.get_json()["items"]
        assert {i["organization_id"] for i in items} <= {org}
        return {i["id"] for i in items}

    for me, other in ((a, b), (b, a)):
        for path, kind in (("/contacts", "contact"), ("/deals", "deal"), ("/tasks", "task")):
            seen = ids(path, me.id)
            assert me.ids[kind] in seen
            assert other.ids[kind] not in seen
        for kind in ("contact", "deal", "task"):
            r = api.get(f"/{kind}s/{me.ids[kind]}", user=both, org=me.id)
            assert r.status_code == 200
            r = api.get(f"/{kind}s/{other.ids[kind]}", user=both, org=me.id)
            assert r.status_code == 404
            assert error_code(r) == f"{kind.upper()}_NOT_FOUND"

    # the user's own org sees neither
    assert not ids("/contacts", both.org_id) & (set(a.ids.values()) | set(b.ids.values()))
    r = api.get(f"/deals/{a.ids['deal']}", user=both, org=both.org_id)
    assert r.status_code == 404

    # what the user creates under A's header lives in A only
    r = api.post("/contacts", user=both, org=a.id, json={"name": "Made in A"})
    assert r.status_code == 201
    created = r.get_json()
    assert created["organization_id"] == a.id
    r = api.get(f"/contacts/{created['id']}", user=both, org=b.id)
    assert r.status_code == 404
    assert error_code(r) == "CONTACT_NOT_FOUND"
    r = api.get(f"/contacts/{created['id']}", user=a.owner, org=a.id)
    assert r.status_code == 200
    r = api.delete(f"/contacts/{created['id']}", user=both, org=a.id)
    assert r.status_code == 204


def test_removed_member_loses_access(api: ApiClient) -> None:
    owner, user = api.register(), api.register()
    api.add_member(owner, owner.org_id, user, "manager")
    deal = api.deal(owner)
    assert api.get(f"/deals/{deal['id']}", user=user, org=owner.org_id).status_code == 200
    r = api.delete(f"/organizations/{owner.org_id}/members/{user.id}", user=owner)
    assert r.status_code == 204
    r = api.get(f"/deals/{deal['id']}", user=user, org=owner.org_id)
    assert r.status_code == 403
    assert error_code(r) == "NOT_ORGANIZATION_MEMBER"
    r = api.get("/deals", user=user, org=owner.org_id)
    assert r.status_code == 403
    assert error_code(r) == "NOT_ORGANIZATION_MEMBER"


@pytest.mark.parametrize("action", ["update", "delete"])
def test_a_bulk_action_naming_another_orgs_records_changes_none(world: World, action: str) -> None:
    """A's owner (and the manager of both, in A) name B's deal, contacts and task in a bulk
    action of org A: each record fails as not found, and B's records are unchanged."""
    a, b = world.a, world.b
    targets = {"deal": "/deals/{deal}", "contact": "/contacts/{contact}", "task": "/tasks/{task}"}
    before = {kind: _get(world, b, path) for kind, path in targets.items()}
    changes = {"deal": {"title": "Hacked"}, "contact": {"name": "Hacked"}, "task": {"title": "X"}}
    for user in (a.owner, world.both):
        for kind in targets:
            body: dict[str, Any] = {"entity": kind, "action": action, "ids": [b.ids[kind]]}
            if action == "update":
                body["changes"] = changes[kind]
            r = world.api.post("/bulk-actions", user=user, org=a.id, json=body)
            assert r.status_code == 202, r.get_json()
            r = world.api.get(f"/bulk-actions/{r.get_json()['id']}", user=user, org=a.id)
            done = r.get_json()
            assert (done["status"], done["succeeded"]) == ("done", 0), done
            assert [e["code"] for e in done["errors"]] == [f"{kind.upper()}_NOT_FOUND"]
    assert {kind: _get(world, b, path) for kind, path in targets.items()} == before


def _get(world: World, org: Org, path: str) -> Any:
    r = world.api.get(path.format(**org.ids), user=org.owner, org=org.id)
    assert r.status_code == 200, r.get_json()
    return r.get_json()
