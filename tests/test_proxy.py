"""The deployment's nginx (deploy/nginx.conf, used by docker-compose.yml) in front of a real
gunicorn: it answers its own errors in the API's JSON shape, and it buffers slow clients so
they never reach the application (even a single sync worker stays responsive). With compose's
TRUSTED_PROXIES every client of nginx has rate limits of its own (clients speak from loopback
addresses of their own), /metrics never takes nginx for a loopback client, a client's safe
X-Request-ID is kept, and a file of exactly the upload limit gets through; an API that does not
count nginx (TRUSTED_PROXIES=0) says so in /ready and its log."""

from __future__ import annotations

import http.client
import json
import select
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
import yaml

from crm_domain import request_id
from crm_domain.embedded import free_port
from scripts.procfile import ROOT, Process, process_env

from .api import PASSWORD
from .stack import wait_until

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
pytestmark = pytest.mark.skipif(
    not Path(NGINX).exists(), reason="nginx is not installed (.ci/run installs it)"
)


@dataclass(frozen=True)
class Deployment:
    base: str  # through nginx
    direct: str  # gunicorn itself
    workdir: Path


def compose_web_environment() -> dict[str, str]:
    """The web service's environment in docker-compose.yml (the shared block included)."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return {k: str(v) for k, v in compose["services"]["web"]["environment"].items()}


@contextmanager
def nginx_in_front(
    test_services: Any, workdir: Path, name: str, trusted_proxies: str
) -> Iterator[Deployment]:
    app_port, proxy_port = free_port(), free_port()
    env = process_env(
        {
            "DATABASE_URL": test_services.database_url,
            "REDIS_URL": test_services.redis_url,
            "REDIS_KEY_PREFIX": f"{test_services.database_name}-{name}",
            "GUNICORN_BIND": f"127.0.0.1:{app_port}",
            # The weakest server there is: one sync worker. nginx alone must shield it.
            "WEB_CONCURRENCY": "1",
            "WEB_THREADS": "1",
            "ACCESS_LOG": "0",
            "RATELIMIT_ENABLED": "true",
            "TRUSTED_PROXIES": trusted_proxies,
        }
    )
    env.pop("METRICS_TOKEN", None)
    web = Process("web", env, log_path=workdir / "web.log").start()
    nginx = _start_nginx(workdir, app_port, proxy_port)
    deployment = Deployment(
        f"http://127.0.0.1:{proxy_port}", f"http://127.0.0.1:{app_port}", workdir
    )
    try:
        wait_until(lambda: _get(deployment.direct + "/health")[0] == 200, 30, 0.2)
        yield deployment
    finally:
        nginx.terminate()
        nginx.wait(10)
        web.stop()


def _start_nginx(workdir: Path, app_port: int, proxy_port: int) -> subprocess.Popen[bytes]:
    """deploy/nginx.conf in front of 127.0.0.1:app_port, listening (no request through it
    yet: that would be a proxied one)."""
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
    wait_until(lambda: _accepts(("127.0.0.1", proxy_port)), 30, 0.2)
    return nginx


def _accepts(address: tuple[str, int]) -> bool:
    try:
        socket.create_connection(address, timeout=1).close()
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def deployment(app, test_services, tmp_path_factory) -> Iterator[Deployment]:
    """nginx and the API as docker-compose.yml sets them up (its TRUSTED_PROXIES). `app`:
    the database is migrated."""
    trusted = compose_web_environment().get("TRUSTED_PROXIES", "0")
    workdir = Path(tmp_path_factory.mktemp("proxy"))
    with nginx_in_front(test_services, workdir, "proxy", trusted) as deployed:
        yield deployed


@pytest.fixture(scope="module")
def proxy(deployment: Deployment) -> str:
    return deployment.base


@pytest.fixture(scope="module")
def untrusting(app, test_services, tmp_path_factory) -> Iterator[Deployment]:
    """nginx in front of an API that does not count it (TRUSTED_PROXIES=0)."""
    workdir = Path(tmp_path_factory.mktemp("untrusting"))
    with nginx_in_front(test_services, workdir, "untrusting", "0") as deployed:
        yield deployed


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, str]:
    status, body, answer = _request(url, headers)
    return status, body, answer.get("Content-Type", "")


def _request(
    url: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes, Message | dict[str, str]]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as error:
        return error.code, error.read(), error.headers
    except OSError:
        return 0, b"", {}


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


def test_an_api_that_is_down_is_a_json_502_with_retry_after(tmp_path: Path) -> None:
    proxy_port = free_port()
    nginx = _start_nginx(tmp_path, free_port(), proxy_port)  # nothing listens on the API's
    try:
        status, body, headers = _request(f"http://127.0.0.1:{proxy_port}/api/v1/contacts")
    finally:
        nginx.terminate()
        nginx.wait(10)
    assert status == 502 and headers.get("Content-Type", "").startswith("application/json")
    assert _error_code(body) == "SERVICE_UNAVAILABLE"
    assert headers.get("Retry-After") == "5"


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


def test_the_clients_request_id_is_kept_when_the_api_would_accept_it(proxy: str) -> None:
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    assert f'"~^{request_id.ACCEPTED}$"' in conf  # nginx and the API accept the same ids
    _, _, answer = _request(proxy + "/health", {"X-Request-ID": "trace-42"})
    assert answer["X-Request-ID"] == "trace-42"
    for offered in ("[ERROR] forged line", "x" * 129):
        _, _, answer = _request(proxy + "/health", {"X-Request-ID": offered})
        replaced = answer["X-Request-ID"]
        assert replaced != offered and len(replaced) == 32 and int(replaced, 16) >= 0
    _, _, answer = _request(proxy + "/health")
    assert len(answer["X-Request-ID"]) == 32


# --- client addresses behind the proxy (TRUSTED_PROXIES) ---------------------------------------

ATTACKER, OWNER = (
    "127.0.0.2",
    "127.0.0.3",
)  # loopback addresses of their own: nginx tells them apart


def _call(
    base: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    source: str = "127.0.0.1",
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> tuple[int, Any]:
    """One request from the client address `source`; (status, JSON body or None)."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30, source_address=(source, 0))
    try:
        data = raw if raw is not None else json.dumps(body).encode() if body is not None else None
        sent = {"Content-Type": "application/json", **(headers or {})}
        conn.request(method, path, body=data, headers=sent)
        answer = conn.getresponse()
        content = answer.read()
        return answer.status, json.loads(content) if content.startswith(b"{") else None
    finally:
        conn.close()


def _register(base: str, source: str) -> dict[str, Any]:
    email = f"proxy-{uuid.uuid4().hex[:12]}@example.com"
    body = {
        "email": email,
        "password": PASSWORD,
        "name": "Owner",
        "organization_name": "Behind nginx",
    }
    status, answer = _call(base, "POST", "/api/v1/auth/register", body, source=source)
    assert status == 201, answer
    return {**answer, "email": email}


def test_compose_trusts_the_one_proxy_it_puts_in_front() -> None:
    assert compose_web_environment()["TRUSTED_PROXIES"] == "1"


def test_one_clients_bad_logins_do_not_limit_another_client(deployment: Deployment) -> None:
    """31 bad logins from one address (each with an X-Forwarded-For of its choosing: nginx
    replaces it) run into that address's limit; another address's correct login and refresh
    go through."""
    owner = _register(deployment.base, OWNER)
    statuses = [
        _call(
            deployment.base,
            "POST",
            "/api/v1/auth/login",
            {"email": f"nobody-{i}@example.com", "password": "wrong-password"},
            source=ATTACKER,
            headers={"X-Forwarded-For": f"198.51.100.{i}"},
        )[0]
        for i in range(31)
    ]
    assert statuses == [401] * 30 + [429]  # the limits are on, per address
    login = {"email": owner["email"], "password": PASSWORD}
    status, tokens = _call(deployment.base, "POST", "/api/v1/auth/login", login, source=OWNER)
    assert status == 200, tokens
    refresh = {"refresh_token": owner["refresh_token"]}
    status, answer = _call(deployment.base, "POST", "/api/v1/auth/refresh", refresh, source=OWNER)
    assert status == 200, answer
    # nginx replaced the attacker's X-Forwarded-For: the API saw exactly the hops it trusts
    status, ready = _call(deployment.direct, "GET", "/ready")
    assert status == 200 and ready["warnings"] == []


def test_metrics_answer_loopback_but_never_through_the_proxy(deployment: Deployment) -> None:
    assert _call(deployment.direct, "GET", "/metrics")[0] == 200  # no token: loopback only
    status, answer = _call(deployment.base, "GET", "/metrics")
    assert status == 403 and answer["error"]["code"] == "FORBIDDEN"


def test_an_untrusted_proxy_is_reported_in_ready_and_the_log(untrusting: Deployment) -> None:
    status, ready = _call(untrusting.direct, "GET", "/ready")
    assert status == 200 and ready["warnings"] == []  # direct requests are not proxied
    assert _call(untrusting.base, "GET", "/health")[0] == 200
    status, ready = _call(untrusting.direct, "GET", "/ready")
    assert status == 200 and [w["code"] for w in ready["warnings"]] == ["UNTRUSTED_PROXY"]
    assert "TRUSTED_PROXIES=0" in ready["warnings"][0]["message"]
    wait_until(lambda: "TRUSTED_PROXIES=0" in (untrusting.workdir / "web.log").read_text(), 10)
    # and /metrics, without a token, does not take nginx's loopback address for a client's
    status, answer = _call(untrusting.base, "GET", "/metrics")
    assert status == 403 and answer["error"]["code"] == "FORBIDDEN"


def test_a_file_of_exactly_the_upload_limit_passes_the_proxy(deployment: Deployment) -> None:
    owner = _register(deployment.base, OWNER)
    limit = 20 * 1024 * 1024  # IMPORT_MAX_BYTES's default, which deploy/nginx.conf allows
    header, line = b"name,email\r\n", b"Someone,\r\n"
    rows = (limit - len(header)) // len(line)
    padded = b"S" * ((limit - len(header)) % len(line) + len(line) - 3) + b",\r\n"
    content = header + line * (rows - 1) + padded
    assert len(content) == limit
    boundary = uuid.uuid4().hex
    disposition = f"--{boundary}\r\nContent-Disposition: form-data; "
    body = b"".join(
        [
            f'{disposition}name="kind"\r\n\r\ncontacts\r\n'.encode(),
            f'{disposition}name="file"; filename="c.csv"\r\n'.encode(),
            b"Content-Type: text/csv\r\n\r\n",
            content,
            f"\r\n--{boundary}--\r\n".encode(),
        ]
    )
    status, answer = _call(
        deployment.base,
        "POST",
        "/api/v1/imports",
        raw=body,
        source=OWNER,
        headers={
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Authorization": f"Bearer {owner['access_token']}",
            "X-Organization-Id": str(owner["organization"]["id"]),
        },
    )
    assert status == 202, answer
    assert answer["rows_total"] == rows
