"""Observability on the real processes: gunicorn with two workers, a Celery worker and beat,
each started through scripts/with-metrics-dir, once with LOG_FORMAT=json and once with text.

- one PATCH is followed from its X-Request-ID response header to the access line and to the
  worker's JSON line that wrote its timeline entry, and to the analytics refresh it caused;
- /metrics counts requests served by both gunicorn workers (multiprocess mode) and exports
  the Celery worker's counters;
- the logs of the whole run hold no password and no token."""

from __future__ import annotations

import contextlib
import json
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from .scrape import Samples, parse, value
from .stack import Stack, wait_until

pytestmark = pytest.mark.worker

PASSWORD = "Observability-Secret-Pass-9"


@pytest.fixture(scope="module", params=["json", "text"])
def stack(request, app, test_services, tmp_path_factory) -> Iterator[Stack]:
    fmt = request.param
    s = Stack(
        test_services.database_url,
        tmp_path_factory.mktemp(f"obs-{fmt}"),
        key_prefix=f"{test_services.database_name}-obs-{fmt}",
        web_workers=2,
        extra_env={"LOG_FORMAT": fmt},
    )
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def secrets() -> list[str]:
    """Every password and token the run used (the last test greps the logs for them)."""
    return [PASSWORD]


def fmt(stack: Stack) -> str:
    return stack.env["LOG_FORMAT"]


def json_lines(stack: Stack, service: str) -> list[dict[str, Any]]:
    """The JSON log lines of a service (Celery's startup banner is plain text)."""
    text = (stack.workdir / f"{service}.log").read_text(errors="replace")
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def get(stack: Stack, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any, str]:
    req = urllib.request.Request(stack.base + path, headers=headers or {})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, r.headers, r.read().decode()


def scrape(stack: Stack) -> Samples:
    status, _, body = get(stack, "/metrics")
    assert status == 200
    return parse(body)


def tenant(stack: Stack, secrets: list[str]) -> dict[str, Any]:
    t = stack.tenant(PASSWORD)
    secrets += [t["token"], t["refresh_token"]]
    return t


def patch(
    stack: Stack, t: dict[str, Any], body: dict[str, Any], request_id: str | None = None
) -> str:
    """PATCH the deal (sending `request_id` if given); returns the X-Request-ID answered."""
    headers = {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {t['token']}",
        "X-Organization-Id": str(t["org"]),
    }
    if request_id:
        headers["X-Request-ID"] = request_id
    req = urllib.request.Request(
        f"{stack.base}/api/v1/deals/{t['deal']}",
        data=json.dumps(body).encode(),
        method="PATCH",
        headers=headers,
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200
        return str(r.headers["X-Request-ID"])


def test_one_patch_followed_from_its_header_to_the_worker_line(
    stack: Stack, secrets: list[str]
) -> None:
    if fmt(stack) != "json":
        pytest.skip("followed through the JSON logs")
    t = tenant(stack, secrets)
    # Let the refresh the deal's creation asked for run, so this PATCH schedules its own (the
    # drain that asks for it may come after the creation's answer: wait for the refresh's
    # own line, not only for no refresh being scheduled).
    import redis

    client = redis.Redis.from_url(stack.redis.url)
    scheduled = f"{stack.env['REDIS_KEY_PREFIX']}:analytics:org:{t['org']}:scheduled"

    def creation_refreshed() -> bool:
        return any(
            "crm.analytics.refresh[" in line.get("message", "")
            and "succeeded" in line["message"]
            and line.get("data", {}).get("args") == f"[{t['org']}]"
            for line in json_lines(stack, "worker")
        )

    wait_until(creation_refreshed, 30)
    wait_until(lambda: not client.exists(scheduled), 30)

    rid = patch(stack, t, {"status": "in_progress"})
    assert len(rid) == 32

    def worker_line(topic: str) -> dict[str, Any] | None:
        return next(
            (
                line
                for line in json_lines(stack, "worker")
                if line.get("request_id") == rid and line.get("topic") == topic
            ),
            None,
        )

    timeline = wait_until(lambda: worker_line("timeline.activity"), 30)
    assert timeline["logger"] == "crm_domain.services.delivery.outbox"
    assert timeline["message"].endswith("delivered (timeline.activity)")
    assert timeline["organization_id"] == t["org"] and isinstance(timeline["event_id"], int)
    # The timeline entry it reports is really there.
    status, body = stack.http("GET", f"/deals/{t['deal']}/activities", None, t["token"], t["org"])
    assert status == 200
    assert [a["type"] for a in body["items"]].count("status_changed") == 1

    # The analytics refresh this change asked for ran as a task carrying the same id.
    def refresh_line() -> dict[str, Any] | None:
        return next(
            (
                line
                for line in json_lines(stack, "worker")
                if line.get("request_id") == rid
                and "crm.analytics.refresh[" in line.get("message", "")
                and "succeeded" in line["message"]
            ),
            None,
        )

    assert wait_until(refresh_line, 30)["level"] == "INFO"

    # The API's access line for the same request.
    (access,) = [
        line
        for line in json_lines(stack, "web")
        if line.get("logger") == "gunicorn.access" and line.get("request_id") == rid
    ]
    assert access["route"] == "/api/v1/deals/<int:deal_id>"
    assert access["method"] == "PATCH" and access["status"] == 200
    assert access["path"] == f"/api/v1/deals/{t['deal']}"
    assert access["organization_id"] == t["org"] and isinstance(access["user_id"], int)
    assert isinstance(access["duration_ms"], float) and access["duration_ms"] > 0
    assert access["auth"] == "token" and access["api_key_id"] is None


def test_a_client_request_id_reaches_the_worker(stack: Stack, secrets: list[str]) -> None:
    t = tenant(stack, secrets)
    rid = f"client-{uuid.uuid4().hex[:12]}"
    assert patch(stack, t, {"stage": "proposal"}, request_id=rid) == rid

    def delivered() -> bool:
        text = (stack.workdir / "worker.log").read_text(errors="replace")
        return any(
            rid in line and "delivered (timeline.activity)" in line for line in text.splitlines()
        )

    wait_until(delivered, 30)


def test_metrics_add_up_both_gunicorn_workers(stack: Stack) -> None:
    """Requests until the access log shows both workers answered; a scrape (answered by
    either) counts every one of them."""
    if fmt(stack) != "json":
        pytest.skip("the access log is read as JSON")
    health = {"route": "/health", "method": "GET", "status": "200"}
    first = scrape(stack)
    before = value(first, "crm_http_requests_total", **health, auth="none")
    before_count = value(first, "crm_http_request_duration_seconds_count", **health)
    sent = 0
    lock = threading.Lock()

    def hit() -> None:
        nonlocal sent
        assert get(stack, "/health")[0] == 200
        with lock:
            sent += 1

    def serving_pids() -> set[int]:
        return {
            line["pid"]
            for line in json_lines(stack, "web")
            if line.get("logger") == "gunicorn.access" and line.get("route") == "/health"
        }

    for _ in range(20):
        threads = [threading.Thread(target=hit) for _ in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if len(serving_pids()) >= 2:
            break
    assert len(serving_pids()) >= 2, "one worker answered everything"

    # A request is counted once its response has gone out: the last ones may still be
    # counting when the client has its answer. Each scrape adds up both workers.
    def counted() -> tuple[float, float]:
        after = scrape(stack)
        return (
            value(after, "crm_http_requests_total", **health, auth="none") - before,
            value(after, "crm_http_request_duration_seconds_count", **health) - before_count,
        )

    with contextlib.suppress(TimeoutError):  # the assertion below says what was counted
        wait_until(lambda: counted() == (sent, sent), 10, 0.1)
    assert counted() == (sent, sent)


def test_metrics_export_the_celery_workers_counters(stack: Stack, secrets: list[str]) -> None:
    t = tenant(stack, secrets)
    before = scrape(stack)
    patch(stack, t, {"status": "won"})
    topic = {"topic": "timeline.activity"}

    def delivered() -> Samples | None:
        samples = scrape(stack)
        gained = value(samples, "crm_outbox_delivered_total", **topic) - value(
            before, "crm_outbox_delivered_total", **topic
        )
        return samples if gained >= 1 else None

    after = wait_until(delivered, 30, 0.3)
    drains = {"task": "crm.outbox.drain", "state": "SUCCESS"}
    assert value(after, "crm_worker_task_runs_total", **drains) >= 1
    assert value(after, "crm_outbox_pending_events") >= 0
    assert value(after, "crm_metrics_source_up", source="database") == 1
    assert value(after, "crm_metrics_source_up", source="redis") == 1

    def refreshed() -> bool:
        return value(scrape(stack), "crm_analytics_refresh_duration_seconds_count") >= 1

    wait_until(refreshed, 30, 0.3)


def test_the_logs_of_the_run_hold_no_password_or_token(stack: Stack, secrets: list[str]) -> None:
    """Last in the module: a full run (register, login right and wrong, refresh, use,
    logout, an API key used, mistyped and revoked) on top of the tests above, then every log
    of the stack is searched."""
    t = tenant(stack, secrets)
    status, made = stack.http(
        "POST", "/api-keys", {"name": "s", "scope": "read"}, t["token"], t["org"]
    )
    assert status == 201
    key = made["key"]
    secrets.append(key)
    assert stack.http("GET", "/deals", None, key)[0] == 200
    mistyped = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    secrets.append(mistyped)
    assert stack.http("GET", "/deals", None, mistyped)[0] == 401
    assert stack.http("DELETE", f"/api-keys/{made['id']}", None, t["token"], t["org"])[0] == 204
    # the other gunicorn worker sees the revocation within ACCESS_CHECK_CACHE_SECONDS
    wait_until(lambda: stack.http("GET", "/deals", None, key)[0] == 401, 10, 0.1)
    status, tokens = stack.http("POST", "/auth/login", {"email": t["email"], "password": PASSWORD})
    assert status == 200
    secrets += [tokens["access_token"], tokens["refresh_token"]]
    wrong = "Wrong-Password-Also-Secret-7"
    secrets.append(wrong)
    assert stack.http("POST", "/auth/login", {"email": t["email"], "password": wrong})[0] == 401
    status, rotated = stack.http(
        "POST", "/auth/refresh", {"refresh_token": tokens["refresh_token"]}
    )
    assert status == 200
    secrets += [rotated["access_token"], rotated["refresh_token"]]
    assert stack.http("GET", "/auth/me", None, rotated["access_token"])[0] == 200
    assert stack.http("POST", "/auth/logout", None, rotated["access_token"])[0] == 204
    patch(stack, t, {"status": "lost"})
    wait_until(lambda: "delivered (timeline.activity)" in log_text(stack), 30)

    text = log_text(stack)
    assert "gunicorn.access" in text and "/api/v1/auth/login" in text  # the run was logged
    if fmt(stack) == "json":  # the key's requests are told apart, by the key's id
        assert any(
            line.get("auth") == "key" and line.get("api_key_id") == made["id"]
            for line in json_lines(stack, "web")
        )
    else:
        assert f"auth=key key={made['id']}" in text
    for secret in secrets:
        assert secret not in text
        if secret.count(".") == 2:  # a JWT: not even its signature
            assert secret.rsplit(".", 1)[1] not in text


def log_text(stack: Stack) -> str:
    return "\n".join(
        (stack.workdir / f"{s}.log").read_text(errors="replace") for s in ("web", "worker", "beat")
    )
