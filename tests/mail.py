"""A real SMTP server in the test process (aiosmtpd in a thread) that keeps what it receives,
and the sending step a worker would run, pointed at it."""

from __future__ import annotations

import os
import re
import ssl
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any
from urllib.parse import parse_qs, urlparse

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from crm_domain.db import Database
from crm_domain.embedded import free_port
from crm_domain.mail.transport import SmtpTransport
from crm_domain.services.mailing import outbound_email

from .stack import wait_until

SENDER = "CRM <crm@example.com>"
BASE_URL = "http://crm.test"


@dataclass
class Received:
    mail_from: str
    recipients: list[str]
    message: EmailMessage

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    def part(self, subtype: str) -> str:
        body = self.message.get_body((subtype,))
        assert body is not None, f"no text/{subtype} part"
        return str(body.get_content())  # type: ignore[attr-defined]


class Handler:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.replies: deque[str] = deque()  # answers to give instead of accepting, in order

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.replies:
            return self.replies.popleft()
        message = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"


class SmtpServer:
    """`tls`: "none", "starttls" (required) or "ssl" (implicit TLS) with a certificate from a
    throwaway CA; `login`: (user, password) required for AUTH."""

    def __init__(self, *, tls: str = "none", login: tuple[str, str] | None = None) -> None:
        self.handler = Handler()
        self.tls = tls
        self.port = free_port()
        self.client_context: ssl.SSLContext | None = None
        kwargs: dict[str, Any] = {}
        if tls != "none":
            import trustme

            ca = trustme.CA()
            server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ca.issue_cert("127.0.0.1").configure_cert(server_context)
            self.client_context = ssl.create_default_context()
            ca.configure_trust(self.client_context)
            if tls == "ssl":
                kwargs["ssl_context"] = server_context
            else:
                kwargs.update(tls_context=server_context, require_starttls=True)
        if login is not None:

            def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any):
                ok = (
                    isinstance(data, LoginPassword)
                    and (
                        data.login.decode(),
                        data.password.decode(),
                    )
                    == login
                )
                return AuthResult(success=ok, handled=False)  # aiosmtpd answers 235 / 535

            kwargs.update(authenticator=authenticate, auth_required=True)
            # aiosmtpd counts only STARTTLS as TLS; an implicit-TLS connection is one anyway
            kwargs["auth_require_tls"] = tls == "starttls"
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port, **kwargs)

    def start(self) -> SmtpServer:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    @property
    def received(self) -> list[Received]:
        return self.handler.received

    def reply_next(self, *replies: str) -> None:
        """Answer the next DATA commands with these replies instead of accepting."""
        self.handler.replies.extend(replies)

    def transport(self, *, user: str = "", password: str = "", tls: str | None = None):
        return SmtpTransport(
            "127.0.0.1",
            self.port,
            tls=tls or self.tls,
            user=user,
            password=password,
            timeout=5,
            ssl_context=self.client_context,
        )

    def to(self, address: str) -> list[Received]:
        return [r for r in self.received if address.lower() in [a.lower() for a in r.recipients]]

    def wait_for(self, address: str, count: int = 1, timeout: float = 60) -> list[Received]:
        return wait_until(
            lambda: self.to(address) if len(self.to(address)) >= count else None, timeout
        )


def context() -> outbound_email.MailContext:
    return outbound_email.MailContext(
        secret_key=os.environ["SECRET_KEY"], public_base_url=BASE_URL, sender=SENDER
    )


def send_all(db: Database, server: SmtpServer, **kwargs: Any) -> outbound_email.SendResult:
    """What the e-mail worker does, until nothing is due."""
    total = outbound_email.SendResult()
    while True:
        result = outbound_email.send_pending(db, server.transport(**kwargs), context())
        total.sent += result.sent
        total.skipped += result.skipped
        total.failed += result.failed
        if not result.more:
            return total


LINK = re.compile(r"https?://\S+?/api/v1/invitations/preview\?token=[A-Za-z0-9_\-]+")


def invitation_link(received: Received) -> str:
    links = set(LINK.findall(received.part("plain"))) | set(LINK.findall(received.part("html")))
    assert len(links) == 1, links
    return links.pop()


def token_from(received: Received) -> str:
    query = parse_qs(urlparse(invitation_link(received)).query)
    return query["token"][0]


def smtp_server(**kwargs: Any) -> Iterator[SmtpServer]:
    server = SmtpServer(**kwargs).start()
    try:
        yield server
    finally:
        server.stop()
