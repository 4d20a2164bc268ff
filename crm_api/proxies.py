"""The reverse proxies in front of the API (TRUSTED_PROXIES), and requests that say they came
through more proxies than that.

With TRUSTED_PROXIES=N the client address (rate limits, the access log) is the one the N-th
proxy from the API saw: werkzeug's ProxyFix takes it from X-Forwarded-For. A proxy the API
does not count is a silent misconfiguration: with TRUSTED_PROXIES=0 behind nginx every client
has nginx's address and shares its rate-limit buckets; with one proxy more than counted,
every client has that proxy's address. The API cannot know at start what will be in front
of it, and refusing to serve (or failing /ready) on what a request carries would let anyone
who sends an X-Forwarded-For header take the API out of its load balancer. So it warns,
loudly: `ProxyCheck` notices a request with more X-Forwarded-For hops than trusted (a
`Forwarded` or `X-Real-IP` header alone counts as one), logs a warning (at most once per
REPORT_EVERY seconds per process) and records it in Redis, where `/ready` of every process
shows it (`warnings`) for WARNING_TTL seconds after the last such request.

A request that came through any proxy is never "loopback" (`proxied`), whatever address
the proxy connected from: /metrics without a token answers loopback clients only."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, cast

import redis

log = logging.getLogger(__name__)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

FORWARDING_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP")
REPORT_EVERY = 30.0
WARNING_TTL = 900
CODE = "UNTRUSTED_PROXY"


def forwarded_hops(environ: dict[str, Any]) -> int:
    """How many proxies the request says it came through: X-Forwarded-For's addresses, or 1
    for a Forwarded or X-Real-IP header alone; 0 when it carries none of them."""
    forwarded_for = environ.get("HTTP_X_FORWARDED_FOR")
    if forwarded_for is not None:
        return max(1, sum(1 for part in forwarded_for.split(",") if part.strip()))
    return 1 if any(environ.get(h) is not None for h in FORWARDING_HEADERS) else 0


def proxied(environ: dict[str, Any]) -> bool:
    return forwarded_hops(environ) > 0


def peer_address(environ: dict[str, Any]) -> str | None:
    """The address of whoever opened the connection (ProxyFix keeps the one it replaced)."""
    original = environ.get("werkzeug.proxy_fix.orig")
    if original is not None:
        return original.get("REMOTE_ADDR")  # type: ignore[no-any-return]
    return environ.get("REMOTE_ADDR")


def warning_message(hops: int, trusted: int) -> str:
    if trusted == 0:
        return (
            "Requests arrive through a reverse proxy (they carry X-Forwarded-For) but"
            " TRUSTED_PROXIES=0: every client has the proxy's address and shares its rate"
            " limits. Set TRUSTED_PROXIES to the number of proxies in front of the API."
        )
    return (
        f"Requests carry {hops} X-Forwarded-For addresses but TRUSTED_PROXIES={trusted}: if"
        " another proxy (a load balancer, a CDN) is in front, count it in TRUSTED_PROXIES; if"
        " clients send the header themselves, make the outermost proxy replace it (nginx:"
        " proxy_set_header X-Forwarded-For $remote_addr)."
    )


class ProxyWarnings:
    """The last untrusted-proxy warning, shared by every process through Redis."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.key = f"{prefix}:proxy-warning"

    def record(self, hops: int, trusted: int) -> None:
        warning = {
            "code": CODE,
            "message": warning_message(hops, trusted),
            "forwarded_hops": hops,
            "trusted_proxies": trusted,
            "last_seen": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self.client.set(self.key, json.dumps(warning), ex=WARNING_TTL)

    def current(self) -> list[dict[str, Any]]:
        raw = cast("bytes | None", self.client.get(self.key))  # redis-py types both clients
        return [json.loads(raw)] if raw else []


class ProxyCheck:
    """WSGI middleware: reports requests that came through more proxies than trusted."""

    def __init__(self, app: WSGIApp, *, trusted: int, warnings: ProxyWarnings) -> None:
        self.app = app
        self.trusted = trusted
        self.warnings = warnings
        self._reported_at = float("-inf")

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        hops = forwarded_hops(environ)
        if hops > self.trusted and time.monotonic() - self._reported_at >= REPORT_EVERY:
            self._reported_at = time.monotonic()
            self._report(hops, peer_address(environ))
        return self.app(environ, start_response)

    def _report(self, hops: int, peer: str | None) -> None:
        log.warning(
            "%s (this one from %s, %d forwarded hops)",
            warning_message(hops, self.trusted),
            peer,
            hops,
        )
        try:
            self.warnings.record(hops, self.trusted)
        except redis.RedisError:
            log.warning("the untrusted-proxy warning could not be stored for /ready")
