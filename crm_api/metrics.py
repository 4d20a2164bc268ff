"""Prometheus metrics of the API and `GET /metrics` (the official prometheus-client).

Under gunicorn every worker process writes its samples to files in PROMETHEUS_MULTIPROC_DIR
(set and emptied by the launcher, scripts/with-metrics-dir); a scrape, whichever worker
answers it, merges the files of every process, plus those of the Celery workers on the same
host (WORKER_METRICS_DIR: one directory per worker service, separated by `:`). Without
PROMETHEUS_MULTIPROC_DIR (tests, a bare `flask run`) it reports this process only. Gauges
about the backlog are read at scrape time from the database and Redis
(`BackgroundMetrics`: one query, one Redis call, cached METRICS_CACHE_SECONDS).

Access: with METRICS_TOKEN set, `Authorization: Bearer <token>` is required; without it
(development only: it is required when CRM_ENV=production) /metrics answers only a client
on loopback talking to a server bound to loopback, and never a request that came through a
proxy (any X-Forwarded-For, Forwarded or X-Real-IP header): a proxy on the same host would
otherwise make every one of its clients a loopback client."""

from __future__ import annotations

import functools
import glob
import hmac
import ipaddress
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast

import redis
from flask import Blueprint, Flask, Response, current_app, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from crm_domain.db import Database
from crm_domain.errors import DomainError, Unauthorized
from crm_domain.services.delivery import outbox
from crm_domain.services.reporting.analytics_cache import AnalyticsCache
from crm_domain.settings import Settings

from . import proxies
from .errors import error_response

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

# Label of requests that matched no route (404, 405): the raw path would make one series
# per URL anyone cares to try.
UNMATCHED = "unmatched"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# `auth`: how the request authenticated, "token" (a login's access token), "key" (an API key)
# or "none" (public routes, and requests refused before their credential was verified).
REQUESTS = Counter(
    "crm_http_requests", "HTTP requests answered", ["route", "method", "status", "auth"]
)
LATENCY = Histogram(
    "crm_http_request_duration_seconds",
    "Time from the request to its response's close (the last byte sent), by route template",
    ["route", "method", "status"],
    buckets=LATENCY_BUCKETS,
)
IN_FLIGHT = Gauge(
    "crm_http_requests_in_flight",
    "Requests being handled now (a streamed response until its last byte)",
    multiprocess_mode="livesum",
)
LOGINS = Counter(
    "crm_login_attempts",
    "Login attempts by outcome: success, failure (wrong credentials), invalid (bad request),"
    " rate_limited, error",
    ["outcome"],
)
RATE_LIMITED = Counter("crm_rate_limited", "Requests answered 429 (rate limited)", ["route"])


def count_login(func: F) -> F:
    """Decorates the login view: counts each attempt by outcome."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        outcome = "error"
        try:
            result = func(*args, **kwargs)
            outcome = "success"
            return result
        except Unauthorized:
            outcome = "failure"
            raise
        except (HTTPException, DomainError) as exc:
            outcome = "rate_limited" if getattr(exc, "code", None) == 429 else "invalid"
            raise
        finally:
            LOGINS.labels(outcome).inc()

    return cast(F, wrapper)


class BackgroundMetrics:
    """Gauges computed at scrape time, cached for `ttl` seconds per process: the outbox
    backlog (one query over the pending-events index) and the age of the stalest
    organization's analytics (one Redis ZRANGE)."""

    def __init__(self, db: Database, cache: AnalyticsCache, ttl: float) -> None:
        self.db = db
        self.cache = cache
        self.ttl = ttl
        self._lock = threading.Lock()
        self._read_at = float("-inf")
        self._families: list[Metric] = []

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            if time.monotonic() - self._read_at >= self.ttl:
                self._families = self._read()
                self._read_at = time.monotonic()
            return list(self._families)

    def _read(self) -> list[Metric]:
        up = GaugeMetricFamily(
            "crm_metrics_source_up",
            "1 when the source of the backlog gauges answered this scrape",
            labels=["source"],
        )
        families: list[Metric] = [up]
        try:
            with self.db.transaction() as session:
                backlog = outbox.backlog(session)
        except SQLAlchemyError:
            log.warning("metrics: the outbox backlog could not be read", exc_info=True)
            up.add_metric(["database"], 0)
        else:
            up.add_metric(["database"], 1)
            age = backlog.oldest_pending_age
            families += [
                GaugeMetricFamily(
                    "crm_outbox_pending_events",
                    "Outbox events waiting for delivery",
                    value=backlog.pending,
                ),
                GaugeMetricFamily(
                    "crm_outbox_oldest_pending_age_seconds",
                    "How long the oldest pending outbox event has waited (0: none waits)",
                    value=age.total_seconds() if age else 0.0,
                ),
                GaugeMetricFamily(
                    "crm_outbox_stuck_events",
                    f"Outbox events that failed {outbox.MAX_ATTEMPTS} times (need an operator)",
                    value=backlog.stuck,
                ),
            ]
        try:
            oldest = self.cache.oldest_refresh()
        except redis.RedisError:
            log.warning("metrics: analytics refresh times could not be read", exc_info=True)
            up.add_metric(["redis"], 0)
        else:
            up.add_metric(["redis"], 1)
            if oldest is not None:
                families.append(
                    GaugeMetricFamily(
                        "crm_analytics_staleness_seconds",
                        "Age of the stalest organization's precomputed analytics (max as_of age)",
                        value=max(0.0, time.time() - oldest.timestamp()),
                    )
                )
        # Webhooks (issue in progress elsewhere): their backlog gauges (deliveries due,
        # oldest due age) are read here the same way, in the same transaction.
        return families


class _MultiProcessFiles:
    """Every process's samples in the given multiprocess directories, merged as one (the
    web's and the Celery workers' may hold the same metric names)."""

    def __init__(self, directories: list[str]) -> None:
        self.directories = directories

    def collect(self) -> Iterable[Metric]:
        files = [f for d in self.directories for f in glob.glob(os.path.join(d, "*.db"))]
        return MultiProcessCollector.merge(files, accumulate=True)


class _ThisProcess:
    """Single-process mode: the default registry of this process."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text format (see the module docstring for access)."""
    settings: Settings = current_app.extensions["crm_settings"]
    if settings.metrics_token:
        expected = f"Bearer {settings.metrics_token}".encode()
        if not hmac.compare_digest(request.headers.get("Authorization", "").encode(), expected):
            return error_response(401, "UNAUTHORIZED", "A valid metrics token is required")
    elif not (
        # the peer itself, not a client a proxy speaks for (a proxied request never counts)
        _is_loopback(proxies.peer_address(request.environ))
        and not proxies.proxied(request.environ)
        and _is_loopback(request.environ.get("SERVER_NAME"))
    ):
        return error_response(
            403, "FORBIDDEN", "Set METRICS_TOKEN to serve /metrics beyond loopback"
        )
    registry = CollectorRegistry()
    own_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if own_dir:
        dirs = [own_dir]
        for worker_dir in settings.worker_metrics_dir.split(os.pathsep):
            if (
                worker_dir
                and os.path.isdir(worker_dir)
                and not any(os.path.samefile(worker_dir, d) for d in dirs)
            ):
                dirs.append(worker_dir)
        registry.register(_MultiProcessFiles(dirs))
    else:
        registry.register(_ThisProcess())
    registry.register(current_app.extensions["crm_background_metrics"])
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


def init_metrics(app: Flask, settings: Settings, db: Database, cache: AnalyticsCache) -> None:
    if settings.environment == "production" and not settings.metrics_token:
        raise RuntimeError("METRICS_TOKEN must be set when CRM_ENV=production")
    app.extensions["crm_background_metrics"] = BackgroundMetrics(
        db, cache, app.config.get("METRICS_CACHE_SECONDS", settings.metrics_cache_seconds)
    )
    app.register_blueprint(bp)
