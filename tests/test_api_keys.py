"""API keys (personal access tokens): made with a login token, shown once, stored as a hash;
a key acts as its user in its organization with the user's role at each request, a read key
only reads, keys do not work on the account's routes nor make keys; bad keys get clear 401s;
last_used_at is written at most once a minute; rate limits count per key; the request's
caller reaches the domain (crm_domain.context.origin)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import time
import uuid
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import delete, event, select, text, update

from crm_api import create_app
from crm_domain import context, models
from crm_domain.db import Database
from crm_domain.models import ApiKey, OrganizationMember
from crm_domain.services.records import api_keys

from .api import ApiClient, User, error_code
from .scrape import parse, value


def make_key(api: ApiClient, user: User, scope: str = "write", **extra: Any) -> dict[str, Any]:
    r = api.post(
        "/api-keys", user=user, org=user.org_id, json={"name": "sync", "scope": scope, **extra}
    )
    assert r.status_code == 201, r.get_json()
    return dict(r.get_json())


def _row(db: Database, key_id: int) -> ApiKey:
    with db.transaction() as s:
        row = s.get(ApiKey, key_id)
        assert row is not None
        return row


# --- making, listing, revoking -----------------------------------------------------------------


def test_a_key_is_shown_once_and_stored_only_as_its_hash(api: ApiClient, db: Database) -> None:
    owner = api.register()
    made = make_key(api, owner, "read")
    key = made["key"]
    assert key.startswith("crm_") and len(key) == 60
    assert api_keys.lookup_of(key) is not None
    assert made["prefix"] == key[:16] and made["scope"] == "read"
    assert made["last_used_at"] is None and made["expires_at"] is None
    row = _row(db, made["id"])
    assert row.secret_hash == hashlib.sha256(key.encode()).hexdigest()
    with db.transaction() as s:  # the key itself is nowhere in the table
        dumped = s.execute(
            text("SELECT row_to_json(k)::text FROM api_keys k WHERE id = :id"), {"id": made["id"]}
        ).scalar_one()
    assert key not in dumped and key.split("_", 2)[2] not in dumped
    listed = api.get("/api-keys", user=owner, org=owner.org_id).get_json()["items"]
    assert [k["id"] for k in listed] == [made["id"]]
    assert "key" not in listed[0] and listed[0]["prefix"] == made["prefix"]


def test_two_keys_never_share_a_secret(api: ApiClient) -> None:
    owner = api.register()
    first, second = make_key(api, owner)["key"], make_key(api, owner)["key"]
    assert first != second and first[16:] != second[16:]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x"}, "scope"),
        ({"name": "x", "scope": "admin"}, "scope"),
        ({"name": " ", "scope": "read"}, "name"),
        ({"name": "x" * 101, "scope": "read"}, "name"),
        ({"name": "x", "scope": "read", "expires_at": "2020-01-01T00:00:00Z"}, "expires_at"),
        ({"name": "x", "scope": "read", "expires_at": "soon"}, "expires_at"),
    ],
)
def test_bad_key_requests_are_400(api: ApiClient, body: dict[str, Any], field: str) -> None:
    owner = api.register()
    r = api.post("/api-keys", user=owner, org=owner.org_id, json=body)
    assert r.status_code == 400, r.get_json()
    assert error_code(r) == "VALIDATION_ERROR"
    assert field in r.get_json()["error"]["details"]["errors"]["json"]
    assert api.get("/api-keys", user=owner, org=owner.org_id).get_json()["total"] == 0


def test_members_see_their_own_keys_owners_and_admins_everyones(api: ApiClient) -> None:
    team = api.team()
    keys = {role: make_key(api, team[role])["id"] for role in ("owner", "admin", "member")}

    def listed(role: str) -> set[int]:
        r = api.get("/api-keys", user=team[role], org=team[role].org_id)
        assert r.status_code == 200
        return {k["id"] for k in r.get_json()["items"]}

    assert listed("member") == {keys["member"]}
    assert listed("manager") == set()
    assert listed("admin") == listed("owner") == set(keys.values())
    # a member cannot revoke (nor learn of) someone else's key; an admin can
    r = api.delete(f"/api-keys/{keys['admin']}", user=team["member"], org=team["member"].org_id)
    assert r.status_code == 404 and error_code(r) == "API_KEY_NOT_FOUND"
    r = api.delete(f"/api-keys/{keys['member']}", user=team["admin"], org=team["admin"].org_id)
    assert r.status_code == 204
    assert listed("member") == set()
    r = api.delete(f"/api-keys/{keys['member']}", user=team["admin"], org=team["admin"].org_id)
    assert r.status_code == 404  # revoked keys are gone from the API


# --- what a key may do -------------------------------------------------------------------------


def test_a_key_acts_as_its_user_in_its_organization(api: ApiClient) -> None:
    a, b = api.register(), api.register()
    both = api.register()
    api.add_member(a, a.org_id, both, "manager")
    api.add_member(b, b.org_id, both, "manager")
    deal_b = api.deal(b)
    key = make_key(api, dataclasses.replace(both, org_id=a.org_id))["key"]
    created = api.post(
        "/contacts", token=key, json={"name": "Made by a key"}
    )  # no X-Organization-Id needed
    assert created.status_code == 201, created.get_json()
    assert created.get_json()["organization_id"] == a.org_id
    assert created.get_json()["owner_id"] == both.id
    assert api.get("/contacts", token=key, org=a.org_id).status_code == 200
    # another organization, even one the user belongs to: 403, nothing read
    r = api.get("/deals", token=key, org=b.org_id)
    assert r.status_code == 403 and error_code(r) == "API_KEY_ORGANIZATION_MISMATCH"
    # B's ids under the key's own organization: not found
    r = api.get(f"/deals/{deal_b['id']}", token=key)
    assert r.status_code == 404 and error_code(r) == "DEAL_NOT_FOUND"
    r = api.get("/deals", token=key, org="abc")
    assert r.status_code == 400 and error_code(r) == "ORGANIZATION_HEADER_INVALID"


def test_a_read_key_reads_and_never_writes(api: ApiClient) -> None:
    owner = api.register()
    deal = api.deal(owner)
    key = make_key(api, owner, "read")
    assert api.get(f"/deals/{deal['id']}", token=key["key"]).status_code == 200
    writes = [
        ("POST", "/contacts", {"name": "No"}),
        ("PATCH", f"/deals/{deal['id']}", {"title": "No"}),
        ("DELETE", f"/deals/{deal['id']}", None),
        ("POST", f"/deals/{deal['id']}/activities", {"type": "comment", "payload": {"text": "x"}}),
        ("DELETE", f"/api-keys/{key['id']}", None),
    ]
    for method, path, body in writes:
        r = api.call(method, path, token=key["key"], json=body)
        assert r.status_code == 403, (method, path, r.get_json())
        assert error_code(r) == "API_KEY_READ_ONLY"
    assert api.get(f"/deals/{deal['id']}", user=owner, org=owner.org_id).get_json() == deal
    assert api.get("/contacts", user=owner, org=owner.org_id).get_json()["total"] == 1


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/auth/me", None),
        ("PATCH", "/auth/me", {"email_digest": False}),
        ("POST", "/auth/logout", None),
        ("GET", "/organizations/me", None),
        ("POST", "/organizations", {"name": "Made by a key"}),
        ("GET", "/organizations/{org}/members", None),
        ("POST", "/organizations/{org}/invitations", {"email": "x@example.com"}),
        ("POST", "/invitations/accept", {"token": "x" * 43}),
        ("POST", "/api-keys", {"name": "child", "scope": "read"}),
    ],
)
def test_keys_do_not_work_on_account_routes_nor_make_keys(
    api: ApiClient, method: str, path: str, body: Any
) -> None:
    owner = api.register()
    key = make_key(api, owner)["key"]
    r = api.call(method, path.format(org=owner.org_id), token=key, json=body)
    assert r.status_code == 403, r.get_json()
    assert error_code(r) == "API_KEY_NOT_ALLOWED"
    assert api.get("/api-keys", user=owner, org=owner.org_id).get_json()["total"] == 1
    assert len(api.get("/organizations/me", user=owner).get_json()) == 1  # none was made


def test_a_key_is_no_refresh_token(api: ApiClient) -> None:
    owner = api.register()
    key = make_key(api, owner)["key"]
    r = api.post("/auth/refresh", json={"refresh_token": key})
    assert r.status_code == 401 and error_code(r) == "INVALID_TOKEN"


# --- bad keys ----------------------------------------------------------------------------------


def test_malformed_unknown_wrong_revoked_and_expired_keys_are_401(
    api: ApiClient, db: Database
) -> None:
    owner = api.register()
    made = make_key(api, owner)
    key = made["key"]
    wrong_secret = key[:17] + ("A" if key[17] != "A" else "B") + key[18:]
    unknown = api_keys.new_key()[1]
    cases = {
        "crm_": "API_KEY_MALFORMED",
        key[:-1]: "API_KEY_MALFORMED",  # cut short
        key + "x": "API_KEY_MALFORMED",
        key.replace("_", "-", 1): "INVALID_TOKEN",  # not our prefix: read as a JWT
        unknown: "API_KEY_INVALID",
        wrong_secret: "API_KEY_INVALID",
    }
    for presented, code in cases.items():
        r = api.get("/deals", token=presented, org=owner.org_id)
        assert r.status_code == 401, (presented, r.get_json())
        assert error_code(r) == code, presented
        assert len(presented) < 10 or presented not in r.get_data(as_text=True)
    assert api.get("/deals", token=key).status_code == 200

    with db.transaction() as s:
        s.execute(
            update(ApiKey)
            .where(ApiKey.id == made["id"])
            .values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
        )
    _refused_within(api, key, "API_KEY_EXPIRED")

    other = make_key(
        api, owner, expires_at=(dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
    )
    assert other["expires_at"] is not None
    assert api.get("/deals", token=other["key"]).status_code == 200
    assert api.delete(f"/api-keys/{other['id']}", user=owner, org=owner.org_id).status_code == 204
    r = api.get("/deals", token=other["key"])  # this process forgets at once
    assert r.status_code == 401 and error_code(r) == "API_KEY_REVOKED"


def _refused_within(api: ApiClient, key: str, code: str, *, seconds: float = 3) -> float:
    """Seconds until requests with `key` get `code` (another process changed something)."""
    start = time.monotonic()
    while True:
        r = api.get("/deals", token=key)
        if r.status_code in (401, 403) and error_code(r) == code:
            return time.monotonic() - start
        assert r.status_code == 200, r.get_json()
        assert time.monotonic() - start < seconds, f"still not {code} after {seconds} s"
        time.sleep(0.02)


# --- the user's current role -------------------------------------------------------------------


def test_a_key_has_its_users_current_role_never_more(
    app: Flask, api: ApiClient, db: Database
) -> None:
    team = api.team()
    owner, member = team["owner"], team["member"]
    theirs = api.deal(owner)
    key = make_key(api, member)["key"]
    r = api.patch(f"/deals/{theirs['id']}", token=key, json={"title": "By the key"})
    assert r.status_code == 403 and error_code(r) == "NOT_OWNER"
    # promoted (through the API: this process forgets at once)
    r = api.patch(
        f"/organizations/{owner.org_id}/members/{member.id}", user=owner, json={"role": "manager"}
    )
    assert r.status_code == 200
    r = api.patch(f"/deals/{theirs['id']}", token=key, json={"title": "By the key"})
    assert r.status_code == 200, r.get_json()
    # demoted by another process: refused within the memo's time
    with db.transaction() as s:
        s.execute(
            update(OrganizationMember)
            .where(OrganizationMember.user_id == member.id)
            .values(role="member")
        )
    ttl = app.extensions["crm_key_verifier"].memo.ttl
    start = time.monotonic()
    while (
        api.patch(f"/deals/{theirs['id']}", token=key, json={"title": "Again"}).status_code != 403
    ):
        assert time.monotonic() - start < ttl + 0.5
        time.sleep(0.02)


def test_a_removed_member_or_deleted_user_takes_the_keys_with_them(
    app: Flask, api: ApiClient, db: Database
) -> None:
    team = api.team()
    owner, member, admin = team["owner"], team["member"], team["admin"]
    member_key = make_key(api, member)
    admin_key = make_key(api, admin)
    assert api.get("/deals", token=member_key["key"]).status_code == 200
    r = api.delete(f"/organizations/{owner.org_id}/members/{member.id}", user=owner)
    assert r.status_code == 204
    r = api.get("/deals", token=member_key["key"])  # at once in this process
    assert r.status_code == 401 and error_code(r) == "API_KEY_INVALID"
    with db.transaction() as s:
        assert s.get(ApiKey, member_key["id"]) is None  # gone with the membership
    # and re-adding the member does not bring the key back
    api.add_member(owner, owner.org_id, member, "member")
    assert api.get("/deals", token=member_key["key"]).status_code == 401

    assert api.get("/deals", token=admin_key["key"]).status_code == 200
    with db.transaction() as s:  # the user is deleted (by an operator, another process)
        s.execute(delete(models.User).where(models.User.id == admin.id))
    _refused_within(api, admin_key["key"], "API_KEY_INVALID")


# --- last_used_at ------------------------------------------------------------------------------


def _last_used(db: Database, key_id: int) -> dt.datetime | None:
    return _row(db, key_id).last_used_at


def test_last_used_at_is_written_at_most_once_a_minute(
    app: Flask, api: ApiClient, db: Database
) -> None:
    owner = api.register()
    made = make_key(api, owner)
    assert _last_used(db, made["id"]) is None
    assert api.get("/deals", token=made["key"]).status_code == 200
    first = _last_used(db, made["id"])
    assert first is not None
    # many requests over more than the memo's time: the facts are read again, not written,
    # and no UPDATE is even sent
    updates: list[str] = []

    def count_updates(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("UPDATE api_keys"):
            updates.append(statement)

    event.listen(db.engine, "before_cursor_execute", count_updates)
    try:
        deadline = time.monotonic() + app.extensions["crm_key_verifier"].memo.ttl + 0.3
        requests = 0
        while time.monotonic() < deadline or requests < 20:
            assert api.get("/deals", token=made["key"]).status_code == 200
            requests += 1
    finally:
        event.remove(db.engine, "before_cursor_execute", count_updates)
    assert updates == []
    assert _last_used(db, made["id"]) == first
    listed = api.get("/api-keys", user=owner, org=owner.org_id).get_json()["items"][0]
    assert dt.datetime.fromisoformat(listed["last_used_at"]) == first

    # a minute later (another process, which has not written it itself): written again
    with db.transaction() as s:
        s.execute(
            update(ApiKey)
            .where(ApiKey.id == made["id"])
            .values(last_used_at=ApiKey.last_used_at - dt.timedelta(seconds=61))
        )
    other = create_app(OUTBOX_DISPATCH="none", TESTING=True, RATELIMIT_ENABLED=False)
    try:
        assert ApiClient(other.test_client()).get("/deals", token=made["key"]).status_code == 200
        later = _last_used(db, made["id"])
        assert later is not None and later > first
        # and the UPDATE itself refuses a second write within the minute, whoever sends it
        with db.engine.connect() as conn:
            api_keys.touch(conn, made["id"])
            conn.commit()
        assert _last_used(db, made["id"]) == later
    finally:
        other.extensions["crm_db"].dispose()


# --- rate limits, metrics, the domain's view of the caller ------------------------------------


def test_rate_limits_count_per_key(app: Flask) -> None:
    limited = create_app(
        OUTBOX_DISPATCH="none", TESTING=True, RATELIMIT_ENABLED=True, RATELIMIT_API="6/minute"
    )
    try:
        api = ApiClient(limited.test_client())
        api.client.environ_base["REMOTE_ADDR"] = (
            f"10.9.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"
        )
        owner = api.register()
        first, second = make_key(api, owner)["key"], make_key(api, owner)["key"]
        for _ in range(6):
            assert api.get("/deals", token=first).status_code == 200
        r = api.get("/deals", token=first)
        assert r.status_code == 429 and error_code(r) == "RATE_LIMITED"
        # the user's other key and the user's token have budgets of their own
        assert api.get("/deals", token=second).status_code == 200
        assert api.get("/deals", user=owner, org=owner.org_id).status_code == 200
    finally:
        limited.extensions["crm_db"].dispose()


def test_metrics_tell_key_requests_from_token_requests(api: ApiClient) -> None:
    owner = api.register()
    key = make_key(api, owner)["key"]
    labels = {"route": "/api/v1/deals", "method": "GET", "status": "200"}

    def counts() -> tuple[float, float]:
        samples = parse(api.client.get("/metrics").get_data(as_text=True))
        return (
            value(samples, "crm_http_requests_total", **labels, auth="key"),
            value(samples, "crm_http_requests_total", **labels, auth="token"),
        )

    before = counts()
    for _ in range(3):
        assert api.get("/deals", token=key).status_code == 200
    assert api.get("/deals", user=owner, org=owner.org_id).status_code == 200
    after = counts()
    assert (after[0] - before[0], after[1] - before[1]) == (3, 1)


def test_the_domain_sees_who_is_calling(app: Flask, api: ApiClient) -> None:
    """crm_domain.context.origin(): the user, the API key if one was used, the request id;
    the system outside requests."""
    seen: list[context.Origin] = []
    probe = create_app(OUTBOX_DISPATCH="none", TESTING=True, RATELIMIT_ENABLED=False)

    @probe.after_request
    def _record(response: Any) -> Any:  # the test's own hook, on the test's own app
        seen.append(context.origin())
        return response

    try:
        client = ApiClient(probe.test_client())
        owner = api.register()
        made = make_key(api, owner)
        client.get("/deals", user=owner, org=owner.org_id, headers={"X-Request-ID": "by-token"})
        client.get("/deals", token=made["key"], headers={"X-Request-ID": "by-key"})
        client.get("/health", headers={"X-Request-ID": "nobody"})
        assert seen == [
            context.Origin(owner.id, None, "by-token"),
            context.Origin(owner.id, made["id"], "by-key"),
            context.Origin(None, None, "nobody"),
        ]
        assert seen[2].is_system and context.origin() == context.Origin()
    finally:
        probe.extensions["crm_db"].dispose()


def test_keys_list_is_the_callers_organization_only(api: ApiClient, db: Database) -> None:
    a, b = api.register(), api.register()
    mine, theirs = make_key(api, a), make_key(api, b)
    assert [k["id"] for k in api.get("/api-keys", token=mine["key"]).get_json()["items"]] == [
        mine["id"]
    ]
    r = api.delete(f"/api-keys/{theirs['id']}", token=mine["key"])
    assert r.status_code == 404 and error_code(r) == "API_KEY_NOT_FOUND"
    with db.transaction() as s:
        assert s.scalar(select(ApiKey.revoked_at).where(ApiKey.id == theirs["id"])) is None
