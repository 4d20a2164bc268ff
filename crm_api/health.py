"""Liveness and readiness."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import redis
from flask import Blueprint, current_app, jsonify

from .errors import RETRY_AFTER_SECONDS

bp = Blueprint("health", __name__)

# /ready answers within about this long whatever its dependencies do (an orchestrator's probe
# times out after 1 s by default): each check gets this deadline, and they run side by side.
READY_TIMEOUT_SECONDS = 1.0


class DeadlineCheck:
    """`check` run in a daemon thread and waited on for at most `timeout` seconds: a frozen
    server (SIGSTOP, a hung host, a pooler waiting for it) can hold a connection or a read for
    minutes, and neither libpq nor a server-side statement timeout can bound that. A check
    still running from an earlier probe is waited on again rather than started anew, so a
    process keeps at most one thread per dependency stuck on a frozen server."""

    def __init__(self, check: Callable[[], object]) -> None:
        self._check = check
        self._lock = threading.Lock()
        self._running: Future[object] | None = None
        self._pid = 0

    def start(self) -> Future[object]:
        with self._lock:
            running = self._running
            # A forked child (gunicorn --preload) inherits no running thread.
            if running is None or running.done() or self._pid != os.getpid():
                running = self._running = Future()
                self._pid = os.getpid()
                threading.Thread(
                    target=self._run, args=(running,), name="ready-check", daemon=True
                ).start()
            return running

    def _run(self, future: Future[object]) -> None:
        try:
            future.set_result(self._check())
        except BaseException as exc:  # reported by the probe
            future.set_exception(exc)


def outcome(future: Future[object], deadline: float) -> str:
    """ "ok", "timeout" or "error: <exception type>"."""
    try:
        future.result(timeout=max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        return "timeout"
    except Exception as exc:
        return f"error: {type(exc).__name__}"
    return "ok"


def _checks() -> dict[str, DeadlineCheck]:
    checks: dict[str, DeadlineCheck] | None = current_app.extensions.get("crm_ready_checks")
    if checks is None:
        # The app's own Redis client (short timeouts), the one the analytics cache uses; the
        # database on a connection of its own (Database.ping), not the requests' pool.
        checks = current_app.extensions["crm_ready_checks"] = {
            "database": DeadlineCheck(current_app.extensions["crm_db"].ping),
            "redis": DeadlineCheck(current_app.extensions["crm_analytics"].client.ping),
        }
    return checks


@bp.get("/health")
def health() -> Any:
    """The process is up."""
    return jsonify(status="ok")


@bp.get("/ready")
def ready() -> Any:
    """The database and Redis answer (each within READY_TIMEOUT_SECONDS); 503 names the
    dependency that did not: `"timeout"` or `"error: <exception type>"`. `warnings`:
    misconfigurations noticed meanwhile (a reverse proxy the API does not trust,
    crm_api.proxies); they do not make it unready."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    running = {name: check.start() for name, check in _checks().items()}
    checks = {name: outcome(future, deadline) for name, future in running.items()}
    warnings: list[dict[str, Any]] = []
    if checks["redis"] == "ok":
        # Redis may have gone away since its check: then there are no warnings to show.
        with contextlib.suppress(redis.RedisError):
            warnings += current_app.extensions["crm_proxy_warnings"].current()
    ok = all(v == "ok" for v in checks.values())
    response = jsonify(status="ok" if ok else "unavailable", checks=checks, warnings=warnings)
    response.status_code = 200 if ok else 503
    if not ok:
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response
