"""The outbound e-mail queue (`outbound_emails`).

Producers (outbox handlers, the daily digest job) write rows idempotently: each row has a
`dedupe_key` made from the event or the day, and a second write of the same key writes
nothing, so a redelivered event sends no second e-mail. A row holds what to render (kind,
recipient, ids), never a rendered body or a secret.

The sender (`send_pending`, run by the e-mail worker) takes due rows one at a time: it locks
one with `FOR UPDATE SKIP LOCKED` (concurrent senders share the queue, never a row), renders
it from the current data (an invitation revoked meanwhile is skipped), builds the message,
hands it to the transport and marks it sent in the same transaction. A failure, while
building as well as while sending, is written on the row with the time of the next attempt
(exponential back-off), which puts the row behind the others, and beat's sweep sends
whatever is due; a message the server refuses for good (5xx), or one out of attempts, is
parked as failed with its reason in `last_error`. Only an outage of the database costs no
attempt. A worker killed between the SMTP hand-over and the commit sends that message again
later: at least once, as e-mail always is.

The queue names no kind of e-mail: each module that mails registers the composer of its kind
with `composers` at the composition root (crm_worker.consumers.install)."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from ...db import Database
from ...enums import EmailStatus
from ...mail.render import Content, build_message
from ...mail.transport import Transport, is_connection_failure, is_permanent
from ...models import OutboundEmail

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
BACKOFF_BASE_SECONDS = 60
BACKOFF_MAX_SECONDS = 3600


@dataclass(frozen=True)
class MailContext:
    """What rendering needs besides the database: the key that derives invitation tokens,
    the public address for links, the sender."""

    secret_key: str
    public_base_url: str
    sender: str


# Renders one queued e-mail from the current data; None when there is nothing to send any more.
Composer = Callable[[Session, OutboundEmail, MailContext], Content | None]


class Composers:
    """E-mail kind -> the composer that renders it."""

    def __init__(self) -> None:
        self._by_kind: dict[str, Composer] = {}

    def on(self, kind: str, composer: Composer) -> None:
        """`composer` renders `kind` (registering the same one again changes nothing)."""
        known = self._by_kind.setdefault(kind, composer)
        if known is not composer:
            raise ValueError(f"e-mail kind {kind!r} already has a composer: {known!r}")

    def get(self, kind: str) -> Composer | None:
        return self._by_kind.get(kind)


# The process's composers, registered at its start-up (crm_worker.consumers.install).
composers = Composers()


@dataclass
class SendResult:
    sent: int = 0
    skipped: int = 0
    failed: int = 0  # attempts that failed (retried later unless refused for good)
    more: bool = False  # stopped by the limit or the time budget: more may be due

    @property
    def handled(self) -> int:
        return self.sent + self.skipped + self.failed


def enqueue(session: Session, rows: Sequence[dict[str, Any]]) -> int:
    """Queue e-mails (`dedupe_key`, `kind`, `to_address`, `params`, optional `organization_id`,
    `user_id`); keys already queued are left alone. Returns how many rows are new."""
    if not rows:
        return 0
    inserted = session.connection().execute(
        pg_insert(OutboundEmail)
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(OutboundEmail.id),
        list(rows),
    )
    return len(inserted.all())


def backoff(attempts: int) -> dt.timedelta:
    """60 s after the first failure, doubling, at most an hour."""
    return dt.timedelta(
        seconds=min(BACKOFF_BASE_SECONDS * 2 ** max(attempts - 1, 0), BACKOFF_MAX_SECONDS)
    )


def _claim_one(session: Session) -> OutboundEmail | None:
    return session.scalar(
        select(OutboundEmail)
        # a literal predicate, so that the partial index `WHERE status = 'pending'` applies
        .where(text("outbound_emails.status = 'pending'"))
        .where(OutboundEmail.next_attempt_at <= func.now())
        .order_by(OutboundEmail.next_attempt_at, OutboundEmail.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    )


def _fail(row: OutboundEmail, error: BaseException, *, permanent: bool) -> None:
    row.attempts += 1
    row.last_error = repr(error)[:1000]
    if permanent or row.attempts >= MAX_ATTEMPTS:
        row.status = EmailStatus.FAILED
        log.error(
            "e-mail %s (%s) parked as failed after %d attempts: %r",
            row.id,
            row.kind,
            row.attempts,
            error,
        )
    else:
        row.next_attempt_at = func.now() + backoff(row.attempts)  # type: ignore[assignment]
        log.warning("e-mail %s (%s) failed, attempt %d: %r", row.id, row.kind, row.attempts, error)


def _build(
    session: Session, row: OutboundEmail, context: MailContext, composer: Composer
) -> tuple[EmailMessage, Content] | None:
    """The message of a row, rendered from the current data, with the content it was built
    from (its secrets are masked in log lines); None when there is nothing to send any more."""
    content = composer(session, row, context)
    if content is None:
        return None
    return build_message(content, sender=context.sender, to=row.to_address), content


def _send_one(
    session: Session,
    row: OutboundEmail,
    transport: Transport,
    context: MailContext,
) -> str:
    """Render and send one claimed row; returns "sent", "skipped", "failed" or "stop"."""
    composer = composers.get(row.kind)
    if composer is None:
        _fail(row, LookupError(f"unknown e-mail kind {row.kind!r}"), permanent=True)
        return "failed"
    try:
        # In a savepoint: a query that fails on the row's data leaves the transaction usable
        # for writing the failure on the row.
        with session.begin_nested():
            built = _build(session, row, context, composer)
    except OperationalError:
        raise  # the database is away: nobody's fault, no attempt spent
    except Exception as exc:  # the row's data, a template: keep the error, retry later
        log.exception("could not build e-mail %s (%s)", row.id, row.kind)
        _fail(row, exc, permanent=False)
        return "failed"
    if built is None:
        row.status = EmailStatus.SKIPPED
        return "skipped"
    message, content = built
    try:
        transport.send(message, redact=content.secrets)
    except Exception as exc:
        _fail(row, exc, permanent=is_permanent(exc))
        if is_connection_failure(exc):
            transport.close()
            return "stop"
        return "failed"
    row.attempts += 1
    row.status = EmailStatus.SENT
    row.sent_at = dt.datetime.now(dt.UTC)
    row.last_error = None
    return "sent"


def send_pending(
    db: Database,
    transport: Transport,
    context: MailContext,
    *,
    limit: int = 100,
    time_budget: float = 60.0,
) -> SendResult:
    """Send due e-mails, each in its own transaction, until none is due, `limit` were handled
    or `time_budget` seconds passed (then `more` is set). A server that cannot be reached
    ends the run after one failed attempt instead of failing every message."""
    result = SendResult()
    deadline = time.monotonic() + time_budget
    try:
        while True:
            if result.handled >= limit or time.monotonic() >= deadline:
                result.more = True
                break
            with db.transaction() as session:
                row = _claim_one(session)
                if row is None:
                    break
                outcome = _send_one(session, row, transport, context)
            if outcome == "sent":
                result.sent += 1
            elif outcome == "skipped":
                result.skipped += 1
            else:
                result.failed += 1
            if outcome == "stop":
                break
    finally:
        transport.close()
    return result
