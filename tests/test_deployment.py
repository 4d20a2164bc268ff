"""docker-compose.yml and the Dockerfile: production mode without known secrets, the Procfile's
processes and commands, what is published, health checks, time to stop, the locked install."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from werkzeug.serving import make_server

from crm_api import create_app
from crm_domain.embedded import free_port
from crm_domain.settings import Settings
from scripts.procfile import read_procfile

ROOT = Path(__file__).resolve().parent.parent


# compose's "${VAR:?message}": an error, not a default, when VAR is unset or empty
def _required(variable: str) -> str:
    return r"\$\{" + variable + r":\?[^}]+\}"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _app_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run this project's image (they are built from the Dockerfile)."""
    return {name: svc for name, svc in compose["services"].items() if "build" in svc}


def test_app_services_run_in_production_mode(compose: dict[str, Any]) -> None:
    apps = _app_services(compose)
    assert {"migrate", "web", "worker", "beat", "flower"} <= set(apps)
    for name, svc in apps.items():
        assert svc["environment"].get("CRM_ENV") == "production", name


@pytest.mark.parametrize("variable", ["SECRET_KEY", "FLOWER_BASIC_AUTH"])
def test_compose_refuses_to_start_without_real_credentials(
    compose: dict[str, Any], variable: str
) -> None:
    for name, svc in _app_services(compose).items():
        value = svc["environment"][variable]
        assert re.fullmatch(_required(variable), value), (name, value)  # no fallback value
    # and no literal secret hides anywhere else in the file
    text = (ROOT / "docker-compose.yml").read_text()
    assert not re.search(r"\$\{" + variable + r":?-", text)


# --- the same processes as the Procfile -------------------------------------------------------

# Paths and addresses inside a container keep the Procfile's defaults (a .env written for
# `make run` must not move them); every other variable of a Procfile line is a knob that
# compose passes through from its environment, as a PaaS does.
CONTAINER_FIXED = frozenset({"BEAT_SCHEDULE_FILE", "FLOWER_ADDRESS", "FLOWER_PORT"})
# The Procfile's `release` (migrations before a deploy) is compose's one-shot `migrate`.
COMPOSE_NAMES = {"release": "migrate"}


def _compose_tool() -> list[str] | None:
    """`docker compose` (v2) or `docker-compose`: both parse `config` without a daemon."""
    candidates = [["docker", "compose"], ["docker-compose"]]
    for tool in candidates:
        if shutil.which(tool[0]) is None:
            continue
        probe = subprocess.run([*tool, "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return tool
    if os.environ.get("TEST_REQUIRE_COMPOSE"):  # CI (.ci/run) installs one
        pytest.fail("no compose tool (docker compose / docker-compose) is installed")
    pytest.skip("no compose tool (docker compose / docker-compose) is installed")


def _compose_config(environment: dict[str, str], tmp_path: Path) -> dict[str, Any]:
    """docker-compose.yml as compose itself reads it (interpolated, validated)."""
    tool = _compose_tool()
    assert tool is not None
    no_dotenv = tmp_path / "empty.env"  # not the developer's .env
    no_dotenv.write_text("")
    done = subprocess.run(
        [*tool, "--env-file", str(no_dotenv), "-f", str(ROOT / "docker-compose.yml"), "config"],
        cwd=ROOT,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), **environment},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return dict(yaml.safe_load(done.stdout))


def _expand(line: str, environment: dict[str, str]) -> list[str]:
    """A Procfile line's argv as the launcher's `sh -c 'exec …'` makes it."""
    done = subprocess.run(
        ["sh", "-c", f"printf '%s\\0' {line}"],
        env={"PATH": os.environ["PATH"], **environment},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.split("\0")[:-1]


def test_compose_runs_the_procfiles_processes_with_its_commands(tmp_path: Path) -> None:
    procfile = read_procfile()
    knobs = {
        name
        for line in procfile.values()
        for name in re.findall(r"\$\{([A-Z][A-Z0-9_]*)", line)
        if name not in CONTAINER_FIXED
    }
    assert {"WORKER_CONCURRENCY", "WEBHOOK_CONCURRENCY"} <= knobs
    # every knob set to a value of its own, so a hard-coded value in compose shows
    environment = {name: str(7 + i) for i, name in enumerate(sorted(knobs))}
    secrets = {"SECRET_KEY": "k" * 32, "FLOWER_BASIC_AUTH": "u:p", "METRICS_TOKEN": "t"}
    config = _compose_config({**environment, **secrets}, tmp_path)
    apps = {name: svc for name, svc in config["services"].items() if "build" in svc}
    assert set(apps) == {COMPOSE_NAMES.get(name, name) for name in procfile}
    for name, line in procfile.items():
        service = COMPOSE_NAMES.get(name, name)
        assert apps[service]["command"] == _expand(line, environment), service


# --- what is published, health, shutdown ------------------------------------------------------


def test_flower_is_published_on_loopback_only(compose: dict[str, Any]) -> None:
    """Flower's /metrics asks for no password (README: its port stays private)."""
    ports = compose["services"]["flower"].get("ports", [])
    assert ports, "flower publishes no port"
    for port in ports:
        assert str(port).startswith("127.0.0.1:"), port
    for name, svc in _app_services(compose).items():  # the API goes through the proxy
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)


HEALTHCHECK = ["python", "scripts/healthcheck.py"]


def test_web_is_checked_on_ready_and_the_proxy_waits_for_it(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["web"]["healthcheck"]["test"] == ["CMD", *HEALTHCHECK]
    assert services["proxy"]["depends_on"]["web"] == {"condition": "service_healthy"}
    # the other containers of the image serve no /ready: the image's check is off for them
    for name, svc in _app_services(compose).items():
        if name != "web":
            assert svc["healthcheck"] == {"disable": True}, name


def _dockerfile() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


def test_the_image_checks_its_health_on_ready() -> None:
    lines = _dockerfile()
    (check,) = [line for line in lines if line.startswith("HEALTHCHECK")]
    assert json.loads(check.partition(" CMD ")[2]) == HEALTHCHECK
    copied = " ".join(line for line in lines if line.startswith("COPY"))
    assert "scripts/healthcheck.py" in copied


def test_the_image_installs_the_locked_versions_then_the_project_alone() -> None:
    installs = [line for line in _dockerfile() if line.startswith("RUN pip install")]
    assert len(installs) == 2, installs
    locked, project = (shlex.split(line) for line in installs)
    assert "--require-hashes" in locked and "requirements/app.txt" in locked
    assert locked[locked.index("-r") + 1] == "requirements/app.txt"
    assert "--no-deps" in project and project[-1] == "."


@contextmanager
def _serve(app: Any) -> Iterator[int]:
    """The app on a real HTTP server (werkzeug, threaded) on a free loopback port."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.port
    finally:
        server.shutdown()
        thread.join(10)


def _healthcheck(port: int) -> int:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "healthcheck.py")],
        env={**os.environ, "PORT": str(port)},
        capture_output=True,
        timeout=30,
    )
    return done.returncode


def test_the_healthcheck_passes_only_when_ready(app: Any, test_services: Any) -> None:
    with _serve(app) as port:
        assert _healthcheck(port) == 0
    unready = create_app(  # the same database, a Redis that is not there: /ready is 503
        Settings(
            database_url=test_services.database_url,
            redis_url=f"redis://127.0.0.1:{free_port()}/0",
            secret_key=os.environ["SECRET_KEY"],
        ),
        OUTBOX_DISPATCH="none",
    )
    with _serve(unready) as port:
        assert _healthcheck(port) == 1
    unready.extensions["crm_db"].engine.dispose()
    assert _healthcheck(free_port()) == 1  # nothing listens


def _seconds(duration: str) -> float:
    """A compose duration: `1m30s`, `310s`."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}
    return sum(float(n) * scale[u] for n, u in parts)


def _longest_task(queues: set[str]) -> float:
    """The longest hard time limit of the tasks routed to `queues` (crm_worker.app)."""
    import crm_worker.tasks  # noqa: F401  (registers every task)
    from crm_worker.app import QUEUE_ROUTES, celery_app

    limits = []
    for name, task in celery_app.tasks.items():
        if name.startswith("celery."):
            continue
        queue = next(
            (q for pattern, q in QUEUE_ROUTES.items() if fnmatch.fnmatch(name, pattern)),
            celery_app.conf.task_default_queue,
        )
        if queue in queues:
            limits.append(task.time_limit or celery_app.conf.task_time_limit)
    assert limits, queues
    return float(max(limits))


def test_workers_get_time_to_finish_their_tasks_on_stop(compose: dict[str, Any]) -> None:
    """A warm shutdown waits for the running tasks: compose must not SIGKILL sooner."""
    from crm_worker.webhook_sender import RUN_BUDGET_SECONDS, Sender, lease_seconds

    workers = {
        name: svc for name, svc in _app_services(compose).items() if "worker" in svc["command"]
    }
    assert set(workers) == {"worker", "worker-bulk", "webhooks", "importer"}
    for name, svc in workers.items():
        command = " ".join(svc["command"])
        (queues,) = re.findall(r"--queues=(\S+)", command)
        if "--pool=threads" in command:
            # No time limits in a thread pool: a send run ends within its budget plus one
            # attempt (its lease covers the attempt's deadline, DNS and the database).
            sender = Sender(timeout=Settings().webhook_timeout_seconds, allow_private=False)
            needed = RUN_BUDGET_SECONDS + lease_seconds(sender)
            sender.close()
        else:
            needed = _longest_task(set(queues.split(",")))
        assert _seconds(svc["stop_grace_period"]) > needed, (name, needed)


def test_web_gets_time_to_finish_its_requests_on_stop(compose: dict[str, Any]) -> None:
    """gunicorn's graceful shutdown lets requests in flight finish for graceful_timeout:
    compose must not SIGKILL sooner (its default is 10 s)."""
    config = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    web = _app_services(compose)["web"]
    assert _seconds(web["stop_grace_period"]) > config["graceful_timeout"]
