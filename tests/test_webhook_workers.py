"""Webhook delivery on a real stack (gunicorn + Celery worker + beat, tests/stack.py) to real
receivers on 127.0.0.1: exactly once per endpoint across a receiver outage and a worker
SIGKILL, and a receiver that hangs delays neither other endpoints nor the timeline."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from crm_domain.db import Database
from crm_domain.models import WebhookDelivery
from scripts.procfile import Process

from .receiver import Receiver
from .stack import Stack, wait_until

pytestmark = pytest.mark.worker

TIMEOUT = 120
SENDER_TIMEOUT = 5
HANGING_SEND_TIMEOUT = 300  # a deadline no delivery to a live receiver comes near


@pytest.fixture(scope="module")
def stack(app, test_services, tmp_path_factory) -> Iterator[Stack]:
    with Stack(
        test_services.database_url,
        tmp_path_factory.mktemp("webhook-stack"),
        key_prefix=f"{test_services.database_name}-webhooks",
        broker=test_services.broker,
        extra_env={
            "WEBHOOKS_ALLOW_PRIVATE": "true",
            "WEBHOOK_RETRY_SCHEDULE": ",".join(["1"] * 60),  # the retry clock, sped up
            "WEBHOOK_DISPATCH_SECONDS": "1",
            "WEBHOOK_TIMEOUT_SECONDS": str(SENDER_TIMEOUT),
        },
    ) as s:
        yield s


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def endpoint(stack: Stack, token: str, org: int, url: str) -> dict[str, Any]:
    status, body = stack.http("POST", "/webhooks", {"url": url}, token, org)
    assert status == 201, body
    return body


def new_contact(stack: Stack, token: str, org: int, name: str) -> None:
    status, body = stack.http("POST", "/contacts", {"name": name}, token, org)
    assert status == 201, body


def endpoint_deliveries(db: Database, endpoint_id: int) -> list[WebhookDelivery]:
    with db.transaction() as s:
        return list(
            s.scalars(select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id))
        )


def test_receiver_down_across_a_worker_kill_gets_every_event_once_per_endpoint(
    stack: Stack, db: Database, receiver: Receiver
) -> None:
    token, org = stack.register("Webhook Owner", "Hooks Inc")
    first = endpoint(stack, token, org, receiver.url + "?endpoint=first")
    second = endpoint(stack, token, org, receiver.url + "?endpoint=second")
    secrets = {"first": first["secret"], "second": second["secret"]}
    try:
        for i in range(5):
            new_contact(stack, token, org, f"Up {i}")
        wait_until(lambda: len(receiver.received()) >= 10, 30, 0.2)

        receiver.stop()  # the receiver goes down...
        for i in range(5):
            new_contact(stack, token, org, f"Down {i}")

        def failing() -> bool:
            return any(
                d.attempts >= 1 and d.status == "pending"
                for d in endpoint_deliveries(db, first["id"])
            )

        wait_until(failing, 30, 0.2)  # ...the worker has been failing against it...
        stack.webhooks.kill()  # ...and is SIGKILLed
        for i in range(5):
            new_contact(stack, token, org, f"Dead {i}")
        receiver.start()  # back on the same port
        stack.webhooks.start()

        def all_succeeded() -> bool:
            found = endpoint_deliveries(db, first["id"]) + endpoint_deliveries(db, second["id"])
            return len(found) == 30 and all(d.status == "succeeded" for d in found)

        wait_until(all_succeeded, TIMEOUT, 0.5)
    except TimeoutError:
        pytest.fail(f"deliveries left unsent\n{stack.logs()}")
    finally:
        if stack.webhooks.proc is None or stack.webhooks.proc.poll() is not None:
            stack.webhooks.start()

    for name, record in (("first", first), ("second", second)):
        requests = [r for r in receiver.received() if r.path.endswith(f"endpoint={name}")]
        expected = {str(d.event_id) for d in endpoint_deliveries(db, record["id"])}
        counts = Counter(r.webhook_id for r in requests)
        assert set(counts) == expected and len(expected) == 15
        assert set(counts.values()) == {1}, counts  # exactly once per endpoint
        for r in requests:
            assert r.status == 200
        names = sorted(r.payload["data"]["name"] for r in requests)
        assert names == sorted(
            [f"Up {i}" for i in range(5)]
            + [f"Down {i}" for i in range(5)]
            + [f"Dead {i}" for i in range(5)]
        )
    assert len(receiver.verified(*secrets.values())) == 30


def test_a_hanging_receiver_delays_neither_other_endpoints_nor_the_timeline(
    stack: Stack, db: Database, receiver: Receiver
) -> None:
    """One receiver holds every request it gets (it answers only when the test is over) and
    the webhooks worker waits long for it (a deadline of its own, far above any delivery
    time): while that one send is in flight, the other endpoint's events and the timeline
    keep arriving. Had sends queued behind the hanging one, nothing would arrive until its
    deadline."""
    hanging = Receiver()
    hanging.gate = threading.Event()
    hanging.start()
    assert stack.webhooks.log_path is not None
    patient = Process(
        "webhooks",
        {**stack.env, "WEBHOOK_TIMEOUT_SECONDS": str(HANGING_SEND_TIMEOUT)},
        log_path=stack.webhooks.log_path.with_name("webhooks-patient.log"),
    )
    stack.webhooks.stop()
    patient.start()
    try:
        token, org = stack.register("Webhook Owner", "Hooks Inc")
        slow = endpoint(stack, token, org, hanging.url)
        endpoint(stack, token, org, receiver.url)
        status, contact = stack.http("POST", "/contacts", {"name": "C"}, token, org)
        assert status == 201
        status, deal = stack.http(
            "POST",
            "/deals",
            {"contact_id": contact["id"], "title": "D", "amount": "5.00"},
            token,
            org,
        )
        assert status == 201
        wait_until(lambda: len(receiver.received()) >= 2, 60, 0.1)
        wait_until(lambda: hanging.arrived >= 1, 60, 0.1)  # a send to it is in flight

        for new_status in ("in_progress", "won"):
            status, body = stack.http(
                "PATCH", f"/deals/{deal['id']}", {"status": new_status}, token, org
            )
            assert status == 200, body

            def arrived(expected: str = new_status) -> bool:
                return any(
                    r.payload["type"] == "deal.status_changed"
                    and r.payload["data"]["status"] == expected
                    for r in receiver.received()
                )

            def on_timeline(expected: str = new_status) -> bool:
                _, page = stack.http("GET", f"/deals/{deal['id']}/activities", None, token, org)
                return any(
                    a["type"] == "status_changed" and a["payload"]["new_status"] == expected
                    for a in page["items"]
                )

            wait_until(arrived, 60, 0.05)
            wait_until(on_timeline, 60, 0.05)
            # ...and all the while the first send to the hanging receiver was in flight
            assert (hanging.arrived, hanging.in_flight) == (1, 1), stack.logs()
        slow_deliveries = endpoint_deliveries(db, slow["id"])
        assert not any(d.status == "succeeded" for d in slow_deliveries)
        assert sum(d.attempts for d in slow_deliveries) == 1
    finally:
        hanging.gate.set()  # the held send completes, so the worker can stop
        patient.stop()
        stack.webhooks.start()
        hanging.stop()
