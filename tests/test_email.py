"""E-mail delivery against a real SMTP server (aiosmtpd): the weekly report (text + HTML with
the funnel chart), the daily task digest and its opt-out, retries with back-off, refusals,
an unreachable server, STARTTLS / implicit TLS with AUTH, and the folder fallback."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import uuid
from collections.abc import Iterator
from email import message_from_bytes, policy
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from crm_domain.embedded import free_port
from crm_domain.mail import transport
from crm_domain.mail.render import Content, build_message
from crm_domain.models import Invitation, Organization, OutboundEmail, OutboxEvent, Report, Task
from crm_domain.models import User as UserRow
from crm_domain.services.delivery import events, outbox
from crm_domain.services.mailing import digests, outbound_email
from crm_domain.services.mailing.invitations import hash_token
from crm_domain.services.reporting import reports
from crm_domain.settings import MailSettings
from crm_worker.app import EMAIL_QUEUE, celery_app
from crm_worker.dispatch import Dispatcher
from crm_worker.names import SEND_MAIL_TASK

from .api import ApiClient, User
from .mail import SmtpServer, context, send_all, smtp_server, token_from


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def _email() -> str:
    return f"mail-{uuid.uuid4().hex[:10]}@example.com"


def _invite(api: ApiClient, user: User, email: str | None = None) -> str:
    email = email or _email()
    r = api.post(f"/organizations/{user.org_id}/invitations", user=user, json={"email": email})
    assert r.status_code == 201, r.get_json()
    return email


def _row(db, to: str) -> OutboundEmail:
    with db.transaction() as session:
        return session.scalars(select(OutboundEmail).where(OutboundEmail.to_address == to)).one()


def _make_due_now(db, to: str) -> None:
    with db.transaction() as session:
        session.execute(
            update(OutboundEmail)
            .where(OutboundEmail.to_address == to)
            .values(next_attempt_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
        )


# --- the weekly report ----------------------------------------------------------------------------


class _Chart(HTMLParser):
    """The funnel chart of the HTML part: its rows (stage, reached, percent) and bar widths."""

    def __init__(self) -> None:
        super().__init__()
        self.chart_found = False
        self.rows: list[dict[str, str]] = []
        self.bar_widths: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if a.get("id") == "funnel-chart":
            self.chart_found = True
        if "funnel-bar" in a.get("class", "").split():
            self.rows.append(a)
        if "bar" in a.get("class", "").split():
            self.bar_widths.append(a["width"])
        if tag in ("img", "image") or "url(" in a.get("style", ""):
            self.images.append(tag)


def _weekly_report(db, org_id: int, start: dt.date) -> int:
    """What `reports.schedule_weekly` does for one organization (it does it for all)."""
    with db.transaction() as session:
        report = Report(
            organization_id=org_id,
            kind="weekly",
            status="pending",
            period_start=start,
            period_end=start + dt.timedelta(days=6),
        )
        session.add(report)
        session.flush()
        outbox.record(session, org_id, reports.REPORT_TOPIC, {"report_id": report.id})
        return report.id


def test_weekly_report_goes_to_owners_and_admins(api: ApiClient, db, smtp: SmtpServer) -> None:
    team = api.team()
    owner = team["owner"]
    org = owner.org_id
    org_name = api.get("/organizations/me", user=owner).get_json()[0]["name"]
    for stage, status in [
        ("qualification", "new"),
        ("qualification", "new"),
        ("qualification", "new"),
        ("proposal", "in_progress"),
        ("negotiation", "in_progress"),
        ("closed", "won"),
    ]:
        deal = api.deal(owner, amount="100.00")
        r = api.patch(
            f"/deals/{deal['id']}", user=owner, org=org, json={"stage": stage, "status": status}
        )
        assert r.status_code == 200, r.get_json()
    late = api.task(owner, deal["id"], title="Send <the> contract & invoice")
    with db.transaction() as session:
        session.execute(
            update(Task)
            .where(Task.id == late["id"])
            .values(due_date=_today() - dt.timedelta(days=3))
        )

    start = dt.date(2030, 1, 7)
    report_id = _weekly_report(db, org, start)
    r = api.get(f"/reports/{report_id}", user=owner, org=org)
    assert r.get_json()["status"] == "ready"  # built through the outbox, then e-mailed
    send_all(db, smtp)

    assert smtp.to(team["manager"].email) == [] and smtp.to(team["member"].email) == []
    [to_owner] = smtp.to(owner.email)
    [to_admin] = smtp.to(team["admin"].email)
    for received in (to_owner, to_admin):
        assert received.subject == (f"Weekly pipeline report: {org_name}, 2030-01-07 to 2030-01-13")
    message = to_owner.message
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]

    html = to_owner.part("html")
    chart = _Chart()
    chart.feed(html)
    assert chart.chart_found
    # reached: 6 deals got to qualification, 3 to proposal, 2 to negotiation, 1 closed
    assert [
        (row["data-stage"], row["data-reached"], row["data-percent"]) for row in chart.rows
    ] == [
        ("qualification", "6", "100"),
        ("proposal", "3", "50"),
        ("negotiation", "2", "33"),
        ("closed", "1", "17"),
    ]
    assert chart.bar_widths == ["100%", "50%", "33%", "17%"]
    assert chart.images == []  # drawn with table cells: nothing to fetch, nothing blocked
    assert "Send &lt;the&gt; contract &amp; invoice" in html  # escaped
    assert "EUR 300.00" in html  # three new deals of 100 EUR

    text = to_owner.part("plain")
    assert "Send <the> contract & invoice" in text and "3 d late" in text
    assert "Deals in the pipeline: 6" in text
    funnel_lines = [
        line.split() for line in text.splitlines() if line.startswith("  ") and "#" in line
    ]
    assert [(words[0], words[2]) for words in funnel_lines] == [
        ("Qualification", "6"),
        ("Proposal", "3"),
        ("Negotiation", "2"),
        ("Closed", "1"),
    ]
    assert funnel_lines[1][3] == "50.0%"

    # The report.ready event delivered again queues and sends nothing more.
    with db.transaction() as session:
        session.execute(
            update(OutboxEvent)
            .where(
                OutboxEvent.topic == events.REPORT_READY,
                OutboxEvent.payload["id"].as_integer() == report_id,
            )
            .values(delivered_at=None)
        )
    assert Dispatcher().deliver(db) >= 1
    send_all(db, smtp)
    assert len(smtp.to(owner.email)) == len(smtp.to(team["admin"].email)) == 1


def test_an_on_demand_report_sends_no_email(api: ApiClient, db, smtp: SmtpServer) -> None:
    owner = api.register()
    r = api.post("/reports", user=owner, org=owner.org_id)
    assert r.status_code == 202
    send_all(db, smtp)
    assert smtp.to(owner.email) == []


# --- the daily digest -----------------------------------------------------------------------------


def _due_task(api: ApiClient, db, user: User, deal_id: int, title: str, days_ago: int, **kw) -> int:
    task = api.task(user, deal_id, title=title, due_date=_today().isoformat(), **kw)
    if days_ago:
        with db.transaction() as session:
            session.execute(
                update(Task)
                .where(Task.id == task["id"])
                .values(due_date=_today() - dt.timedelta(days=days_ago))
            )
    return task["id"]


def test_daily_digest_lists_due_and_overdue_tasks_once_a_day(
    api: ApiClient, db, smtp: SmtpServer
) -> None:
    alice = api.register(name="Alice", org_name=f"Alpha {uuid.uuid4().hex[:4]}")
    other_org = api.register(org_name=f"Beta {uuid.uuid4().hex[:4]}")
    api.add_member(other_org, other_org.org_id, alice, "manager")
    deal = api.deal(alice, title="Big deal")
    _due_task(api, db, alice, deal["id"], "Due today", 0)
    _due_task(api, db, alice, deal["id"], "Two days late", 2)
    api.task(alice, deal["id"], title="Tomorrow")  # not due yet
    done = _due_task(api, db, alice, deal["id"], "Done already", 1)
    assert api.patch(f"/tasks/{done}", user=alice, org=alice.org_id, json={"is_done": True})
    beta_deal = api.deal(alice, org=other_org.org_id, title="Beta deal")
    _due_task(api, db, alice, beta_deal["id"], "Beta call", 1, org=other_org.org_id)
    idle = api.register()  # no due tasks: no digest
    api.deal(idle)

    with db.transaction() as session:
        queued = digests.schedule(session)
    assert queued >= 1
    with db.transaction() as session:
        assert digests.schedule(session) == 0  # once per user per day
    send_all(db, smtp)
    assert smtp.to(idle.email) == []
    [digest] = smtp.to(alice.email)
    assert digest.subject == f"3 tasks due today or overdue ({_today().isoformat()})"
    text = digest.part("plain")
    assert "Due today (Big deal): due today" in text
    assert "Two days late (Big deal): 2 days overdue" in text
    assert "Beta call (Beta deal): 1 day overdue" in text
    assert "Tomorrow" not in text and "Done already" not in text
    assert text.index("Alpha") < text.index("Due today") < text.index("Beta call")
    html = digest.part("html")
    assert "Two days late" in html and "Beta deal" in html and "Tomorrow" not in html

    # The next day is a new digest.
    with db.transaction() as session:
        assert digests.schedule(session, today=_today() + dt.timedelta(days=1)) >= 1
    send_all(db, smtp)
    assert len(smtp.to(alice.email)) == 2


def test_users_can_opt_out_of_the_digest(api: ApiClient, db, smtp: SmtpServer) -> None:
    bob = api.register(name="Bob")
    deal = api.deal(bob)
    _due_task(api, db, bob, deal["id"], "Call", 0)

    r = api.patch("/auth/me", user=bob, json={"email_digest": False})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["email_digest"] is False
    assert api.get("/auth/me", user=bob).get_json()["email_digest"] is False
    with db.transaction() as session:
        digests.schedule(session)
    send_all(db, smtp)
    assert smtp.to(bob.email) == []

    # Opting out after the digest was queued still stops it.
    assert api.patch("/auth/me", user=bob, json={"email_digest": True}).status_code == 200
    day = _today() + dt.timedelta(days=1)
    with db.transaction() as session:
        digests.schedule(session, today=day)
    assert api.patch("/auth/me", user=bob, json={"email_digest": False}).status_code == 200
    send_all(db, smtp)
    assert smtp.to(bob.email) == []
    assert _row(db, bob.email).status == "skipped"


@pytest.mark.parametrize("body", [{}, {"email_digest": "no"}, {"email_digest": 0}, {"x": True}])
def test_preferences_validation(api: ApiClient, body: dict[str, Any]) -> None:
    user = api.register()
    r = api.patch("/auth/me", user=user, json=body)
    assert r.status_code == 400
    assert r.get_json()["error"]["code"] == "VALIDATION_ERROR"
    assert api.get("/auth/me", user=user).get_json()["email_digest"] is True
    assert api.patch("/auth/me", json={"email_digest": False}).status_code == 401


# --- failures, retries ----------------------------------------------------------------------------


def test_a_temporary_refusal_is_retried_with_backoff(api: ApiClient, db, smtp: SmtpServer) -> None:
    send_all(db, smtp)  # nothing else due
    owner = api.register()
    email = _invite(api, owner)
    smtp.reply_next("451 4.3.0 Try again later")
    before = dt.datetime.now(dt.UTC)
    result = send_all(db, smtp)
    assert (result.sent, result.failed) == (0, 1)
    assert smtp.to(email) == []
    row = _row(db, email)
    assert (row.status, row.attempts) == ("pending", 1)
    assert "451" in (row.last_error or "")
    wait = row.next_attempt_at - before
    assert dt.timedelta(seconds=55) <= wait <= dt.timedelta(seconds=65)

    assert send_all(db, smtp).handled == 0  # not due yet: no hammering
    _make_due_now(db, email)
    smtp.reply_next("421 4.7.0 Busy")
    send_all(db, smtp)
    row = _row(db, email)
    assert row.attempts == 2
    assert (
        dt.timedelta(seconds=115)
        <= row.next_attempt_at - dt.datetime.now(dt.UTC)
        <= dt.timedelta(seconds=125)
    )
    _make_due_now(db, email)
    assert send_all(db, smtp).sent == 1
    [received] = smtp.to(email)
    row = _row(db, email)
    assert (row.status, row.attempts, row.last_error) == ("sent", 3, None)
    assert row.sent_at is not None
    # The token in a retried e-mail is the same working token.
    r = api.post(
        "/auth/accept-invitation",
        json={"token": token_from(received), "name": "Late", "password": "StrongPassword123"},
    )
    assert r.status_code == 201


def test_backoff_doubles_up_to_an_hour() -> None:
    assert [outbound_email.backoff(n).total_seconds() for n in range(1, 9)] == [
        60,
        120,
        240,
        480,
        960,
        1920,
        3600,
        3600,
    ]


def test_a_permanent_refusal_is_not_retried(api: ApiClient, db, smtp: SmtpServer) -> None:
    send_all(db, smtp)
    email = _invite(api, api.register())
    smtp.reply_next("550 5.1.1 No such mailbox")
    assert send_all(db, smtp).failed == 1
    row = _row(db, email)
    assert (row.status, row.attempts) == ("failed", 1)
    assert "550" in (row.last_error or "")


def test_out_of_attempts_is_failed(api: ApiClient, db, smtp: SmtpServer) -> None:
    send_all(db, smtp)
    email = _invite(api, api.register())
    with db.transaction() as session:
        session.execute(
            update(OutboundEmail)
            .where(OutboundEmail.to_address == email)
            .values(attempts=outbound_email.MAX_ATTEMPTS - 1)
        )
    smtp.reply_next("451 4.3.0 Try again later")
    send_all(db, smtp)
    assert _row(db, email).status == "failed"


def test_an_unreachable_server_stops_the_run(api: ApiClient, db, smtp: SmtpServer) -> None:
    send_all(db, smtp)
    owner = api.register()
    first, second = _invite(api, owner), _invite(api, owner)
    dead = transport.SmtpTransport("127.0.0.1", free_port(), tls="none", timeout=2)
    result = outbound_email.send_pending(db, dead, context())
    assert (result.handled, result.failed) == (1, 1)
    attempts = sorted([_row(db, first).attempts, _row(db, second).attempts])
    assert attempts == [0, 1]  # one attempt spent, not one per queued message
    assert "Connection refused" in (_row(db, first).last_error or _row(db, second).last_error or "")
    _make_due_now(db, first)
    _make_due_now(db, second)
    assert send_all(db, smtp).sent >= 2
    assert len(smtp.to(first)) == len(smtp.to(second)) == 1


# --- rows that cannot be built: values stored before the single-line rule -------------------

LINE_BREAKERS = "\r\n\x0b\x0c\x1c\x1d\x1e\x1f\x85\u2028\u2029\x00\x07\x7f\x9f\t"


def test_building_a_message_never_raises_on_a_line_breaking_subject() -> None:
    for character in LINE_BREAKERS:
        content = Content(subject=f"Acme{character}Corp invited you", text="Hi", html="<p>Hi</p>")
        message = build_message(content, sender="CRM <crm@example.com>", to="a@example.com")
        raw = message.as_bytes()  # what the transport sends
        assert str(message["Subject"]) == "Acme Corp invited you", repr(character)
        assert b"Acme Corp invited you" in raw


def test_names_stored_before_the_rule_are_sent_on_one_line(
    api: ApiClient, db, smtp: SmtpServer
) -> None:
    send_all(db, smtp)
    owner = api.register()
    email = _invite(api, owner)
    with db.transaction() as session:  # as rows written before the API refused such names
        session.execute(
            update(Organization)
            .where(Organization.id == owner.org_id)
            .values(name="Acme\u2028Corp\r\nBcc: spy@example.com")
        )
        session.execute(update(UserRow).where(UserRow.id == owner.id).values(name="Ann\x85Lee"))
    assert send_all(db, smtp).sent == 1
    [received] = smtp.to(email)
    assert received.subject == "Ann Lee invited you to join Acme Corp Bcc: spy@example.com"
    assert received.message["Bcc"] is None and received.recipients == [email]
    plain, html = received.part("plain"), received.part("html")
    assert "Ann Lee invited you" in plain and "join Acme Corp Bcc: spy@example.com as" in plain
    assert "Join Acme Corp Bcc: spy@example.com</h1>" in html
    for part in (plain, html):
        assert "\u2028" not in part and "\x85" not in part


def _due_now(db, row_ids: list[int]) -> None:
    with db.transaction() as session:
        session.execute(
            update(OutboundEmail)
            .where(OutboundEmail.id.in_(row_ids))
            .values(next_attempt_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
        )


def test_rows_that_cannot_be_built_are_parked_and_the_fifty_behind_them_are_sent(
    api: ApiClient, db, smtp: SmtpServer, caplog: pytest.LogCaptureFixture
) -> None:
    send_all(db, smtp)
    owner = api.register()
    poisoned = [_row(db, _invite(api, owner)).id for _ in range(2)]
    good = [_invite(api, owner) for _ in range(50)]
    # Rows as an older version could have stored them, first in line: an address with a line
    # separator (the e-mail validator let it through), and parameters the database refuses.
    with db.transaction() as session:
        first_in_line = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
        session.execute(
            update(OutboundEmail)
            .where(OutboundEmail.id == poisoned[0])
            .values(to_address="old@exa\u2028mple.com", next_attempt_at=first_in_line)
        )
        session.execute(
            update(OutboundEmail)
            .where(OutboundEmail.id == poisoned[1])
            .values(params={"invitation_id": "not a number"}, next_attempt_at=first_in_line)
        )
    result = send_all(db, smtp)
    assert (result.sent, result.failed) == (50, 2)
    assert [len(smtp.to(address)) for address in good] == [1] * 50
    reasons = ("linefeed", "not a number")
    with db.transaction() as session:
        rows = [session.get(OutboundEmail, row_id) for row_id in poisoned]
        for row, reason in zip(rows, reasons, strict=True):
            assert row is not None and (row.status, row.attempts) == ("pending", 1)
            assert reason in (row.last_error or ""), row.last_error
            assert row.next_attempt_at > dt.datetime.now(dt.UTC)  # behind the others now

    with caplog.at_level(logging.ERROR, logger="crm_domain.services.mailing.outbound_email"):
        for _ in range(outbound_email.MAX_ATTEMPTS - 1):
            _due_now(db, poisoned)
            assert send_all(db, smtp).failed == 2
    with db.transaction() as session:
        rows = [session.get(OutboundEmail, row_id) for row_id in poisoned]
        for row, reason in zip(rows, reasons, strict=True):
            assert row is not None
            assert (row.status, row.attempts) == ("failed", outbound_email.MAX_ATTEMPTS)
            assert reason in (row.last_error or ""), row.last_error
    parked = [r.getMessage() for r in caplog.records if "parked as failed" in r.getMessage()]
    assert len(parked) == 2, parked
    _due_now(db, poisoned)
    assert send_all(db, smtp).handled == 0  # parked rows are not tried again
    assert len(smtp.received) >= 50 and not smtp.to("old@exa\u2028mple.com")


# --- TLS, AUTH, and no SMTP at all ----------------------------------------------------------------


@pytest.fixture(params=["starttls", "ssl"])
def tls_smtp(request) -> Iterator[SmtpServer]:
    yield from smtp_server(tls=request.param, login=("crm", "s3cret"))


def test_tls_and_login(api: ApiClient, db, tls_smtp: SmtpServer) -> None:
    send_all(db, tls_smtp, user="crm", password="s3cret")
    email = _invite(api, api.register())
    result = outbound_email.send_pending(
        db, tls_smtp.transport(user="crm", password="wrong"), context()
    )
    assert result.failed == 1 and tls_smtp.to(email) == []
    assert "535" in (_row(db, email).last_error or "")  # authentication failed: retried later
    _make_due_now(db, email)
    send_all(db, tls_smtp, user="crm", password="s3cret")
    [received] = tls_smtp.to(email)
    assert received.part("plain")
    # Without TLS the server does not even offer the login.
    if tls_smtp.tls == "starttls":
        with pytest.raises(Exception, match=r"(?i)auth|starttls"):
            plain = tls_smtp.transport(user="crm", password="s3cret", tls="none")
            try:
                plain.send(received.message)
            finally:
                plain.close()


def test_without_smtp_messages_go_to_a_folder_and_the_log(
    api: ApiClient, db, tmp_path: Path, caplog: pytest.LogCaptureFixture, smtp: SmtpServer
) -> None:
    send_all(db, smtp)
    email = _invite(api, api.register())
    folder = tmp_path / "mail"
    local = transport.from_settings(MailSettings(smtp_host="", mail_dir=str(folder)))
    assert isinstance(local, transport.DirectoryTransport)
    with caplog.at_level(logging.INFO, logger="crm_domain.mail.transport"):
        assert outbound_email.send_pending(db, local, context()).sent == 1
    [eml] = list(folder.glob("*.eml"))
    message = message_from_bytes(eml.read_bytes(), policy=policy.default)
    assert message["To"] == email
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "/api/v1/invitations/preview?token=" in text
    assert email in caplog.text and "/api/v1/invitations/preview?token=" in caplog.text
    with db.transaction() as session:
        token_hash = session.scalar(select(Invitation.token_hash).where(Invitation.email == email))
    token = text.split("?token=")[1].split()[0]
    assert hash_token(token) == token_hash
    # The token is in the file, never in the log (the link and the "Token:" line are masked).
    assert token not in caplog.text
    assert caplog.text.count(transport.DirectoryTransport.MASK) == 2


def test_concurrent_senders_send_each_message_once(api: ApiClient, db, smtp: SmtpServer) -> None:
    send_all(db, smtp)
    owner = api.register()
    emails = [_invite(api, owner) for _ in range(12)]
    results: list[outbound_email.SendResult] = []

    def sender() -> None:
        results.append(outbound_email.send_pending(db, smtp.transport(), context()))

    threads = [threading.Thread(target=sender) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sum(r.sent for r in results) >= len(emails)
    assert [len(smtp.to(email)) for email in emails] == [1] * len(emails)


def test_a_worker_with_another_secret_key_sends_no_broken_link(
    api: ApiClient, db, smtp: SmtpServer
) -> None:
    send_all(db, smtp)
    email = _invite(api, api.register())
    wrong = outbound_email.MailContext(
        secret_key="not-the-api-key", public_base_url="http://x", sender="a@example.com"
    )
    assert outbound_email.send_pending(db, smtp.transport(), wrong).failed == 1
    assert smtp.to(email) == []
    row = _row(db, email)
    assert (row.status, row.attempts) == ("pending", 1)
    assert "SECRET_KEY" in (row.last_error or "")


def test_email_tasks_are_routed_to_the_email_queue() -> None:
    route = celery_app.amqp.router.route({}, SEND_MAIL_TASK)
    assert route["queue"].name == EMAIL_QUEUE
    assert celery_app.amqp.router.route({}, "crm.email.schedule_digests")["queue"].name == "email"
    assert celery_app.amqp.router.route({}, "crm.outbox.drain")["queue"].name == "outbox"
