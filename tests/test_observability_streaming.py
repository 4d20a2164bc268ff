"""A streamed response is observed until its last byte, through a real HTTP server (werkzeug's,
threaded, on loopback, serving the session's app): a CSV export's batch queries run with its
request id bound, it stays in the in-flight gauge while its body is being sent, and it is
counted and timed only when the server closes it, its body included. And the observation ends
when the body's own close fails, or the application raises instead of answering."""

from __future__ import annotations

import http.client
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from prometheus_client import REGISTRY, generate_latest
from sqlalchemy import text
from werkzeug.serving import BaseWSGIServer, make_server

from crm_api.observability import ROUTE_KEY, RequestObserver
from crm_domain import logs
from crm_domain.db import Database

from .api import PREFIX, ApiClient
from .scrape import Samples, parse, value
from .stack import wait_until

EXPORT = f"{PREFIX}/contacts/export.csv"
EXPORT_LABELS = {"route": EXPORT, "method": "GET", "status": "200"}
# The request counter also says how the request authenticated (the duration does not).
EXPORT_COUNT = {**EXPORT_LABELS, "auth": "token"}
SQL_LOGGER = "sqlalchemy.engine.Engine"


@pytest.fixture
def server(app: Flask) -> Iterator[BaseWSGIServer]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


def _connect(server: BaseWSGIServer) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)


def _scrape(server: BaseWSGIServer) -> Samples:
    conn = _connect(server)
    try:
        conn.request("GET", "/metrics")
        r = conn.getresponse()
        assert r.status == 200
        return parse(r.read().decode())
    finally:
        conn.close()


def _waiting_on_a_lock(db: Database) -> bool:
    """A backend of this database (the export's batch query) waits for a lock."""
    with db.transaction() as s:
        return bool(
            s.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
                )
            )
        )


def test_a_streamed_export_is_observed_until_its_last_byte(
    server: BaseWSGIServer, api: ApiClient, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    owner = api.register()
    api.contact(owner, name="Streamed")
    rid = f"export-{uuid.uuid4().hex[:12]}"
    headers = {
        "Authorization": f"Bearer {owner.token}",
        "X-Organization-Id": str(owner.org_id),
        "X-Request-ID": rid,
    }
    caplog.set_level(logging.INFO, logger=SQL_LOGGER)  # SQLAlchemy logs every statement
    caplog.handler.addFilter(logs.RequestIdFilter())  # what the app's log handlers add
    before = _scrape(server)

    def gained(samples: Samples, name: str, **labels: str) -> float:
        return value(samples, name, **labels) - value(before, name, **labels)

    conn = _connect(server)
    try:
        # Hold the table: the export sends its header row, then its first batch query waits.
        with db.transaction() as s:
            s.execute(text("LOCK TABLE contacts IN ACCESS EXCLUSIVE MODE"))
            conn.request("GET", EXPORT, headers=headers)
            response = conn.getresponse()
            assert response.status == 200, response.read()
            assert response.getheader("X-Request-ID") == rid
            assert response.readline().startswith(b"name,email")
            first_row_at = time.perf_counter()
            wait_until(lambda: _waiting_on_a_lock(db), 10, 0.05)
            mid = _scrape(server)
            held = time.perf_counter() - first_row_at
        body = response.read()
    finally:
        conn.close()

    # Mid-stream: in flight (each scrape counts itself), not counted nor timed yet.
    assert gained(mid, "crm_http_requests_in_flight") == 1
    assert gained(mid, "crm_http_requests_total", **EXPORT_COUNT) == 0

    assert b"Streamed" in body

    # The server closes the response after the last byte: then it is counted, with the body
    # in its duration (it began before the first row arrived, ended after the lock went).
    def counted() -> Samples | None:
        samples = _scrape(server)
        return samples if gained(samples, "crm_http_requests_total", **EXPORT_COUNT) else None

    after = wait_until(counted, 10, 0.05)
    assert gained(after, "crm_http_requests_total", **EXPORT_COUNT) == 1
    assert gained(after, "crm_http_request_duration_seconds_count", **EXPORT_LABELS) == 1
    assert gained(after, "crm_http_request_duration_seconds_sum", **EXPORT_LABELS) >= held
    assert gained(after, "crm_http_requests_in_flight") == 0

    # The export's batch queries ran after the view returned, with its request id bound.
    batches = [r for r in caplog.records if _is_batch_query(r)]
    assert batches, [r.getMessage()[:80] for r in caplog.records if r.name == SQL_LOGGER]
    assert {getattr(r, "request_id", None) for r in batches} == {rid}


def _is_batch_query(record: Any) -> bool:
    message = record.getMessage()
    return (
        record.name == SQL_LOGGER
        and message.startswith("SELECT")
        and "FROM contacts" in message
        and "LIMIT" in message
    )


# --- the observation ends whatever happens -----------------------------------------------------


def _registry() -> Samples:
    return parse(generate_latest(REGISTRY).decode())


def _observe(app: Any, route: str) -> tuple[Samples, Any]:
    """`app` behind the observer, called as a server calls it: (samples before, its body)."""
    before = _registry()
    environ = {"REQUEST_METHOD": "GET", ROUTE_KEY: route}
    return before, RequestObserver(app)(environ, lambda status, headers, *exc: None)


def test_a_body_whose_close_fails_still_ends_its_observation() -> None:
    class Body:
        def __iter__(self) -> Iterator[bytes]:
            yield b"x"

        def close(self) -> None:
            raise RuntimeError("a teardown bug")

    def app(environ: dict[str, Any], start_response: Any) -> Body:
        start_response("200 OK", [])
        return Body()

    labels = {"route": "/close-fails", "method": "GET", "status": "200", "auth": "none"}
    before, body = _observe(app, labels["route"])
    assert b"".join(body) == b"x"
    in_flight = value(before, "crm_http_requests_in_flight")
    assert value(_registry(), "crm_http_requests_in_flight") == in_flight + 1
    with pytest.raises(RuntimeError):
        body.close()
    after = _registry()
    assert value(after, "crm_http_requests_in_flight") == in_flight
    assert value(after, "crm_http_requests_total", **labels) == (
        value(before, "crm_http_requests_total", **labels) + 1
    )


def test_an_application_that_raises_is_a_500_and_no_longer_in_flight() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        raise RuntimeError("before any answer")

    labels = {"route": "/raises", "method": "GET", "status": "500", "auth": "none"}
    before = _registry()
    with pytest.raises(RuntimeError):
        _observe(app, labels["route"])
    after = _registry()
    assert value(after, "crm_http_requests_in_flight") == value(
        before, "crm_http_requests_in_flight"
    )
    assert value(after, "crm_http_requests_total", **labels) == (
        value(before, "crm_http_requests_total", **labels) + 1
    )
