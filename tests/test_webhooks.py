"""Outbound webhooks through the API and the sender, against real HTTP receivers on
127.0.0.1: endpoints and their secrets, who may manage them, the events and their payloads,
Standard Webhooks signatures (verified with the `standardwebhooks` package), retries,
auto-disable, the SSRF guard, tenant isolation, and the fan-out's cost.

The `app` fixture delivers outbox events inline (deliveries are written at once); the tests
send them with `send_due`, the loop the Celery task runs, and drive the retry clock by
setting `next_attempt_at`."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import ipaddress
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select, update
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from crm_domain import egress
from crm_domain.context import Actor
from crm_domain.db import Database
from crm_domain.enums import Role
from crm_domain.models import Deal, OutboxEvent, WebhookDelivery, WebhookEndpoint
from crm_domain.services.delivery import events, outbox
from crm_domain.services.delivery.webhook_policy import RetryPolicy
from crm_domain.services.records import contacts
from crm_domain.settings import DEFAULT_WEBHOOK_RETRY_SCHEDULE, Settings
from crm_worker import webhook_sender
from crm_worker.webhook_sender import RunResult, Sender

from .api import ApiClient, User, error_code
from .receiver import Receiver
from .sql import executed
from .stack import wait_until

POLICY = RetryPolicy(schedule=DEFAULT_WEBHOOK_RETRY_SCHEDULE)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def sender() -> Iterator[Sender]:
    s = Sender(timeout=2.0, allow_private=True)
    yield s
    s.close()


def send_due(
    db: Database, sender: Sender, *endpoints: dict[str, Any], policy: RetryPolicy = POLICY
) -> int:
    """What the Celery task does, for these endpoints (others' deliveries are left alone):
    runs until nothing of theirs is due; returns the attempts made."""
    sent = 0
    for endpoint in endpoints:
        while True:
            run = webhook_sender.run_endpoint(db, endpoint["id"], sender, policy)
            sent += run.sent
            if not run.more_due:
                break
    return sent


def create_endpoint(api: ApiClient, user: User, url: str, **fields: Any) -> dict[str, Any]:
    r = api.post("/webhooks", user=user, org=user.org_id, json={"url": url, **fields})
    assert r.status_code == 201, r.get_json()
    return r.get_json()


def deliveries(db: Database, endpoint_id: int) -> list[WebhookDelivery]:
    with db.transaction() as s:
        return list(
            s.scalars(
                select(WebhookDelivery)
                .where(WebhookDelivery.endpoint_id == endpoint_id)
                .order_by(WebhookDelivery.id)
            )
        )


def make_due(db: Database, endpoint_id: int) -> None:
    """The retry clock: every pending delivery of the endpoint is due now."""
    with db.transaction() as s:
        s.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.endpoint_id == endpoint_id, WebhookDelivery.status == "pending")
            .values(next_attempt_at=func.now())
        )


@pytest.fixture
def no_private(app) -> Iterator[None]:
    """The API as deployed: WEBHOOKS_ALLOW_PRIVATE off."""
    settings = app.extensions["crm_settings"]
    app.extensions["crm_settings"] = dataclasses.replace(settings, webhooks_allow_private=False)
    yield
    app.extensions["crm_settings"] = settings


# --- endpoints and secrets -------------------------------------------------------------------


def test_secret_is_shown_at_creation_and_rotation_only(api: ApiClient, receiver) -> None:
    owner = api.register()
    created = create_endpoint(api, owner, receiver.url, description="CRM sync")
    secret = created["secret"]
    assert secret.startswith("whsec_")
    assert 24 <= len(base64.b64decode(secret.removeprefix("whsec_"))) <= 64
    assert created["event_types"] == [] and created["enabled"] is True
    assert created["description"] == "CRM sync" and created["disabled_reason"] is None

    got = api.get(f"/webhooks/{created['id']}", user=owner, org=owner.org_id)
    listed = api.get("/webhooks", user=owner, org=owner.org_id)
    assert got.status_code == 200 and listed.status_code == 200
    for body in (got.get_json(), listed.get_json()):
        assert "secret" not in json.dumps(body) and secret not in json.dumps(body)
    assert listed.get_json()["items"][0]["id"] == created["id"]

    rotated = api.post(f"/webhooks/{created['id']}/rotate-secret", user=owner, org=owner.org_id)
    assert rotated.status_code == 200
    new_secret = rotated.get_json()["secret"]
    assert new_secret.startswith("whsec_") and new_secret != secret
    again = api.get(f"/webhooks/{created['id']}", user=owner, org=owner.org_id).get_json()
    assert "secret" not in again and new_secret not in json.dumps(again)


def test_rotation_signs_with_both_secrets_for_a_while(
    api: ApiClient, db: Database, sender, receiver
) -> None:
    owner = api.register()
    endpoint = create_endpoint(api, owner, receiver.url)
    old = endpoint["secret"]
    r = api.post(f"/webhooks/{endpoint['id']}/rotate-secret", user=owner, org=owner.org_id)
    new = r.get_json()["secret"]
    api.contact(owner)
    send_due(db, sender, endpoint)
    (request,) = receiver.received()
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    for secret in (new, old):  # a receiver with either secret accepts it
        assert Webhook(secret).verify(request.body, request.headers)["type"] == "contact.created"


def test_the_previous_secret_stops_signing_when_its_grace_period_ends(
    api: ApiClient, db: Database, sender, receiver
) -> None:
    owner = api.register()
    endpoint = create_endpoint(api, owner, receiver.url)
    old = endpoint["secret"]
    before = dt.datetime.now(dt.UTC)
    r = api.post(f"/webhooks/{endpoint['id']}/rotate-secret", user=owner, org=owner.org_id)
    after = dt.datetime.now(dt.UTC)
    new = r.get_json()["secret"]
    with db.transaction() as s:
        row = s.get_one(WebhookEndpoint, endpoint["id"])
        assert row.previous_secret == old and row.previous_secret_expires_at is not None
        expires = row.previous_secret_expires_at
    assert before + dt.timedelta(hours=24) <= expires <= after + dt.timedelta(hours=24)
    with db.transaction() as s:  # the clock: the 24 hours are over
        s.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.id == endpoint["id"])
            .values(previous_secret_expires_at=func.now() - dt.timedelta(seconds=1))
        )
    api.contact(owner)
    send_due(db, sender, endpoint)
    (request,) = receiver.received()
    assert len(request.headers["webhook-signature"].split(" ")) == 1
    assert Webhook(new).verify(request.body, request.headers)["type"] == "contact.created"
    with pytest.raises(WebhookVerificationError):  # a receiver still on the old secret refuses
        Webhook(old).verify(request.body, request.headers)


def test_update_enable_disable_and_delete(api: ApiClient, receiver) -> None:
    owner = api.register()
    endpoint = create_endpoint(api, owner, receiver.url)
    path = f"/webhooks/{endpoint['id']}"
    r = api.patch(
        path,
        user=owner,
        org=owner.org_id,
        json={"event_types": ["deal.created", "contact.created", "deal.created"]},
    )
    assert r.status_code == 200
    assert r.get_json()["event_types"] == ["contact.created", "deal.created"]
    r = api.patch(path, user=owner, org=owner.org_id, json={"enabled": False})
    assert r.get_json()["enabled"] is False
    assert r.get_json()["disabled_reason"] == "Disabled through the API"
    r = api.patch(path, user=owner, org=owner.org_id, json={"enabled": True})
    assert r.get_json()["enabled"] is True and r.get_json()["disabled_reason"] is None
    assert api.delete(path, user=owner, org=owner.org_id).status_code == 204
    assert api.get(path, user=owner, org=owner.org_id).status_code == 404


def test_unknown_event_type_and_missing_url_are_400(api: ApiClient, receiver) -> None:
    owner = api.register()
    r = api.post(
        "/webhooks", user=owner, org=owner.org_id, json={"url": receiver.url, "event_types": ["x"]}
    )
    assert r.status_code == 400 and error_code(r) == "VALIDATION_ERROR"
    r = api.post("/webhooks", user=owner, org=owner.org_id, json={"event_types": []})
    assert r.status_code == 400 and error_code(r) == "VALIDATION_ERROR"


def test_members_and_managers_get_403_admins_may(api: ApiClient, receiver) -> None:
    team = api.team()
    endpoint = create_endpoint(api, team["owner"], receiver.url)
    base = f"/webhooks/{endpoint['id']}"
    r = api.post(f"{base}/test", user=team["owner"], org=team["owner"].org_id)
    assert r.status_code == 202
    delivery = r.get_json()["id"]
    calls = [
        ("get", "/webhooks", None),
        ("post", "/webhooks", {"url": receiver.url}),
        ("get", base, None),
        ("patch", base, {"description": "x"}),
        ("delete", base, None),
        ("post", f"{base}/rotate-secret", None),
        ("get", f"{base}/deliveries", None),
        ("post", f"{base}/test", None),
        ("post", f"{base}/deliveries/{delivery}/redeliver", None),
    ]
    for role in ("manager", "member"):
        for method, path, body in calls:
            r = api.call(method.upper(), path, user=team[role], org=team[role].org_id, json=body)
            assert r.status_code == 403, (role, method, path, r.get_json())
            assert error_code(r) == "SETTINGS_FORBIDDEN"
    admin = team["admin"]
    assert api.get(base, user=admin, org=admin.org_id).status_code == 200
    assert create_endpoint(api, admin, receiver.url)["secret"].startswith("whsec_")


# --- SSRF ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("http://169.254.169.254/latest/meta-data/", "WEBHOOK_URL_FORBIDDEN"),
        ("http://127.0.0.1/", "WEBHOOK_URL_FORBIDDEN"),
        ("http://localhost:8080/hooks", "WEBHOOK_URL_FORBIDDEN"),
        ("http://[::1]/", "WEBHOOK_URL_FORBIDDEN"),
        ("http://[::ffff:10.0.0.1]/", "WEBHOOK_URL_FORBIDDEN"),
        ("http://0.0.0.0/", "WEBHOOK_URL_FORBIDDEN"),
        ("ftp://example.com/hooks", "WEBHOOK_URL_INVALID"),
        ("file:///etc/passwd", "WEBHOOK_URL_INVALID"),
        ("https://", "WEBHOOK_URL_INVALID"),
    ],
)
def test_private_and_non_http_urls_are_refused(
    api: ApiClient, no_private, url: str, code: str
) -> None:
    owner = api.register()
    r = api.post("/webhooks", user=owner, org=owner.org_id, json={"url": url})
    assert r.status_code == 400, r.get_json()
    assert error_code(r) == code
    assert r.get_json()["error"]["details"]["url"] == url


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.215.14", True),
        ("2606:4700:4700::1111", True),
        ("10.0.0.1", False),
        ("172.16.5.4", False),
        ("192.168.1.1", False),
        ("100.100.100.200", False),  # shared address space (a cloud's metadata service)
        ("169.254.169.254", False),
        ("fd00:ec2::254", False),  # unique local (EC2's IPv6 metadata)
        ("fe80::1", False),
        ("224.0.0.251", False),
        ("240.0.0.1", False),
        ("255.255.255.255", False),
        ("198.51.100.7", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped
        ("::ffff:93.184.215.14", False),  # a mapped address is never a destination
        ("64:ff9b::a00:1", False),  # NAT64 of 10.0.0.1
        ("2002:a9fe:a9fe::", False),  # 6to4 of 169.254.169.254
        ("2001:0:4136:e378:8000:63bf:f5ff:fffe", False),  # Teredo
        ("::", False),
    ],
)
def test_only_public_unicast_addresses_pass(address: str, public: bool) -> None:
    assert egress.is_public(ipaddress.ip_address(address)) is public


def test_a_host_resolving_to_a_private_address_is_refused(
    api: ApiClient, no_private, monkeypatch
) -> None:
    """DNS answers are simulated (no traffic leaves the machine): one name resolves to 10.x
    only, another to a public and a private address (any private address refuses it), a third
    does not resolve. The answer says only that the address is not allowed: neither what the
    name resolved to nor whether it exists (an admin must not resolve internal names)."""
    real = socket.getaddrinfo
    answers = {"intranet.example": ["10.1.2.3"], "mixed.example": ["93.184.215.14", "10.9.9.9"]}

    def fake(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "ghost.example":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        if host in answers:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in answers[host]]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(egress.socket, "getaddrinfo", fake)
    owner = api.register()
    refusals = []
    for host in [*answers, "ghost.example"]:
        r = api.post("/webhooks", user=owner, org=owner.org_id, json={"url": f"https://{host}/h"})
        assert r.status_code == 400 and error_code(r) == "WEBHOOK_URL_FORBIDDEN", r.get_json()
        body = r.get_data(as_text=True)
        assert "10." not in body and "93.184" not in body and "not known" not in body
        refusals.append(r.get_json()["error"]["details"]["reason"])
    assert refusals == ["the host's address is not allowed"] * 3
    # and the same check guards a change of URL
    monkeypatch.setitem(answers, "public.example", ["93.184.215.14"])
    endpoint = create_endpoint(api, owner, "https://public.example/h")
    r = api.patch(
        f"/webhooks/{endpoint['id']}",
        user=owner,
        org=owner.org_id,
        json={"url": "http://intranet.example/h"},
    )
    assert r.status_code == 400 and error_code(r) == "WEBHOOK_URL_FORBIDDEN"


def test_send_time_guard_refuses_private_addresses(api: ApiClient, db: Database, receiver) -> None:
    """An endpoint saved while private addresses were allowed (or whose DNS changed since):
    the sender resolves again and refuses to connect; the receiver hears nothing."""
    owner = api.register()
    endpoint = create_endpoint(api, owner, receiver.url)
    api.contact(owner)
    strict = Sender(timeout=2.0, allow_private=False)
    try:
        send_due(db, strict, endpoint)
    finally:
        strict.close()
    (delivery,) = deliveries(db, endpoint["id"])
    assert delivery.status == "pending" and delivery.attempts == 1
    # what the host resolved to stays in the worker's log, out of the API's answers
    assert delivery.last_error == "destination refused: the host's address is not allowed"
    assert receiver.received() == []


def test_the_sender_connects_to_the_address_it_vetted_not_to_a_later_answer(
    api: ApiClient, db: Database, receiver, monkeypatch
) -> None:
    """DNS rebinding: the name resolves to the receiver when the guard looks it up, and to
    an internal service (another server on 127.0.0.2, same port) on any later lookup. The
    sender connects to the address the guard vetted, so the internal service hears nothing.
    (Private addresses are allowed here so that the vetted address can be a local receiver;
    the resolver is simulated in this process: no traffic leaves the machine.)"""
    internal = Receiver(host="127.0.0.2", port=receiver.port).start()
    real = socket.getaddrinfo
    lookups: list[str] = []

    def rebinding(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "rebind.example":
            return real(host, port, *args, **kwargs)
        lookups.append(host)
        address = "127.0.0.1" if len(lookups) == 1 else "127.0.0.2"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    try:
        owner = api.register()
        endpoint = create_endpoint(api, owner, f"http://rebind.example:{receiver.port}/hooks")
        api.contact(owner)
        monkeypatch.setattr(socket, "getaddrinfo", rebinding)
        fresh = Sender(timeout=2.0, allow_private=True)  # no pooled connection to reuse
        try:
            send_due(db, fresh, endpoint)
        finally:
            fresh.close()
            monkeypatch.undo()
        assert internal.received() == []
        assert [p["type"] for p in receiver.verified(endpoint["secret"])] == ["contact.created"]
        assert lookups == ["rebind.example"]  # resolved once, by the guard
        (delivery,) = deliveries(db, endpoint["id"])
        assert delivery.status == "succeeded"
    finally:
        internal.stop()


# --- events, payloads, signatures ------------------------------------------------------------


def test_every_change_is_one_signed_event_with_the_api_representation(
    api: ApiClient, db: Database, sender, receiver
) -> None:
    owner = api.register()
    endpoint = create_endpoint(api, owner, receiver.url)
    org = owner.org_id
    contact = api.contact(owner)
    api.patch(f"/contacts/{contact['id']}", user=owner, org=org, json={"phone": "+4930123"})
    deal = api.deal(owner, contact_id=contact["id"], amount="250.00")
    r = api.patch(
        f"/deals/{deal['id']}",
        user=owner,
        org=org,
        json={"status": "won", "stage": "negotiation", "title": "Big one"},
    )
    assert r.status_code == 200
    task = api.task(owner, deal["id"])
    api.patch(f"/tasks/{task['id']}", user=owner, org=org, json={"is_done": True})
    comment = api.post(
        f"/deals/{deal['id']}/activities",
        user=owner,
        org=org,
        json={"type": "comment", "payload": {"text": "Signed"}},
    )
    assert comment.status_code == 201
    report = api.post("/reports", user=owner, org=org).get_json()
    other = api.contact(owner, name="Temp")
    assert api.delete(f"/contacts/{other['id']}", user=owner, org=org).status_code == 204

    send_due(db, sender, endpoint)
    payloads = receiver.verified(endpoint["secret"])
    by_type: dict[str, list[dict[str, Any]]] = {}
    for p in payloads:
        by_type.setdefault(p["type"], []).append(p)
    assert {t: len(v) for t, v in by_type.items()} == {
        "contact.created": 2,
        "contact.updated": 1,
        "contact.deleted": 1,
        "deal.created": 1,
        "deal.updated": 1,
        "deal.status_changed": 1,
        "deal.stage_changed": 1,
        "task.created": 1,
        "task.updated": 1,
        "task.completed": 1,
        "activity.created": 4,
        "report.ready": 1,
    }
    for p in payloads:
        assert set(p) == {"type", "timestamp", "organization_id", "data"}
        assert p["organization_id"] == org
        assert dt.datetime.fromisoformat(p["timestamp"]).utcoffset() == dt.timedelta(0)

    # data is the resource exactly as the API returns it (plus `changes` on changes)
    def api_json(path: str) -> dict[str, Any]:
        r = api.get(path, user=owner, org=org)
        assert r.status_code == 200
        return r.get_json()

    def without_changes(data: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in data.items() if k != "changes"}

    assert without_changes(by_type["contact.updated"][0]["data"]) == api_json(
        f"/contacts/{contact['id']}"
    )
    assert by_type["contact.updated"][0]["data"]["changes"] == {
        "phone": {"old": "+123456789", "new": "+4930123"}
    }
    assert without_changes(by_type["deal.updated"][0]["data"]) == api_json(f"/deals/{deal['id']}")
    assert by_type["deal.updated"][0]["data"]["changes"] == {
        "status": {"old": "new", "new": "won"},
        "stage": {"old": "qualification", "new": "negotiation"},
        "title": {"old": "Website redesign", "new": "Big one"},
    }
    assert by_type["deal.status_changed"][0]["data"]["changes"] == {
        "status": {"old": "new", "new": "won"}
    }
    assert by_type["deal.stage_changed"][0]["data"]["changes"] == {
        "stage": {"old": "qualification", "new": "negotiation"}
    }
    assert by_type["deal.created"][0]["data"]["amount"] == "250.00"
    assert without_changes(by_type["task.completed"][0]["data"]) == api_json(f"/tasks/{task['id']}")
    assert by_type["task.completed"][0]["data"]["changes"] == {
        "is_done": {"old": False, "new": True}
    }
    assert by_type["task.created"][0]["data"]["is_done"] is False
    timeline = api_json(f"/deals/{deal['id']}/activities")["items"]
    sent_activities = sorted(
        (p["data"] for p in by_type["activity.created"]), key=lambda a: a["id"]
    )
    assert sent_activities == sorted(timeline, key=lambda a: a["id"])
    assert by_type["report.ready"][0]["data"] == api_json(f"/reports/{report['id']}")
    assert by_type["report.ready"][0]["data"]["status"] == "ready"
    assert by_type["contact.deleted"][0]["data"]["name"] == "Temp"

    # headers: webhook-id is the delivery's event id; one delivery per event, all succeeded
    sent = deliveries(db, endpoint["id"])
    assert sorted(str(d.event_id) for d in sent) == sorted(
        r.webhook_id for r in receiver.received()
    )
    assert len({d.event_id for d in sent}) == len(sent) == len(payloads)
    assert all(d.status == "succeeded" and d.attempts == 1 for d in sent)
    assert all(r.headers["content-type"] == "application/json" for r in receiver.received())


def test_signature_covers_exactly_the_bytes_sent(api: ApiClient, db: Database, sender, receiver):
    owner = api.register()
    endpoint = create_endpoint(api, owner, receiver.url)
    api.contact(owner, name="Zoë Ünïcode ✓")
    send_due(db, sender, endpoint)
    (request,) = receiver.received()
    wh = Webhook(endpoint["secret"])
    assert wh.verify(request.body, request.headers)["data"]["name"] == "Zoë Ünïcode ✓"
    ts = int(request.headers["webhook-timestamp"])
    assert abs(ts - time.time()) < 60  # this attempt's time, in unix seconds (UTC)
    for tampered in (request.body + b" ", request.body.replace(b"Zo", b"Jo")):
        with pytest.raises(WebhookVerificationError):
            wh.verify(tampered, request.headers)
    other = Webhook("whsec_" + base64.b64encode(b"x" * 32).decode())
    with pytest.raises(WebhookVerificationError):
        other.verify(request.body, request.headers)
    with pytest.raises(ValueError):  # the sender refuses naive timestamps outright
        webhook_sender.sign([endpoint["secret"]], "id", dt.datetime.now(), "{}")


def test_event_type_filter(api: ApiClient, db: Database, sender, receiver) -> None:
    owner = api.register()
    endpoint = create_endpoint(api, owner, receiver.url, event_types=["deal.status_changed"])
    deal = api.deal(owner)
    api.patch(f"/deals/{deal['id']}", user=owner, org=owner.org_id, json={"title": "Renamed"})
    api.patch(f"/deals/{deal['id']}", user=owner, org=owner.org_id, json={"status": "lost"})
    send_due(db, sender, endpoint)
    payloads = receiver.verified(endpoint["secret"])
    assert [p["type"] for p in payloads] == ["deal.status_changed"]
    assert payloads[0]["data"]["status"] == "lost"


def test_events_of_one_org_never_reach_another_org(
    api: ApiClient, db: Database, sender, receiver
) -> None:
    other_receiver = Receiver().start()
    try:
        a, b = api.register(), api.register()
        endpoint_a = create_endpoint(api, a, receiver.url)
        endpoint_b = create_endpoint(api, b, other_receiver.url)
        api.deal(a)
        api.contact(b, name="Only B")
        send_due(db, sender, endpoint_a, endpoint_b)
        from_a = receiver.verified(endpoint_a["secret"])
        from_b = other_receiver.verified(endpoint_b["secret"])
        assert {p["organization_id"] for p in from_a} == {a.org_id}
        assert [(p["organization_id"], p["type"]) for p in from_b] == [
            (b.org_id, "contact.created")
        ]
        assert sorted(p["type"] for p in from_a) == ["contact.created", "deal.created"]
        # B cannot see, change or use A's endpoint
        for method, path in (
            ("GET", f"/webhooks/{endpoint_a['id']}"),
            ("PATCH", f"/webhooks/{endpoint_a['id']}"),
            ("GET", f"/webhooks/{endpoint_a['id']}/deliveries"),
            ("POST", f"/webhooks/{endpoint_a['id']}/test"),
            ("POST", f"/webhooks/{endpoint_a['id']}/rotate-secret"),
        ):
            body = {"description": "x"} if method == "PATCH" else None
            r = api.call(method, path, user=b, org=b.org_id, json=body)
            assert r.status_code == 404, (method, path)
        assert [
            e["id"] for e in api.get("/webhooks", user=b, org=b.org_id).get_json()["items"]
        ] == [endpoint_b["id"]]
    finally:
        other_receiver.stop()


def test_a_rolled_back_change_sends_nothing(api: ApiClient, db: Database, sender, receiver) -> None:
    owner = api.register()
    endpoint = create_endpoint(api, owner, receiver.url)
    deal = api.deal(owner, amount="0.00")
    send_due(db, sender, endpoint)
    before = len(receiver.received())
    # a change refused by a rule (400): nothing of it is committed
    r = api.patch(
        f"/deals/{deal['id']}",
        user=owner,
        org=owner.org_id,
        json={"title": "Never", "status": "won"},
    )
    assert r.status_code == 400
    # a service call whose transaction fails after the change and its event were recorded
    actor = Actor(user_id=owner.id, organization_id=owner.org_id, role=Role.OWNER)
    with pytest.raises(RuntimeError), db.transaction() as s:
        contacts.create_contact(s, actor, name="Ghost")
        raise RuntimeError("rolled back")
    send_due(db, sender, endpoint)
    assert len(receiver.received()) == before
    assert [d.event_type for d in deliveries(db, endpoint["id"])] == [
        "contact.created",
        "deal.created",
    ]
    with db.transaction() as s:
        assert not s.scalar(
            select(func.count()).where(
                OutboxEvent.organization_id == owner.org_id, OutboxEvent.topic == "deal.updated"
            )
        )


# --- retries, failures, auto-disable ---------------------------------------------------------


def test_500_twice_then_200_is_one_delivery_with_three_attempts(
    api: ApiClient, db: Database, sender, receiver
) -> None:
    owner = api.register()
    endpoint = create_endpoint(api, owner, receiver.url)
    receiver.script = [500, 500, 200]
    api.contact(owner)

    send_due(db, sender, endpoint)
    (first,) = deliveries(db, endpoint["id"])
    assert first.status == "pending" and first.attempts == 1 and first.last_status_code == 500
    assert first.next_attempt_at is not None and first.last_attempt_at is not None
    wait = (first.next_attempt_at - first.last_attempt_at).total_seconds()
    assert 5 * 0.8 - 0.5 <= wait <= 5 * 1.2 + 0.5  # the first retry: 5 s with jitter
    assert send_due(db, sender, endpoint) == 0  # not due yet

    make_due(db, endpoint["id"])
    send_due(db, sender, endpoint)
    (second,) = deliveries(db, endpoint["id"])
    assert second.status == "pending" and second.attempts == 2
    assert second.next_attempt_at is not None and second.last_attempt_at is not None
    wait = (second.next_attempt_at - second.last_attempt_at).total_seconds()
    assert 300 * 0.8 - 1 <= wait <= 300 * 1.2 + 1  # the second: 5 min

    make_due(db, endpoint["id"])
    send_due(db, sender, endpoint)
    (done,) = deliveries(db, endpoint["id"])
    assert done.status == "succeeded" and done.attempts == 3 and done.last_status_code == 200
    assert done.next_attempt_at is None and done.delivered_at is not None

    received = receiver.received()
    assert [r.status for r in received] == [500, 500, 200]
    assert len({r.webhook_id for r in received}) == 1  # the same webhook-id on every attempt
    assert len({r.body for r in received}) == 1
    assert len(receiver.verified(endpoint["secret"])) == 3
    make_due(db, endpoint["id"])
    assert send_due(db, sender, endpoint) == 0  # nothing left: exactly one successful delivery

    r = api.get(
        f"/webhooks/{endpoint['id']}/deliveries",
        user=owner,
        org=owner.org_id,
        query={"status": "succeeded"},
    )
    assert r.status_code == 200
    (item,) = r.get_json()["items"]
    assert item["attempts"] == 3 and item["last_status_code"] == 200
    assert item["event_id"] == received[0].webhook_id and item["event_type"] == "contact.created"
    assert item["next_attempt_at"] is None and item["status"] == "succeeded"
    assert json.loads(item["last_response_body"]) == {"status": 200}
    r = api.get(
        f"/webhooks/{endpoint['id']}/deliveries",
        user=owner,
        org=owner.org_id,
        query={"status": "pending"},
    )
    assert r.get_json()["items"] == [] and r.get_json()["total"] == 0


def test_last_attempt_fails_the_delivery(api: ApiClient, db: Database, sender, receiver) -> None:
    owner = api.register()
    endpoint = create_endpoint(api, owner, receiver.url)
    receiver.script = [503, 503]
    api.contact(owner)
    policy = RetryPolicy(schedule=(5.0,), disable_after_failed_events=0)
    send_due(db, sender, endpoint, policy=policy)
    make_due(db, endpoint["id"])
    send_due(db, sender, endpoint, policy=policy)
    (delivery,) = deliveries(db, endpoint["id"])
    assert delivery.status == "failed" and delivery.attempts == 2
    assert delivery.next_attempt_at is None and delivery.last_error == "HTTP 503"


def test_retry_after_is_honored_up_to_the_longest_step(
    api: ApiClient, db: Database, sender, receiver
) -> None:
    owner = api.register()
    endpoint = create_endpoint(api, owner, receiver.url)
    policy = RetryPolicy(schedule=(5.0, 60.0))  # the longest step: 60 s
    receiver.script = [(429, {"Retry-After": "30"}), (503, {"Retry-After": "864000"})]
    api.contact(owner)

    def wait_after_attempt(attempts: int) -> float:
        (delivery,) = deliveries(db, endpoint["id"])
        assert delivery.attempts == attempts and delivery.status == "pending"
        assert delivery.next_attempt_at is not None and delivery.last_attempt_at is not None
        return (delivery.next_attempt_at - delivery.last_attempt_at).total_seconds()

    send_due(db, sender, endpoint, policy=policy)
    assert 29 <= wait_after_attempt(1) <= 31  # honored: longer than the 5 s step
    make_due(db, endpoint["id"])
    send_due(db, sender, endpoint, policy=policy)
    # ten days asked for: capped at the longest step (60 s, jittered up to 20 % above)
    assert 60 - 1 <= wait_after_attempt(2) <= 60 * 1.2 + 1


def test_an_answer_the_sender_cannot_read_is_a_failed_attempt_and_the_rest_flow_on(
    api: ApiClient, db: Database, sender, receiver
) -> None:
    """`Retry-After: ²` (a digit to str.isdigit, not to float) once raised out of the sender:
    the delivery was claimed again and again and its outcome never recorded."""
    owner = api.register()
    endpoint = create_endpoint(api, owner, receiver.url)
    receiver.script = [(503, {"Retry-After": "\u00b2"})]
    for _ in range(4):
        api.contact(owner)
    send_due(db, sender, endpoint)  # stops at the failure, as at any failure
    send_due(db, sender, endpoint)
    first, *rest = deliveries(db, endpoint["id"])
    assert (first.status, first.attempts, first.last_status_code) == ("pending", 1, 503)
    assert first.last_error == "HTTP 503"
    assert [d.status for d in rest] == ["succeeded"] * 3
    assert [r.status for r in receiver.received()] == [503, 200, 200, 200]


def test_a_delivery_that_cannot_be_sent_is_parked_after_its_attempts(
    api: ApiClient, db: Database, sender, receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """An endpoint row the sender cannot use (a secret that is not base64, as a hand-edited
    row could hold) makes every attempt raise: each still counts, fails the delivery after
    the last one with the reason, and other endpoints are not held up."""
    owner = api.register()
    broken = create_endpoint(api, owner, receiver.url)
    fine = create_endpoint(api, owner, receiver.url)
    with db.transaction() as s:
        s.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.id == broken["id"])
            .values(secret="whsec_!not base64!")
        )
    policy = RetryPolicy(schedule=(5.0,), disable_after_failed_events=0)  # two attempts
    api.contact(owner)
    with caplog.at_level(logging.ERROR, logger="crm_worker.webhook_sender"):
        send_due(db, sender, broken, fine, policy=policy)
        (delivery,) = deliveries(db, broken["id"])
        assert (delivery.status, delivery.attempts) == ("pending", 1)
        assert "could not send" in (delivery.last_error or "")
        make_due(db, broken["id"])
        send_due(db, sender, broken, policy=policy)
    (delivery,) = deliveries(db, broken["id"])
    assert (delivery.status, delivery.attempts, delivery.next_attempt_at) == ("failed", 2, None)
    assert "could not send" in (delivery.last_error or "")
    assert any("parked as failed after 2 attempts" in r.getMessage() for r in caplog.records)
    assert [d.status for d in deliveries(db, fine["id"])] == ["succeeded"]
    assert len(receiver.received()) == 1  # the fine endpoint's delivery only


def test_a_redirect_is_a_failure_and_is_not_followed(
    api: ApiClient, db: Database, sender, receiver
) -> None:
    owner = api.register()
    endpoint = create_endpoint(api, owner, receiver.url)
    receiver.script = [(302, {"Location": receiver.url + "/elsewhere"})]
    api.contact(owner)
    send_due(db, sender, endpoint)
    (delivery,) = deliveries(db, endpoint["id"])
    assert delivery.status == "pending" and delivery.last_status_code == 302
    assert "redirects are not followed" in (delivery.last_error or "")
    assert [r.path for r in receiver.received()] == ["/hooks"]


def test_an_endpoint_failing_every_event_is_disabled_with_a_reason(
    api: ApiClient, db: Database, sender, receiver
) -> None:
    owner = api.register()
    endpoint = create_endpoint(api, owner, receiver.url)
    path = f"/webhooks/{endpoint['id']}"
    receiver.script = [500] * 10
    policy = RetryPolicy(schedule=(), disable_after_failed_events=2)  # one attempt per event
    api.contact(owner)
    send_due(db, sender, endpoint, policy=policy)
    assert api.get(path, user=owner, org=owner.org_id).get_json()["enabled"] is True
    api.contact(owner)
    send_due(db, sender, endpoint, policy=policy)
    got = api.get(path, user=owner, org=owner.org_id).get_json()
    assert got["enabled"] is False and got["disabled_at"] is not None
    assert "2 deliveries in a row failed" in got["disabled_reason"]
    assert "HTTP 500" in got["disabled_reason"]
    assert got["failing_since"] is None  # the failure record starts over when re-enabled
    # disabled: new events are not fanned out to it, tests and redeliveries are refused
    api.contact(owner)
    assert len(deliveries(db, endpoint["id"])) == 2
    r = api.post(f"{path}/test", user=owner, org=owner.org_id)
    assert r.status_code == 409 and error_code(r) == "WEBHOOK_ENDPOINT_DISABLED"
    r = api.patch(path, user=owner, org=owner.org_id, json={"enabled": True})
    assert r.get_json()["enabled"] is True and r.get_json()["disabled_reason"] is None


def test_failing_for_days_disables(api: ApiClient, db: Database, sender, receiver) -> None:
    owner = api.register()
    endpoint = create_endpoint(api, owner, receiver.url)
    receiver.script = [500]
    api.contact(owner)
    with db.transaction() as s:
        s.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.id == endpoint["id"])
            .values(failing_since=func.now() - dt.timedelta(days=6))
        )
    send_due(db, sender, endpoint)
    got = api.get(f"/webhooks/{endpoint['id']}", user=owner, org=owner.org_id).get_json()
    assert got["enabled"] is False
    assert "every delivery failed since" in got["disabled_reason"]


def test_410_gone_disables_at_once(api: ApiClient, db: Database, sender, receiver) -> None:
    owner = api.register()
    endpoint = create_endpoint(api, owner, receiver.url)
    receiver.script = [410]
    api.contact(owner)
    send_due(db, sender, endpoint)
    got = api.get(f"/webhooks/{endpoint['id']}", user=owner, org=owner.org_id).get_json()
    assert got["enabled"] is False and "410 Gone" in got["disabled_reason"]
    # Audited as the system's doing (the sender is a worker), in the same transaction.
    r = api.get(
        "/audit-log", user=owner, org=owner.org_id, query={"action": "webhook_endpoint.disabled"}
    )
    (entry,) = r.get_json()["items"]
    assert entry["actor"]["type"] == "system" and entry["entity_id"] == endpoint["id"]
    assert entry["changes"] == {
        "enabled": [True, False],
        "disabled_reason": [None, got["disabled_reason"]],
    }


def test_a_receiver_that_never_answers_costs_one_timeout(
    api: ApiClient, db: Database, receiver
) -> None:
    """The attempt's deadline covers connect, send and the answer together: the sender has
    given up and recorded it while the receiver still holds the request, unanswered."""
    owner = api.register()
    endpoint = create_endpoint(api, owner, receiver.url)
    receiver.gate = threading.Event()  # opened only at the end of the test
    api.contact(owner)
    quick = Sender(timeout=1.0, allow_private=True)
    try:
        send_due(db, quick, endpoint)
        (delivery,) = deliveries(db, endpoint["id"])
        assert delivery.status == "pending" and delivery.last_error == "no answer within 1 s"
        assert (receiver.arrived, receiver.in_flight) == (1, 1)  # not waited for
    finally:
        receiver.gate.set()
        quick.close()


def test_a_success_between_failures_starts_the_failure_record_over(
    api: ApiClient, db: Database, sender, receiver
) -> None:
    """An endpoint that fails now and then is not disabled: each success clears both the
    count of failed deliveries and the time it has been failing since."""
    owner = api.register()
    endpoint = create_endpoint(api, owner, receiver.url)
    policy = RetryPolicy(  # one attempt per event; disabled at 2 failed in a row or 1 hour
        schedule=(), disable_after_failed_events=2, disable_after=dt.timedelta(hours=1)
    )
    receiver.script = [500, 200, 500]

    def record() -> tuple[int, dt.datetime | None, bool]:
        with db.transaction() as s:
            row = s.get_one(WebhookEndpoint, endpoint["id"])
            return row.failed_events, row.failing_since, row.enabled

    api.contact(owner, name="Fails")
    send_due(db, sender, endpoint, policy=policy)
    failed, since, enabled = record()
    assert (failed, enabled) == (1, True) and since is not None
    with db.transaction() as s:  # the clock: that failure was two hours ago
        s.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.id == endpoint["id"])
            .values(failing_since=func.now() - dt.timedelta(hours=2))
        )
    api.contact(owner, name="Succeeds")
    send_due(db, sender, endpoint, policy=policy)
    assert record() == (0, None, True)
    api.contact(owner, name="Fails again")
    send_due(db, sender, endpoint, policy=policy)
    failed, since, enabled = record()
    assert (failed, enabled) == (1, True)
    assert since is not None and dt.datetime.now(dt.UTC) - since < dt.timedelta(hours=1)
    got = api.get(f"/webhooks/{endpoint['id']}", user=owner, org=owner.org_id).get_json()
    assert got["enabled"] is True and got["disabled_reason"] is None
    assert [r.status for r in receiver.received()] == [500, 200, 500]


def test_one_sender_at_a_time_per_endpoint(api: ApiClient, db: Database, sender, receiver):
    """While one sender works through an endpoint (its request held open by the receiver),
    a second sender for the same endpoint sends nothing; the first sends everything, one
    request at a time, in order."""
    owner = api.register()
    endpoint = create_endpoint(api, owner, receiver.url)
    for i in range(3):
        api.contact(owner, name=f"In order {i}")
    receiver.gate = threading.Event()
    patient = Sender(timeout=30.0, allow_private=True)
    runs: list[RunResult] = []
    first = threading.Thread(
        target=lambda: runs.append(webhook_sender.run_endpoint(db, endpoint["id"], patient, POLICY))
    )
    first.start()
    try:
        wait_until(lambda: receiver.arrived >= 1, 30, 0.02)  # the first sender is sending
        second = webhook_sender.run_endpoint(db, endpoint["id"], sender, POLICY)
        assert second == RunResult(0, False)
        assert receiver.arrived == 1
    finally:
        receiver.gate.set()
        first.join(60)
        patient.close()
    assert runs == [RunResult(3, False)]
    assert receiver.most_in_flight == 1
    names = [p["data"]["name"] for p in receiver.verified(endpoint["secret"])]
    assert names == [f"In order {i}" for i in range(3)]
    assert all(d.status == "succeeded" and d.attempts == 1 for d in deliveries(db, endpoint["id"]))


# --- ping, redeliver, listing ----------------------------------------------------------------


def test_ping_and_redeliver(api: ApiClient, db: Database, sender, receiver) -> None:
    owner = api.register()
    endpoint = create_endpoint(api, owner, receiver.url, event_types=["deal.created"])
    base = f"/webhooks/{endpoint['id']}"
    r = api.post(f"{base}/test", user=owner, org=owner.org_id)
    assert r.status_code == 202, r.get_json()
    ping = r.get_json()
    assert ping["event_type"] == "ping" and ping["status"] == "pending" and ping["attempts"] == 0
    send_due(db, sender, endpoint)
    (payload,) = receiver.verified(endpoint["secret"])
    assert payload["type"] == "ping" and payload["data"] == {"endpoint_id": endpoint["id"]}
    assert receiver.received()[0].webhook_id == ping["event_id"]

    r = api.post(f"{base}/deliveries/{ping['id']}/redeliver", user=owner, org=owner.org_id)
    assert r.status_code == 202
    again = r.get_json()
    assert again["status"] == "pending" and again["attempts"] == 0 and again["id"] == ping["id"]
    send_due(db, sender, endpoint)
    first, second = receiver.received()
    assert first.webhook_id == second.webhook_id and first.body == second.body
    (delivery,) = deliveries(db, endpoint["id"])
    assert delivery.status == "succeeded" and delivery.attempts == 1
    r = api.post(f"{base}/deliveries/999999999/redeliver", user=owner, org=owner.org_id)
    assert r.status_code == 404 and error_code(r) == "WEBHOOK_DELIVERY_NOT_FOUND"


def test_deliveries_are_paginated_newest_first(api: ApiClient, receiver) -> None:
    owner = api.register()
    endpoint = create_endpoint(api, owner, receiver.url)
    for i in range(5):
        api.contact(owner, name=f"C{i}")
    path = f"/webhooks/{endpoint['id']}/deliveries"
    r = api.get(path, user=owner, org=owner.org_id, query={"page_size": 2})
    body = r.get_json()
    assert r.status_code == 200 and body["total"] == 5 and body["pages"] == 3
    ids = [d["id"] for d in body["items"]]
    assert ids == sorted(ids, reverse=True)
    r = api.get(path, user=owner, org=owner.org_id, query={"cursor": body["next_cursor"]})
    assert r.get_json()["items"][0]["id"] < ids[-1]
    r = api.get(path, user=owner, org=owner.org_id, query={"status": "sent"})
    assert r.status_code == 400 and error_code(r) == "VALIDATION_ERROR"


# --- cost of the fan-out ---------------------------------------------------------------------


def test_fan_out_is_one_query_per_batch_and_nothing_for_orgs_without_endpoints(
    api: ApiClient, test_services, receiver
) -> None:
    quiet = Database.from_settings(
        Settings.from_env(), url=test_services.database_url, pool_size=2
    )  # events stay pending
    try:
        subscriber, bystander = api.register(), api.register()
        endpoint = create_endpoint(api, subscriber, receiver.url)
        deal = api.deal(subscriber)
        with quiet.transaction() as s:
            for user in (subscriber, bystander):
                actor = Actor(user_id=user.id, organization_id=user.org_id, role=Role.OWNER)
                for i in range(3):
                    contacts.create_contact(s, actor, name=f"Batch {i}")
            events.record_updated(
                s, "deal", s.get_one(Deal, deal["id"]), {"title": ("Website redesign", "b")}
            )
        with executed(quiet.engine) as statements:
            outbox.deliver_pending(quiet)
        with quiet.transaction() as s:
            sent = s.scalars(
                select(WebhookDelivery.event_type).where(
                    WebhookDelivery.endpoint_id == endpoint["id"]
                )
            ).all()
    finally:
        quiet.engine.dispose()
    endpoint_lookups = [s for s in statements if "FROM webhook_endpoints" in s.sql]
    inserts = [s for s in statements if s.sql.startswith("INSERT INTO webhook_deliveries")]
    assert len(endpoint_lookups) == 1  # one batch of several types and two organizations
    assert len(inserts) == 1  # the subscriber's deliveries; the bystander's events: none
    assert sorted(sent) == ["contact.created"] * 4 + ["deal.created", "deal.updated"]
