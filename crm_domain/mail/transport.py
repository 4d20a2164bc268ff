"""Where messages go: an SMTP server (smtplib), or a folder of .eml files plus the log when no
SMTP server is configured (the `make run` default, so a developer can open the links)."""

from __future__ import annotations

import datetime as dt
import logging
import smtplib
import ssl
import uuid
from collections.abc import Sequence
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol

from ..settings import MailSettings

log = logging.getLogger(__name__)


class Transport(Protocol):
    def send(self, message: EmailMessage, *, redact: Sequence[str] = ()) -> None:
        """Hand `message` over; `redact`: values of it that no log line may show."""

    def close(self) -> None: ...


class SmtpTransport:
    """One connection, opened on the first message and reused for the next ones."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: str = "starttls",
        user: str = "",
        password: str = "",
        timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host, self.port, self.tls = host, port, tls
        self.user, self.password, self.timeout = user, password, timeout
        self.ssl_context = ssl_context or ssl.create_default_context()
        self._conn: smtplib.SMTP | None = None

    def _connect(self) -> smtplib.SMTP:
        conn: smtplib.SMTP
        if self.tls == "ssl":
            conn = smtplib.SMTP_SSL(
                self.host, self.port, timeout=self.timeout, context=self.ssl_context
            )
        else:
            conn = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        try:
            conn.ehlo()
            if self.tls == "starttls":
                conn.starttls(context=self.ssl_context)
                conn.ehlo()
            if self.user:
                conn.login(self.user, self.password)
        except BaseException:
            conn.close()
            raise
        return conn

    def send(self, message: EmailMessage, *, redact: Sequence[str] = ()) -> None:
        if self._conn is not None:
            try:
                self._conn.send_message(message)
                return
            except smtplib.SMTPServerDisconnected:  # the server closed an idle connection
                self._conn = None
        self._conn = self._connect()
        self._conn.send_message(message)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.quit()
        except (smtplib.SMTPException, OSError):
            conn.close()


class DirectoryTransport:
    """Development stand-in for SMTP: each message becomes `<folder>/<time>-<id>.eml` (opens in
    any mail client) and its text part is logged, with the `redact` values (an invitation's
    token) masked: logs travel further than the folder."""

    MASK = "[hidden: see the .eml file]"

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def send(self, message: EmailMessage, *, redact: Sequence[str] = ()) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        path = self.directory / f"{stamp}-{uuid.uuid4().hex[:8]}.eml"
        path.write_bytes(message.as_bytes())
        body = message.get_body(("plain",))
        text = body.get_content() if body is not None else ""  # type: ignore[attr-defined]
        for secret in redact:
            if secret:
                text = text.replace(secret, self.MASK)
        log.info(
            "e-mail (no SMTP_HOST; saved to %s)\nTo: %s\nSubject: %s\n\n%s",
            path,
            message["To"],
            message["Subject"],
            text,
        )

    def close(self) -> None:
        pass


def from_settings(settings: MailSettings) -> Transport:
    if not settings.smtp_host:
        return DirectoryTransport(Path(settings.mail_dir))
    return SmtpTransport(
        settings.smtp_host,
        settings.smtp_port,
        tls=settings.smtp_tls,
        user=settings.smtp_user,
        password=settings.smtp_password,
        timeout=settings.smtp_timeout,
    )


def is_permanent(error: BaseException) -> bool:
    """The server refused this message for good (5xx on the recipients or the data):
    sending it again cannot help."""
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        return all(code >= 500 for code, _ in error.recipients.values())
    if isinstance(error, smtplib.SMTPDataError | smtplib.SMTPSenderRefused):
        return error.smtp_code >= 500
    return False


def is_connection_failure(error: BaseException) -> bool:
    """The server cannot be reached or will not talk to us (down, TLS, login): every other
    message would fail the same way, so the run stops instead of spending their attempts."""
    if isinstance(error, smtplib.SMTPException):  # every SMTPException is an OSError too
        return isinstance(
            error,
            smtplib.SMTPServerDisconnected
            | smtplib.SMTPConnectError
            | smtplib.SMTPAuthenticationError
            | smtplib.SMTPNotSupportedError
            | smtplib.SMTPHeloError,
        )
    return isinstance(error, OSError)  # refused, unreachable, timed out, TLS handshake
