"""What a run stands on: PostgreSQL and Redis (given or embedded), the bench database, the
Procfile's processes (scripts/procfile.py) and the harness's own database connection."""

from __future__ import annotations

import http.client
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from bench.config import DATA, DB_NAME, KEY_PREFIX, ROOT, SECRET_KEY, log
from crm_domain.embedded import free_port
from scripts.procfile import Process, process_env, read_procfile, stop_all

# The Procfile entries a run starts (webhooks and importer have no work in the workload).
PROCESSES = ("web", "worker", "worker-bulk", "beat")
LOG_DIR = DATA / "logs"


def psycopg_url(sqlalchemy_url: str) -> str:
    """A libpq URL (what psycopg.connect takes) from a SQLAlchemy one."""
    from sqlalchemy.engine import make_url

    url = make_url(sqlalchemy_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


@dataclass
class Infra:
    database_url: str  # SQLAlchemy URL of crm_bench (what the app gets)
    admin_url: str  # libpq URL of the server's maintenance database
    redis_url: str
    embedded: list[Any] = field(default_factory=list)

    @property
    def db_conninfo(self) -> str:
        return psycopg_url(self.database_url)

    def stop(self) -> None:
        for service in reversed(self.embedded):
            try:
                service.stop()
            except Exception as exc:  # best effort at shutdown
                log(f"could not stop {type(service).__name__}: {exc}")
        self.embedded.clear()


def start_infra(database_url: str | None, redis_url: str | None) -> Infra:
    """The given servers, or embedded ones under .data/bench/."""
    from sqlalchemy.engine import make_url

    from crm_domain.settings import normalize_db_url

    embedded: list[Any] = []
    if database_url:
        base = make_url(normalize_db_url(database_url))
        log(f"PostgreSQL: {base.render_as_string(hide_password=True)} (database {DB_NAME})")
    else:
        from crm_domain.embedded import EmbeddedPostgres

        log("BENCH_DATABASE_URL not set: starting embedded PostgreSQL in .data/bench/pg")
        pg = EmbeddedPostgres(DATA / "pg")
        embedded.append(pg)
        base = make_url(pg.url("postgres"))
    admin_db = base.database if base.database and base.database != DB_NAME else "postgres"
    admin_url = psycopg_url(base.set(database=admin_db).render_as_string(hide_password=False))
    bench_url = base.set(database=DB_NAME).render_as_string(hide_password=False)
    if redis_url:
        log(f"Redis: {redis_url} (key prefix {KEY_PREFIX})")
    else:
        from crm_domain.embedded import EmbeddedRedis

        log("BENCH_REDIS_URL not set: starting embedded Redis in .data/bench/redis")
        rd = EmbeddedRedis(DATA / "redis")
        embedded.append(rd)
        redis_url = rd.url(0)
    return Infra(bench_url, admin_url, redis_url, embedded)


def prepare_database(infra: Infra, *, drop: bool) -> None:
    """(Re)create crm_bench and migrate it."""
    import psycopg

    with psycopg.connect(infra.admin_url, autocommit=True) as conn:
        if drop:
            log(f"dropping database {DB_NAME}")
            conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,)).fetchone():
            log(f"creating database {DB_NAME}")
            conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    log("alembic upgrade head")
    env = process_env({"DATABASE_URL": infra.database_url, "SECRET_KEY": SECRET_KEY})
    done = subprocess.run(
        ["alembic", "upgrade", "head"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if done.returncode:
        raise RuntimeError(f"alembic upgrade head failed:\n{done.stdout}{done.stderr}")
    applied = [
        line.split("Running upgrade", 1)[1].strip()
        for line in done.stderr.splitlines()
        if "Running upgrade" in line
    ]
    if applied:
        log(f"  applied: {'; '.join(applied)}")


@contextmanager
def own_database(infra: Infra, name: str, **env: str) -> Iterator[str]:
    """A migrated database of a benchmark's own (dropped after), its URL in DATABASE_URL and
    this process's environment set for an in-process app (`env` on top)."""
    import os

    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(infra.database_url).set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(infra.admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        subprocess.run(
            [sys.executable, "-m", "alembic", "-x", f"url={psycopg_url(url)}", "upgrade", "head"],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        os.environ.update(
            DATABASE_URL=url,
            REDIS_URL=infra.redis_url,
            SECRET_KEY=SECRET_KEY,
            BCRYPT_ROUNDS="4",
            **env,
        )
        yield url
    finally:
        with psycopg.connect(infra.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def clear_redis_keys(redis_url: str) -> int:
    """Forget the cached analytics of a previous bench database (ids restart at 1)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    deleted = 0
    for key in client.scan_iter(f"{KEY_PREFIX}:*", count=1000):
        deleted += cast(int, client.delete(key))  # the sync client (redis-py types both)
    client.close()
    return deleted


def purge_unconsumed_queues(redis_url: str) -> int:
    """Beat sends housekeeping to every worker's queue; drop what went to the queues of the
    Procfile workers a run does not start (webhooks, importer) so it does not pile up."""
    import redis

    def queues(command: str) -> set[str]:
        found = re.search(r"--queues=(\S+)", command)
        return set(found.group(1).split(",")) if found else set()

    entries = read_procfile()
    ours = set().union(*(queues(entries[name]) for name in PROCESSES))
    others = set().union(*(queues(cmd) for name, cmd in entries.items() if name not in PROCESSES))
    client = redis.Redis.from_url(redis_url)
    try:
        return cast(int, client.delete(*(others - ours))) if others - ours else 0
    finally:
        client.close()


class Stack:
    """The Procfile's web, worker, worker-bulk and beat with the bench's settings, each in a
    process group of its own (what the CPU figures are grouped by)."""

    def __init__(
        self,
        infra: Infra,
        *,
        web_workers: int,
        web_threads: int,
        worker_concurrency: int,
        token_minutes: int,
        profile_dir: Path | None = None,
    ) -> None:
        self.port = free_port()
        self.redis_url = infra.redis_url
        # No worker recycling in the middle of a measurement (gunicorn.conf.py recycles).
        gunicorn_args = "--max-requests 0"
        if profile_dir is not None:
            gunicorn_args += f" --config {ROOT / 'bench' / 'gunicorn_profile.py'}"
        self.env = process_env(
            {
                "DATABASE_URL": infra.database_url,
                "REDIS_URL": infra.redis_url,
                "REDIS_KEY_PREFIX": KEY_PREFIX,
                "SECRET_KEY": SECRET_KEY,
                "BCRYPT_ROUNDS": "4",
                "RATELIMIT_ENABLED": "false",  # the load comes from one address and few tokens
                # Virtual users log in once; their tokens must outlive the run.
                "ACCESS_TOKEN_MINUTES": str(token_minutes),
                "PYTHONUNBUFFERED": "1",
                "GUNICORN_BIND": f"127.0.0.1:{self.port}",
                "GUNICORN_CMD_ARGS": gunicorn_args,
                "WEB_CONCURRENCY": str(web_workers),
                "WEB_THREADS": str(web_threads),
                "WEB_WORKER_CLASS": "gthread" if web_threads > 1 else "sync",
                "ACCESS_LOG": "0",
                "WORKER_CONCURRENCY": str(worker_concurrency),
                "BULK_WORKER_CONCURRENCY": "1",
                "BEAT_SCHEDULE_FILE": str(DATA / "celerybeat-schedule"),
                "MAIL_DIR": str(DATA / "mail"),
                # The metrics wrapper of the Procfile lines empties its directory on start:
                # one of the bench's own, never that of another stack on this machine.
                "METRICS_ROOT": str(DATA / "metrics"),
                "BENCH_PROFILE_DIR": str(profile_dir or ""),
            }
        )
        self.processes = [
            Process(name, self.env, log_path=LOG_DIR / f"{name}.log") for name in PROCESSES
        ]

    def __getitem__(self, name: str) -> Process:
        return next(p for p in self.processes if p.name == name)

    def start(self) -> None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        for process in self.processes:
            assert process.log_path is not None
            process.log_path.write_bytes(b"")  # this run's log only
        for stale in DATA.glob("celerybeat-schedule*"):
            stale.unlink()  # a fresh schedule: nothing is overdue at the start
        for process in self.processes:
            process.start()
        self.wait_for_http()

    def wait_for_http(self, timeout: float = 60) -> None:
        web = self["web"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if web.gave_up:
                raise RuntimeError(f"gunicorn kept exiting during startup:\n{web.log_tail()}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/health")
                status = conn.getresponse().status
                conn.close()
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"gunicorn did not answer /health within {timeout}s:\n{web.log_tail()}")

    def groups(self) -> dict[str, int]:
        """Process type -> its process group id (= the pid `sh -c exec` left in place)."""
        return {p.name: p.proc.pid for p in self.processes if p.alive and p.proc is not None}

    def problems(self) -> list[str]:
        return [
            f"{p.name} {'is not running' if not p.alive else f'restarted {p.restarts}x'}:\n"
            + p.log_tail(20)
            for p in self.processes
            if not p.alive or p.restarts
        ]

    def stop(self) -> None:
        stop_all(self.processes)
        purge_unconsumed_queues(self.redis_url)


@dataclass
class Backlog:
    pending: int  # deliverable outbox events not delivered yet
    oldest_s: float | None  # how long the oldest of them has waited
    parked: int  # out of attempts, waiting for an operator


class Monitor:
    """The harness's own connection to crm_bench (its backend is left out of the CPU
    figures): the outbox backlog and where the PostgreSQL server runs."""

    def __init__(self, infra: Infra) -> None:
        import psycopg

        self.conn = psycopg.connect(
            infra.db_conninfo, autocommit=True, application_name="crm-bench-harness"
        )
        self.backend_pid = int(self.scalar("SELECT pg_backend_pid()"))

    def scalar(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        row = self.conn.execute(sql, params).fetchone()
        return row[0] if row else None

    def backlog(self) -> Backlog:
        from crm_domain.services.delivery.outbox import MAX_ATTEMPTS

        pending, oldest, parked = self.conn.execute(
            "SELECT count(*) FILTER (WHERE attempts < %(max)s),"
            " extract(epoch FROM now() - min(created_at) FILTER (WHERE attempts < %(max)s)),"
            " count(*) FILTER (WHERE attempts >= %(max)s)"
            " FROM outbox_events WHERE delivered_at IS NULL",
            {"max": MAX_ATTEMPTS},
        ).fetchone() or (0, None, 0)
        return Backlog(int(pending), None if oldest is None else float(oldest), int(parked))

    def postmaster_pid(self) -> int | None:
        """The server's main process when the server runs on this machine (the parent of
        this connection's backend), else None."""
        proc = Path(f"/proc/{self.backend_pid}")
        try:
            title = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            raw = (proc / "stat").read_text()
            ppid = int(raw[raw.rindex(")") + 2 :].split()[1])
            comm = Path(f"/proc/{ppid}/comm").read_text().strip()
        except (OSError, ValueError, IndexError):
            return None
        mine = title.startswith("postgres") and f" {DB_NAME} " in title
        return ppid if mine and comm.startswith("postgres") else None

    def close(self) -> None:
        self.conn.close()
