"""Slow clients against the default deployment (gunicorn with gunicorn.conf.py as shipped):
a few connections that stop sending mid-body must not stall the server, and each of them is
answered 408 once its body read times out."""

from __future__ import annotations

import json
import select
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from crm_domain.embedded import free_port
from scripts.procfile import Process, process_env

from .stack import wait_until

BODY_READ_TIMEOUT = 3.0


@pytest.fixture(scope="module")
def server(test_services, tmp_path_factory) -> Iterator[str]:
    port = free_port()
    env = {
        **process_env(),
        "DATABASE_URL": test_services.database_url,
        "REDIS_URL": test_services.redis_url,
        "REDIS_KEY_PREFIX": f"{test_services.database_name}-slow",
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "BODY_READ_TIMEOUT": str(BODY_READ_TIMEOUT),
        "ACCESS_LOG": "0",
    }
    for knob in ("WEB_CONCURRENCY", "WEB_THREADS", "WEB_WORKER_CLASS"):
        env.pop(knob, None)  # the defaults are what is under test
    web = Process("web", env, log_path=Path(tmp_path_factory.mktemp("slow")) / "web.log")
    web.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _health(base) is not None, 30, 0.2)
        yield base
    finally:
        web.stop()


def _health(base: str) -> float | None:
    """Seconds /health took, or None if it failed."""
    start = time.monotonic()
    try:
        with urllib.request.urlopen(base + "/health", timeout=5) as r:
            r.read()
            return time.monotonic() - start if r.status == 200 else None
    except OSError:
        return None


def _stalled_body(base: str) -> socket.socket:
    """A POST that announces 1,000 bytes of body, sends 10 and then nothing."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n" + b'{"email": '
    )
    return sock


def _answer(sock: socket.socket) -> tuple[bytes, float]:
    """The server's whole answer on `sock`, and how long it took to come."""
    sock.settimeout(BODY_READ_TIMEOUT + 10)
    start = time.monotonic()
    raw = b""
    while b"\r\n\r\n" not in raw or not raw.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        raw += chunk
    return raw, time.monotonic() - start


def test_five_stalled_bodies_do_not_stall_the_server(server: str) -> None:
    """/health is answered while all five stalled bodies still hold their threads: none of
    them has had its 408 yet (a server they stalled would answer /health only after one of
    them timed out and freed a thread)."""
    slow = [_stalled_body(server) for _ in range(5)]
    try:
        time.sleep(0.5)  # let every one of them reach a server thread
        for _ in range(5):
            assert _health(server) is not None
        readable, _, _ = select.select(slow, [], [], 0)
        assert readable == [], "a stalled client was answered before /health was"
    finally:
        for s in slow:
            s.close()


def test_a_stalled_body_is_answered_408_after_the_read_timeout(server: str) -> None:
    sock = _stalled_body(server)
    try:
        raw, waited = _answer(sock)
    finally:
        sock.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), head
    assert json.loads(body)["error"]["code"] == "REQUEST_TIMEOUT"
    assert BODY_READ_TIMEOUT - 0.5 <= waited < BODY_READ_TIMEOUT + 5


def test_a_stalled_large_upload_is_answered_408_too(app, server: str) -> None:
    """POST /imports takes bodies above the usual 1 MiB; they are streamed, not read ahead,
    and each read still waits at most BODY_READ_TIMEOUT."""
    request = urllib.request.Request(
        server + "/api/v1/auth/register",
        data=json.dumps(
            {
                "email": f"slow-{time.monotonic_ns()}@example.com",
                "password": "StrongPassword123",
                "name": "Slow",
                "organization_name": "Slow Inc",
            }
        ).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        body = json.loads(r.read())
    host, port = server.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    try:
        head = (
            "POST /api/v1/imports HTTP/1.1\r\nHost: x\r\n"
            "Content-Type: multipart/form-data; boundary=b0undary\r\n"
            f"Authorization: Bearer {body['access_token']}\r\n"
            f"X-Organization-Id: {body['organization']['id']}\r\n"
            "Content-Length: 3000000\r\n\r\n"
        )
        part = (
            '--b0undary\r\nContent-Disposition: form-data; name="file"; filename="a.csv"\r\n'
            "Content-Type: text/csv\r\n\r\nname\r\n"
        )
        sock.sendall(head.encode() + part.encode() + b"Ann\r\n" * 300_000)  # 1.5 MB, then nothing
        raw, waited = _answer(sock)
    finally:
        sock.close()
    head_line, _, answer = raw.partition(b"\r\n\r\n")
    assert head_line.startswith(b"HTTP/1.1 408"), raw[:600]
    assert json.loads(answer)["error"]["code"] == "REQUEST_TIMEOUT"
    assert BODY_READ_TIMEOUT - 0.5 <= waited < BODY_READ_TIMEOUT + 5
