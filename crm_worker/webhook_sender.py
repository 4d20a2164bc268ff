"""Webhook deliveries over HTTP (Standard Webhooks), one endpoint at a time.

- Signing: `webhook-id` (the event id, the same on every attempt), `webhook-timestamp` (this
  attempt, unix seconds) and `webhook-signature` (`v1,<base64 HMAC-SHA256>` per secret, made
  by the `standardwebhooks` package from an aware UTC datetime) cover exactly the body sent.
- The SSRF guard sits in the connection itself: `GuardedBackend.connect_tcp` resolves the
  host, refuses it unless every address is public (crm_domain.egress) and connects to a
  vetted address; TLS still verifies and sends the host name. No proxies from the
  environment (`trust_env=False`), no redirects followed (a 3xx is a failure).
- Each attempt has one deadline (`timeout` seconds for connect, send and the answer together,
  enforced on every socket read and write), so a receiver that drips bytes cannot hold a
  worker longer than that; at most `RESPONSE_READ_LIMIT` bytes of the answer are read."""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import math
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx
from standardwebhooks.webhooks import Webhook

from crm_domain import egress
from crm_domain.db import Database
from crm_domain.services.delivery import webhook_attempts, webhook_leases
from crm_domain.services.delivery.webhook_attempts import Attempt, AttemptResult
from crm_domain.services.delivery.webhook_policy import RetryPolicy
from crm_domain.services.delivery.webhooks import FAILED
from crm_domain.settings import Settings

log = logging.getLogger(__name__)

USER_AGENT = "crm-webhooks/1"
RESPONSE_READ_LIMIT = 64 * 1024
# A run sends at most this many deliveries or for this long; then the endpoint goes to the
# back of the queue, behind the other endpoints' runs.
MAX_DELIVERIES_PER_RUN = 20
RUN_BUDGET_SECONDS = 30.0

_attempt = threading.local()  # .deadline: time.monotonic() by which this attempt must end


def _bounded(timeout: float | None, error: type[Exception]) -> float | None:
    deadline = getattr(_attempt, "deadline", None)
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("the attempt's deadline has passed")
    return left if timeout is None else min(timeout, left)


class DeadlineStream(httpcore.NetworkStream):
    """A connection whose reads and writes never outlast the current attempt's deadline."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _bounded(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, bounded))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class GuardedBackend(httpcore.NetworkBackend):
    """Connects only to vetted addresses of the host (see crm_domain.egress)."""

    def __init__(self, *, allow_private: bool) -> None:
        self.allow_private = allow_private
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = egress.vetted_addresses(host, port, allow_private=self.allow_private)
        failure: Exception | None = None
        for address in addresses:
            try:
                stream = self._inner.connect_tcp(
                    str(address),
                    port,
                    _bounded(timeout, httpcore.ConnectTimeout),
                    local_address,
                    socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
                continue
            return DeadlineStream(stream)
        assert failure is not None
        raise failure

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise egress.EgressRefused("unix sockets are not a webhook destination")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class GuardedTransport(httpx.HTTPTransport):
    """httpx's transport over a connection pool that uses `GuardedBackend`. (httpx takes no
    network backend argument; its transport keeps the pool in `_pool`.)"""

    def __init__(self, *, allow_private: bool) -> None:
        super().__init__(trust_env=False, retries=0)
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=100,
            max_keepalive_connections=20,
            keepalive_expiry=30.0,
            network_backend=GuardedBackend(allow_private=allow_private),
        )


def sign(secrets: Iterable[str], msg_id: str, timestamp: dt.datetime, body: str) -> str:
    """The `webhook-signature` value: one `v1,...` signature per secret, space-separated."""
    if timestamp.tzinfo is None or timestamp.utcoffset() != dt.timedelta(0):
        raise ValueError("sign with an aware UTC timestamp")  # the package assumes UTC
    return " ".join(Webhook(secret).sign(msg_id, timestamp, body) for secret in secrets)


def retry_after_seconds(value: str | None, now: dt.datetime) -> float | None:
    """A Retry-After header (seconds or an HTTP date) as seconds from now."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # "²" is a digit to str.isdigit, not to float()
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - now).total_seconds())


class Sender:
    """Sends attempts; one shared, thread-safe HTTP client per process."""

    def __init__(self, *, timeout: float, allow_private: bool) -> None:
        self.timeout = timeout
        self.client = httpx.Client(
            transport=GuardedTransport(allow_private=allow_private),
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            trust_env=False,
            headers={"User-Agent": USER_AGENT},
        )

    def close(self) -> None:
        self.client.close()

    def send(self, attempt: Attempt) -> AttemptResult:
        now = dt.datetime.now(dt.UTC)
        headers = {
            "Content-Type": "application/json",
            "webhook-id": attempt.event_id,
            "webhook-timestamp": str(math.floor(now.timestamp())),
            "webhook-signature": sign(attempt.secrets, attempt.event_id, now, attempt.body),
        }
        _attempt.deadline = time.monotonic() + self.timeout
        try:
            with self.client.stream(
                "POST", attempt.url, content=attempt.body.encode(), headers=headers
            ) as response:
                raw = bytearray()
                for chunk in response.iter_bytes():
                    raw += chunk
                    if len(raw) >= RESPONSE_READ_LIMIT:
                        break
        except egress.EgressRefused as exc:
            log.warning(
                "webhook delivery %s (endpoint %s) refused: %s",
                attempt.delivery_id,
                attempt.endpoint_id,
                exc.detail,
            )
            return AttemptResult(error=f"destination refused: {exc}")
        except httpx.TimeoutException:
            return AttemptResult(error=f"no answer within {self.timeout:g} s")
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            return AttemptResult(error=f"{type(exc).__name__}: {exc}"[:500])
        finally:
            _attempt.deadline = None
        status = response.status_code
        text = bytes(raw).decode("utf-8", "replace")
        if 200 <= status < 300:
            return AttemptResult(status_code=status, response_body=text)
        if 300 <= status < 400:
            location = response.headers.get("Location", "")
            error = f"HTTP {status}: redirects are not followed (Location: {location})"
        else:
            error = f"HTTP {status}"
        retry_after = None
        if status in (429, 503):
            retry_after = retry_after_seconds(response.headers.get("Retry-After"), now)
        return AttemptResult(
            status_code=status, response_body=text, error=error, retry_after=retry_after
        )


def policy_from(settings: Settings) -> RetryPolicy:
    return RetryPolicy(
        schedule=settings.webhook_retry_schedule,
        disable_after=dt.timedelta(hours=settings.webhook_disable_after_hours),
        disable_after_failed_events=settings.webhook_disable_after_failed_events,
    )


def lease_seconds(sender: Sender) -> float:
    """Longer than one attempt can take (its deadline, plus DNS and the database)."""
    return 2 * sender.timeout + 10


@dataclass(frozen=True)
class RunResult:
    sent: int
    more_due: bool  # deliveries of this endpoint are due and nobody is sending them


def _attempt_result(sender: Sender, attempt: Attempt) -> AttemptResult:
    """The outcome of sending `attempt`; an error the sender did not foresee is a failed
    attempt like any other (retried, then the delivery fails), never a stuck delivery."""
    try:
        return sender.send(attempt)
    except Exception as exc:
        log.exception(
            "webhook %s to endpoint %s could not be sent", attempt.event_id, attempt.endpoint_id
        )
        return AttemptResult(error=f"could not send: {type(exc).__name__}: {exc}"[:500])


def run_endpoint(
    db: Database,
    endpoint_id: int,
    sender: Sender,
    policy: RetryPolicy,
    *,
    max_deliveries: int = MAX_DELIVERIES_PER_RUN,
    budget: float = RUN_BUDGET_SECONDS,
) -> RunResult:
    """Send the endpoint's due deliveries, oldest first, one at a time, unless another sender
    holds the endpoint. Stops at the first failure (the endpoint is struggling: the rest wait
    for the next sweep, and other endpoints go first), after `max_deliveries` or once
    `budget` seconds have passed."""
    lease = lease_seconds(sender)
    with db.transaction() as session:
        if not webhook_leases.acquire(session, endpoint_id, lease):
            return RunResult(0, False)
    sent, failed = 0, False
    stop_at = time.monotonic() + budget
    try:
        while sent < max_deliveries and not failed and time.monotonic() < stop_at:
            with db.transaction() as session:
                attempt = webhook_attempts.claim_next(session, endpoint_id, lease)
            if attempt is None:
                break
            result = _attempt_result(sender, attempt)
            with db.transaction() as session:
                delivery = webhook_attempts.record_result(session, attempt, result, policy)
                parked = delivery is not None and delivery.status == FAILED
            sent += 1
            failed = not result.ok
            if parked:
                log.error(
                    "webhook %s to endpoint %s parked as failed after %d attempts: %s",
                    attempt.event_id,
                    endpoint_id,
                    attempt.number,
                    result.error,
                )
            elif failed:
                log.info(
                    "webhook %s to endpoint %s failed (attempt %d): %s",
                    attempt.event_id,
                    endpoint_id,
                    attempt.number,
                    result.error,
                )
    finally:
        with db.transaction() as session:
            webhook_leases.release(session, endpoint_id)
    if failed:
        return RunResult(sent, False)
    # Checked after the release: deliveries whose wake-up found the lease held are seen here.
    with db.transaction() as session:
        return RunResult(sent, webhook_attempts.has_due(session, endpoint_id))
