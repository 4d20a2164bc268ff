"""Requests through reverse proxies the API does not count (TRUSTED_PROXIES): a loud warning in
the log and in /ready, and never a loopback client for /metrics. In-process, on apps of their
own with a Redis namespace each (the warning is shared through Redis); tests/test_proxy.py runs
the real nginx."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from crm_api import create_app
from crm_domain.settings import Settings

from .api import ApiClient, error_code


@pytest.fixture
def build(app, test_services) -> Iterator[Any]:  # `app`: the database is migrated
    built: list[Flask] = []

    def make(trusted: int) -> ApiClient:
        settings = dataclasses.replace(
            Settings.from_env(),
            trusted_proxies=trusted,
            metrics_token="",
            redis_key_prefix=f"{test_services.database_name}-proxies-{uuid.uuid4().hex[:8]}",
        )
        built.append(create_app(settings, OUTBOX_DISPATCH="none", TESTING=True))
        return ApiClient(built[-1].test_client())

    yield make
    for one in built:
        one.extensions["crm_db"].dispose()


def _warnings(api: ApiClient) -> list[dict[str, Any]]:
    r = api.get("/ready")
    assert r.status_code == 200, r.get_json()  # a warning, not unreadiness
    return r.get_json()["warnings"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("trusted", "forwarded_for", "warned"),
    [
        (0, None, False),
        (0, "203.0.113.7", True),  # a proxy in front that the API does not count
        (1, "203.0.113.7", False),
        (1, "198.51.100.1, 203.0.113.7", True),  # one proxy more than counted
        (2, "198.51.100.1, 203.0.113.7", False),
    ],
)
def test_a_request_through_an_untrusted_proxy_is_reported_in_ready_and_the_log(
    build, caplog: pytest.LogCaptureFixture, trusted: int, forwarded_for: str | None, warned: bool
) -> None:
    api = build(trusted)
    assert _warnings(api) == []
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    with caplog.at_level(logging.WARNING, logger="crm_api.proxies"):
        assert api.get("/health", headers=headers).status_code == 200
    warnings = _warnings(api)
    records = [r for r in caplog.records if r.name == "crm_api.proxies"]
    if not warned:
        assert warnings == [] and records == []
        return
    [warning] = warnings
    assert warning["code"] == "UNTRUSTED_PROXY"
    assert (
        warning["trusted_proxies"] == trusted
        and f"TRUSTED_PROXIES={trusted}" in (warning["message"])
    )
    assert warning["forwarded_hops"] == len(forwarded_for.split(","))  # type: ignore[union-attr]
    assert "203.0.113.7" not in str(warning)  # /ready is public: no addresses
    [record] = records
    assert record.levelname == "WARNING" and "TRUSTED_PROXIES" in record.getMessage()


def test_a_proxy_header_alone_counts_as_a_proxy(build) -> None:
    api = build(0)
    assert api.get("/health", headers={"X-Real-IP": "203.0.113.7"}).status_code == 200
    assert [w["code"] for w in _warnings(api)] == ["UNTRUSTED_PROXY"]


@pytest.mark.parametrize("trusted", [0, 1])
def test_metrics_never_count_a_proxied_request_as_loopback(build, trusted: int) -> None:
    """A proxy on the same host connects from loopback: without a token, /metrics must still
    refuse everyone it forwards, whatever TRUSTED_PROXIES says and whatever they claim."""
    api = build(trusted)
    assert api.client.get("/metrics").status_code == 200  # loopback itself, no proxy
    for headers in (
        {"X-Forwarded-For": "203.0.113.7"},
        {"X-Forwarded-For": "127.0.0.1"},
        {"X-Real-IP": "127.0.0.1"},
        {"Forwarded": "for=127.0.0.1"},
    ):
        r = api.client.get("/metrics", headers=headers)
        assert r.status_code == 403 and error_code(r) == "FORBIDDEN", headers
    # nor a remote client that claims to be loopback through a trusted proxy's header
    r = api.client.get(
        "/metrics",
        headers={"X-Forwarded-For": "127.0.0.1"},
        environ_base={"REMOTE_ADDR": "10.1.2.3"},
    )
    assert r.status_code == 403
