"""The deployment's nginx (deploy/nginx.conf, used by docker-compose.yml) in front of a real
gunicorn: it answers its own errors in the API's JSON shape, and it buffers slow clients so
they never reach the application (even a single sync worker stays responsive)."""

from __future__ import annotations

import json
import select
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from crm_domain.embedded import free_port
from scripts.procfile import ROOT, Process, process_env

from .stack import wait_until

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
pytestmark = pytest.mark.skipif(
    not Path(NGINX).exists(), reason="nginx is not installed (.ci/run installs it)"
)


@pytest.fixture(scope="module")
def proxy(test_services, tmp_path_factory) -> Iterator[str]:
    workdir = Path(tmp_path_factory.mktemp("proxy"))
    app_port, proxy_port = free_port(), free_port()
    env = process_env(
        {
            "DATABASE_URL": test_services.database_url,
            "REDIS_URL": test_services.redis_url,
            "REDIS_KEY_PREFIX": f"{test_services.database_name}-proxy",
            "GUNICORN_BIND": f"127.0.0.1:{app_port}",
            # The weakest server there is: one sync worker. nginx alone must shield it.
            "WEB_CONCURRENCY": "1",
            "WEB_THREADS": "1",
            "ACCESS_LOG": "0",
        }
    )
    web = Process("web", env, log_path=workdir / "web.log").start()
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    conf = conf.replace("server web:8000;", f"server 127.0.0.1:{app_port};")
    conf = conf.replace("listen 8080;", f"listen 127.0.0.1:{proxy_port};")
    (workdir / "logs").mkdir()
    (workdir / "nginx.conf").write_text(conf)
    nginx = subprocess.Popen(
        [
            NGINX,
            "-p",
            str(workdir),
            "-c",
            str(workdir / "nginx.conf"),
            "-g",
            f"daemon off; pid {workdir}/nginx.pid; error_log {workdir}/logs/error.log;",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{proxy_port}"
    try:
        wait_until(lambda: _get(base + "/health")[0] == 200, 30, 0.2)
        yield base
    finally:
        nginx.terminate()
        nginx.wait(10)
        web.stop()


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as error:
        return error.code, error.read(), error.headers.get("Content-Type", "")
    except OSError:
        return 0, b"", ""


def _error_code(body: bytes) -> str:
    return str(json.loads(body)["error"]["code"])


def test_the_api_answers_through_the_proxy(proxy: str) -> None:
    status, body, _ = _get(proxy + "/api/v1/contacts")
    assert status == 401 and _error_code(body) == "UNAUTHORIZED"


def test_a_too_long_request_line_is_a_json_414(proxy: str) -> None:
    status, body, content_type = _get(proxy + "/api/v1/contacts?q=" + "x" * 20_000)
    assert status == 414 and content_type.startswith("application/json")
    assert _error_code(body) == "URI_TOO_LONG"


def test_too_large_headers_are_a_json_400(proxy: str) -> None:
    status, body, content_type = _get(proxy + "/health", {"X-Big": "y" * 16_000})
    assert status == 400 and content_type.startswith("application/json")
    assert _error_code(body) == "BAD_REQUEST"


def test_a_too_large_body_is_a_json_413(proxy: str) -> None:
    host, port = proxy.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /api/v1/contacts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 5000000\r\nConnection: close\r\n\r\n"
        )
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413") and _error_code(body) == "PAYLOAD_TOO_LARGE"


def _unanswered(sock: socket.socket) -> bool:
    """Nothing has come back on `sock` yet: no answer, and not closed."""
    readable, _, _ = select.select([sock], [], [], 0)
    return not readable


def test_slow_bodies_never_reach_a_single_sync_worker(proxy: str) -> None:
    """Five clients stall mid-body; the one sync worker answers /health while all five are
    still waiting. Had nginx passed a stalled body on, the worker would be stuck reading it
    and /health would come only after that client got its 408 (or not at all)."""
    host, port = proxy.removeprefix("http://").split(":")
    slow = []
    for _ in range(5):
        sock = socket.create_connection((host, int(port)))
        sock.sendall(
            b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n" + b'{"email": '
        )
        slow.append(sock)
    try:
        time.sleep(0.5)  # let every one of them reach the proxy
        for _ in range(5):
            assert _get(proxy + "/health")[0] == 200
        assert all(_unanswered(sock) for sock in slow)  # ...all still stalled meanwhile
    finally:
        for sock in slow:
            sock.close()
