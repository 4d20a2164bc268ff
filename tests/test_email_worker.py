"""E-mail through the real processes: gunicorn, the Procfile's workers (the bulk worker
consumes the "email" queue) and beat, on a private Redis, sending over SMTP to an
aiosmtpd server in this process."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select, update

from crm_domain.models import OutboundEmail, Task
from crm_worker.app import EMAIL_QUEUE

from .api import PASSWORD
from .mail import SmtpServer, smtp_server, token_from
from .stack import Stack, wait_until

pytestmark = pytest.mark.worker

BASE_URL = "http://crm.example.test"


@pytest.fixture(scope="module")
def mail_server() -> Iterator[SmtpServer]:
    yield from smtp_server()


@pytest.fixture(scope="module")
def stack(app, test_services, tmp_path_factory, mail_server: SmtpServer) -> Iterator[Stack]:
    s = Stack(
        test_services.database_url,
        tmp_path_factory.mktemp("email-stack"),
        key_prefix=f"{test_services.database_name}-email",
        broker=test_services.broker,
        extra_env={
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(mail_server.port),
            "SMTP_TLS": "none",
            "MAIL_FROM": "CRM <crm@example.test>",
            "PUBLIC_BASE_URL": BASE_URL,
            "EMAIL_SWEEP_SECONDS": "1",
        },
    )
    s.start()
    try:
        yield s
    finally:
        s.stop()


def _register(stack: Stack, email: str | None = None, org: str | None = "Mail Inc") -> dict:
    body: dict[str, Any] = {
        "email": email or f"wm-{uuid.uuid4().hex[:10]}@example.com",
        "password": PASSWORD,
        "name": "Worker Mail",
        "organization_name": org,
    }
    status, registered = stack.http("POST", "/auth/register", body)
    assert status == 201, registered
    return registered


def test_invitation_flow_through_the_worker(stack: Stack, mail_server: SmtpServer) -> None:
    owner = _register(stack)
    email = f"wm-invitee-{uuid.uuid4().hex[:8]}@example.com"
    org = owner["organization"]["id"]
    status, invitation = stack.http(
        "POST",
        f"/organizations/{org}/invitations",
        {"email": email, "role": "admin"},
        owner["access_token"],
    )
    assert status == 201, invitation
    try:
        [received] = mail_server.wait_for(email, timeout=60)
    except TimeoutError:
        pytest.fail(f"no e-mail\n{stack.logs()}")
    assert received.message["From"] == "CRM <crm@example.test>"
    token = token_from(received)
    assert BASE_URL in received.part("plain")

    status, preview = stack.http("GET", f"/invitations/preview?token={token}")
    assert status == 200 and preview["role"] == "admin", preview
    status, joined = stack.http(
        "POST",
        "/auth/accept-invitation",
        {"token": token, "name": "Invited Admin", "password": PASSWORD},
    )
    assert status == 201, joined
    status, orgs = stack.http("GET", "/organizations/me", token=joined["access_token"])
    assert status == 200
    assert [(o["id"], o["role"]) for o in orgs] == [(org, "admin")]
    status, again = stack.http(
        "POST",
        "/auth/accept-invitation",
        {"token": token, "name": "Again", "password": PASSWORD},
    )
    assert status == 410 and again["error"]["code"] == "INVITATION_USED"


def test_a_failed_send_is_retried_by_beats_sweep(stack: Stack, db, mail_server) -> None:
    owner = _register(stack)
    email = f"wm-retry-{uuid.uuid4().hex[:8]}@example.com"
    mail_server.reply_next("451 4.3.0 Try again later")

    def failed_once() -> OutboundEmail | None:
        with db.transaction() as session:
            row = session.scalar(select(OutboundEmail).where(OutboundEmail.to_address == email))
        return row if row is not None and row.attempts == 1 else None

    status, _ = stack.http(
        "POST",
        f"/organizations/{owner['organization']['id']}/invitations",
        {"email": email},
        owner["access_token"],
    )
    assert status == 201
    row = wait_until(failed_once, 60)
    assert row.status == "pending" and "451" in (row.last_error or "")
    assert mail_server.to(email) == []
    # Nothing wakes the sender now but beat; make the retry due instead of waiting a minute.
    with db.transaction() as session:
        session.execute(
            update(OutboundEmail)
            .where(OutboundEmail.id == row.id)
            .values(next_attempt_at=dt.datetime.now(dt.UTC))
        )
    mail_server.wait_for(email, timeout=60)

    def marked() -> tuple[str, int] | None:  # the worker commits just after the SMTP reply
        with db.transaction() as session:
            sent = session.get(OutboundEmail, row.id)
            assert sent is not None
            return (sent.status, sent.attempts) if sent.status != "pending" else None

    assert wait_until(marked, 30) == ("sent", 2)


def test_the_daily_digest_task(stack: Stack, db, mail_server: SmtpServer) -> None:
    user = _register(stack)
    token, org = user["access_token"], user["organization"]["id"]
    status, contact = stack.http("POST", "/contacts", {"name": "C"}, token, org)
    assert status == 201
    status, deal = stack.http(
        "POST", "/deals", {"contact_id": contact["id"], "title": "Digest deal"}, token, org
    )
    assert status == 201
    today = dt.datetime.now(dt.UTC).date()
    status, task = stack.http(
        "POST",
        "/tasks",
        {"deal_id": deal["id"], "title": "Overdue call", "due_date": today.isoformat()},
        token,
        org,
    )
    assert status == 201
    with db.transaction() as session:
        session.execute(
            update(Task).where(Task.id == task["id"]).values(due_date=today - dt.timedelta(days=1))
        )
    # What beat sends once a day, sent twice: the second run finds the digest queued.
    client = stack.celery_client()
    try:
        client.send_task("crm.email.schedule_digests", queue=EMAIL_QUEUE)
        [digest] = mail_server.wait_for(user["user"]["email"], timeout=60)
        assert "Overdue call (Digest deal): 1 day overdue" in digest.part("plain")
        client.send_task("crm.email.schedule_digests", queue=EMAIL_QUEUE)
    finally:
        client.close()

    def digest_runs() -> list[str] | None:
        runs = [
            line
            for line in stack.bulk.log_path.read_text(errors="replace").splitlines()
            if "crm.email.schedule_digests[" in line and "succeeded" in line
        ]
        return runs if len(runs) >= 2 else None

    second = wait_until(digest_runs, 60)[-1]
    assert second.rstrip().endswith(": 0"), second  # queued nothing
    with db.transaction() as session:
        rows = session.scalars(
            select(OutboundEmail.id).where(OutboundEmail.to_address == user["user"]["email"])
        ).all()
    assert len(rows) == 1 and len(mail_server.to(user["user"]["email"])) == 1
