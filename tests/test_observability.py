"""Request ids, log records and /metrics in-process (the real gunicorn + Celery run is in
test_observability_stack.py): the request id travels from the header to the outbox rows,
metrics count by route template, the backlog gauges follow the database and Redis, and
/metrics answers only whom it should."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Iterator, Sequence

import pytest
from flask import Flask, abort
from sqlalchemy import select
from sqlalchemy.orm import Session

from crm_api import create_app
from crm_domain import logs, request_id
from crm_domain.db import Database
from crm_domain.enums import ActivityType
from crm_domain.models import OutboxEvent
from crm_domain.services.delivery import events, outbox
from crm_domain.services.records import timeline
from crm_domain.settings import Settings
from crm_worker.observability import MeteredDelivery, _send_request_id

from .api import PASSWORD, ApiClient, error_code
from .delivery import timeline_handled_by
from .scrape import Samples, has, parse, value

DEAL_ROUTE = "/api/v1/deals/<int:deal_id>"


def scrape(api: ApiClient, **kw) -> Samples:
    r = api.client.get("/metrics", buffered=True, **kw)
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.headers["Content-Type"].startswith("text/plain; version=")
    return parse(r.get_data(as_text=True))


def app_with(**changes) -> Flask:
    """A second app on the same database and Redis, with other settings or config."""
    config = {k: changes.pop(k) for k in list(changes) if k.isupper()}
    settings = dataclasses.replace(Settings.from_env(), **changes)
    return create_app(settings, TESTING=True, **{"OUTBOX_DISPATCH": "none", **config})


# --- request ids ----------------------------------------------------------------------------


def test_request_id_comes_back_and_is_stored_on_the_outbox_events(api: ApiClient, db) -> None:
    owner = api.register()
    deal = api.deal(owner)
    # An endpoint that wants every event: timeline entries then record `activity.created`.
    hook = api.post("/webhooks", user=owner, org=owner.org_id, json={"url": "http://127.0.0.1:9/h"})
    assert hook.status_code == 201, hook.get_json()
    r = api.patch(
        f"/deals/{deal['id']}",
        user=owner,
        org=owner.org_id,
        json={"status": "in_progress"},
        headers={"X-Request-ID": "trace-me-42"},
    )
    assert r.status_code == 200 and r.headers["X-Request-ID"] == "trace-me-42"
    with db.transaction() as s:
        topics = s.scalars(
            select(OutboxEvent.topic).where(
                OutboxEvent.organization_id == owner.org_id,
                OutboxEvent.request_id == "trace-me-42",
            )
        ).all()
    # The change's domain events and timeline entry, and the `activity.created` recorded when
    # that entry was delivered (inline here): it keeps the request id of the change.
    assert sorted(topics) == [
        events.ACTIVITY_CREATED,
        events.DEAL_STATUS_CHANGED,
        events.DEAL_UPDATED,
        timeline.TIMELINE_TOPIC,
    ]


@pytest.mark.parametrize(
    "offered",
    [
        "x" * 129,
        "bad\x7fid",
        "caf\xe9",
        "tab\there",
        "with space",
        "[ERROR] forged",
        'quo"te',
        "semi;colon",
        "<b>",
        "a\\b",
    ],
)
def test_an_unacceptable_request_id_is_replaced(api: ApiClient, offered: str) -> None:
    r = api.get("/health", headers={"X-Request-ID": offered})
    generated = r.headers["X-Request-ID"]
    assert generated != offered and len(generated) == 32 and int(generated, 16) >= 0


@pytest.mark.parametrize(
    "offered", ["trace-42", "0f8fad5b-d9cb-469f-a165-70867728950e", "a.b_c:d@e+f=g/h", "Z"]
)
def test_a_safe_request_id_is_kept(api: ApiClient, offered: str) -> None:
    assert api.get("/health", headers={"X-Request-ID": offered}).headers["X-Request-ID"] == offered


def test_each_request_without_an_id_gets_a_new_one(api: ApiClient) -> None:
    first, second = (api.get("/health").headers["X-Request-ID"] for _ in range(2))
    assert first != second and len(first) == len(second) == 32
    assert api.get("/health", headers={"X-Request-ID": "x" * 128}).headers["X-Request-ID"] == (
        "x" * 128
    )


def test_log_records_carry_the_bound_request_id() -> None:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    token = request_id.bind("abc123")
    try:
        assert logs.RequestIdFilter().filter(record)
    finally:
        request_id.reset(token)
    assert record.request_id == "abc123"
    own = logging.LogRecord("t", logging.INFO, __file__, 1, "x", (), None)
    own.request_id = "from-the-event"
    logs.RequestIdFilter().filter(own)
    assert own.request_id == "from-the-event"  # an event's own id wins over the bound one
    bare = logging.LogRecord("t", logging.INFO, __file__, 1, "x", (), None)
    logs.RequestIdFilter(missing="-").filter(bare)
    assert bare.request_id == "-"


def test_json_lines_hold_the_standard_fields_and_the_extras() -> None:
    spec = dict(logs.config("json")["formatters"]["default"])
    factory = spec.pop("()")
    assert factory == "pythonjsonlogger.json.JsonFormatter"
    from pythonjsonlogger.json import JsonFormatter

    formatter = JsonFormatter(**spec)
    record = logging.LogRecord("crm.x", logging.WARNING, __file__, 1, "event %s", (7,), None)
    record.request_id, record.topic = "rid-1", "timeline.activity"
    line = json.loads(formatter.format(record))
    assert line["message"] == "event 7" and line["level"] == "WARNING"
    assert line["logger"] == "crm.x" and line["request_id"] == "rid-1"
    assert line["topic"] == "timeline.activity" and line["time"].endswith("+00:00")
    with pytest.raises(ValueError):
        logs.config("xml")


def test_tasks_published_during_a_request_carry_its_id() -> None:
    headers: dict[str, str] = {}
    _send_request_id(headers=headers)
    assert headers == {}  # nothing bound: nothing sent
    token = request_id.bind("rid-for-the-task")
    try:
        _send_request_id(headers=headers)
    finally:
        request_id.reset(token)
    assert headers == {"x_request_id": "rid-for-the-task"}


# --- outbox delivery lines and counters ------------------------------------------------------


@pytest.fixture
def quiet_db(test_services) -> Iterator[Database]:
    db = Database(test_services.database_url, pool_size=2)
    yield db
    db.engine.dispose()


def test_each_delivered_or_failed_event_is_logged_with_its_request_id_and_counted(
    api: ApiClient, quiet_db: Database, caplog
) -> None:
    owner = api.register()
    deal = api.deal(owner)
    token = request_id.bind("rid-of-the-change")
    try:
        with quiet_db.transaction() as s:
            for _ in range(2):
                timeline.record_activity(
                    s,
                    organization_id=owner.org_id,
                    deal_id=deal["id"],
                    author_id=owner.id,
                    type=ActivityType.STATUS_CHANGED,
                    payload={"old_status": "new", "new_status": "won"},
                )
    finally:
        request_id.reset(token)

    def broken(_s: Session, _events: Sequence[OutboxEvent]) -> None:
        raise ValueError("handler bug")

    before = parse_registry()
    caplog.set_level(logging.INFO, logger="crm_domain.services.delivery.outbox")
    outbox.deliver_pending(quiet_db, timeline_handled_by(broken), observer=MeteredDelivery())
    failed = [r for r in caplog.records if r.getMessage().startswith("outbox event")]
    assert len(failed) == 2 and {r.levelname for r in failed} == {"ERROR"}
    assert {(r.request_id, r.topic) for r in failed} == {
        ("rid-of-the-change", timeline.TIMELINE_TOPIC)
    }
    caplog.clear()
    outbox.deliver_pending(quiet_db, observer=MeteredDelivery())
    delivered = [
        r
        for r in caplog.records
        if r.getMessage().endswith("delivered (timeline.activity)")
        and r.organization_id == owner.org_id
    ]
    assert len(delivered) == 2
    assert {r.request_id for r in delivered} == {"rid-of-the-change"}
    after = parse_registry()
    topic = {"topic": timeline.TIMELINE_TOPIC}
    failures = "crm_outbox_delivery_failures_total"
    assert value(after, failures, **topic) - value(before, failures, **topic) == 2
    delivered_total = "crm_outbox_delivered_total"
    assert value(after, delivered_total, **topic) - value(before, delivered_total, **topic) >= 2


def parse_registry() -> Samples:
    from prometheus_client import REGISTRY, generate_latest

    return parse(generate_latest(REGISTRY).decode())


# --- request metrics -------------------------------------------------------------------------


def test_requests_are_counted_and_timed_by_route_template(api: ApiClient) -> None:
    owner = api.register()
    deal = api.deal(owner)
    before = scrape(api)
    for _ in range(2):
        assert api.get(f"/deals/{deal['id']}", user=owner, org=owner.org_id).status_code == 200
    assert api.get(f"/deals/{deal['id'] + 10**6}", user=owner, org=owner.org_id).status_code == 404
    assert api.get(f"/no-such-page/{uuid.uuid4().hex}").status_code == 404
    after = scrape(api)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    ok = {"route": DEAL_ROUTE, "method": "GET", "status": "200"}
    assert delta("crm_http_requests_total", **ok, auth="token") == 2
    assert delta("crm_http_request_duration_seconds_count", **ok) == 2
    assert delta("crm_http_request_duration_seconds_sum", **ok) > 0
    assert delta("crm_http_request_duration_seconds_bucket", **ok, le="+Inf") == 2
    # A by-id 404 keeps its template; a path no route matches gets the constant label.
    assert delta("crm_http_requests_total", **{**ok, "status": "404"}, auth="token") == 1
    unmatched = {"route": "unmatched", "method": "GET", "status": "404", "auth": "none"}
    assert delta("crm_http_requests_total", **unmatched) == 1
    routes = {dict(labels).get("route") for _, labels in after}
    assert not any(r and str(deal["id"]) in r for r in routes), routes
    # each scrape counts itself; the requests between them were closed, so are not in flight
    assert value(after, "crm_http_requests_in_flight") == value(
        before, "crm_http_requests_in_flight"
    )


def test_an_unknown_method_is_one_label() -> None:
    app = app_with()
    client = app.test_client()
    before = scrape(ApiClient(client))
    assert client.open("/health", method="BREW", buffered=True).status_code == 405
    after = scrape(ApiClient(client))
    labels = {"route": "unmatched", "method": "other", "status": "405", "auth": "none"}
    assert (
        value(after, "crm_http_requests_total", **labels)
        - value(before, "crm_http_requests_total", **labels)
        == 1
    )


def test_login_attempts_are_counted_by_outcome(api: ApiClient) -> None:
    user = api.register()
    before = scrape(api)
    assert (
        api.post("/auth/login", json={"email": user.email, "password": PASSWORD}).status_code == 200
    )
    for _ in range(2):
        r = api.post("/auth/login", json={"email": user.email, "password": "WrongPassword9"})
        assert r.status_code == 401
    assert api.post("/auth/login", json={"email": user.email}).status_code == 400
    after = scrape(api)
    counts = {
        outcome: value(after, "crm_login_attempts_total", outcome=outcome)
        - value(before, "crm_login_attempts_total", outcome=outcome)
        for outcome in ("success", "failure", "invalid")
    }
    assert counts == {"success": 1, "failure": 2, "invalid": 1}


def test_a_login_refused_by_a_limit_or_crashing_has_its_own_outcome() -> None:
    from werkzeug.exceptions import TooManyRequests

    from crm_api.metrics import count_login

    @count_login
    def limited() -> None:
        raise TooManyRequests()

    @count_login
    def crashing() -> None:
        raise RuntimeError("bug")

    before = parse_registry()
    for view, error in ((limited, TooManyRequests), (crashing, RuntimeError)):
        with pytest.raises(error):
            view()
    after = parse_registry()
    for outcome in ("rate_limited", "error"):
        gained = value(after, "crm_login_attempts_total", outcome=outcome) - value(
            before, "crm_login_attempts_total", outcome=outcome
        )
        assert gained == 1, outcome


def test_429_answers_are_counted_by_route() -> None:
    app = app_with()

    @app.get("/limited")
    def limited() -> None:
        abort(429)

    api = ApiClient(app.test_client())
    before = scrape(api)
    r = api.client.get("/limited", buffered=True)
    assert r.status_code == 429 and error_code(r) == "TOO_MANY_REQUESTS"
    after = scrape(api)
    assert (
        value(after, "crm_rate_limited_total", route="/limited")
        - value(before, "crm_rate_limited_total", route="/limited")
        == 1
    )
    labels = {"route": "/limited", "method": "GET", "status": "429", "auth": "none"}
    assert (
        value(after, "crm_http_requests_total", **labels)
        == value(before, "crm_http_requests_total", **labels) + 1
    )


# --- background gauges -----------------------------------------------------------------------


def test_outbox_gauges_follow_pending_events(db: Database) -> None:
    """An app that never delivers: its events stay pending until the test delivers them."""
    api = ApiClient(app_with(METRICS_CACHE_SECONDS=0).test_client())
    owner = api.register()
    deal = api.deal(owner)
    outbox.deliver_pending(db)
    before = scrape(api)
    assert value(before, "crm_outbox_pending_events") == 0
    assert value(before, "crm_outbox_oldest_pending_age_seconds") == 0
    r = api.patch(f"/deals/{deal['id']}", user=owner, org=owner.org_id, json={"status": "won"})
    assert r.status_code == 200
    time.sleep(0.05)
    during = scrape(api)
    # the timeline entry, deal.updated and deal.status_changed
    assert value(during, "crm_outbox_pending_events") == 3
    assert value(during, "crm_outbox_oldest_pending_age_seconds") > 0
    assert value(during, "crm_metrics_source_up", source="database") == 1
    outbox.deliver_pending(db)
    after = scrape(api)
    assert value(after, "crm_outbox_pending_events") == 0


def test_background_gauges_are_cached_between_scrapes(db: Database) -> None:
    api = ApiClient(app_with(METRICS_CACHE_SECONDS=60).test_client())
    owner = api.register()
    outbox.deliver_pending(db)
    first = value(scrape(api), "crm_outbox_pending_events")
    api.deal(owner)  # records a pending event
    assert value(scrape(api), "crm_outbox_pending_events") == first  # no new query
    outbox.deliver_pending(db)


def test_analytics_staleness_is_the_age_of_the_oldest_refresh(app) -> None:  # app: migrated
    prefix = f"stale-{uuid.uuid4().hex[:8]}"
    app = app_with(redis_key_prefix=prefix, OUTBOX_DISPATCH="inline", METRICS_CACHE_SECONDS=0)
    cache = app.extensions["crm_analytics"]
    api = ApiClient(app.test_client())
    try:
        assert not has(scrape(api), "crm_analytics_staleness_seconds")  # nothing refreshed yet
        owner = api.register()
        before = time.time()
        api.deal(owner)  # delivered inline: the organization's analytics are refreshed
        after = time.time()
        refreshed = cache.client.zscore(cache.refreshed_key, str(owner.org_id))
        assert refreshed is not None and before <= refreshed <= after

        def staleness() -> tuple[float, float, float]:
            """(earliest possible, measured, latest possible), from the scrape's moment."""
            start = time.time()
            measured = value(scrape(api), "crm_analytics_staleness_seconds")
            return start, measured, time.time()

        start, measured, end = staleness()
        assert start - after <= measured <= end - before
        oldest = time.time() - 600
        cache.client.zadd(cache.refreshed_key, {"999999": oldest})
        start, measured, end = staleness()
        assert start - oldest <= measured <= end - oldest
    finally:
        cache.client.delete(cache.refreshed_key)


# --- access to /metrics ----------------------------------------------------------------------


def test_metrics_need_the_token_when_one_is_set() -> None:
    api = ApiClient(app_with(metrics_token="s3cret-metrics-token").test_client())
    assert api.client.get("/metrics").status_code == 401
    r = api.client.get("/metrics", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and error_code(r) == "UNAUTHORIZED"
    # The token is required even on loopback once it is set.
    ok = scrape(api, headers={"Authorization": "Bearer s3cret-metrics-token"})
    assert has(ok, "crm_http_requests_total")


def test_without_a_token_metrics_answer_only_loopback(api: ApiClient) -> None:
    assert api.client.get("/metrics").status_code == 200  # test client: 127.0.0.1 -> localhost
    remote = api.client.get("/metrics", environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert remote.status_code == 403 and error_code(remote) == "FORBIDDEN"
    public_bind = api.client.get("/metrics", environ_overrides={"SERVER_NAME": "0.0.0.0"})
    assert public_bind.status_code == 403


def test_production_refuses_to_start_without_a_metrics_token() -> None:
    with pytest.raises(RuntimeError, match="METRICS_TOKEN"):
        app_with(environment="production", metrics_token="")
    assert app_with(environment="production", metrics_token="t0ken") is not None
