#!/usr/bin/env python
"""Benchmark the CRM API end to end: database, API (gunicorn), one Celery worker, a seeded
tenant and a bounded mixed workload of concurrent virtual users.

    python bench/run.py [--contacts 10000] [--deals 100000] [--duration 60] [--users 8]
                        [--web-workers 3] [--web-threads 1] [--skip-seed] [--profile]

PostgreSQL: BENCH_DATABASE_URL (a server URL; the database `crm_bench` is created on it),
else an embedded server under .data/bench. Redis: BENCH_REDIS_URL, else an embedded one.
Results: a table on stdout and bench/results/<timestamp>.json. See bench/README.md."""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import math
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DATA = ROOT / ".data" / "bench"
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))

DB_NAME = "crm_bench"
KEY_PREFIX = "bench"
API = "/api/v1"
PASSWORD = "BenchPassword123"
ORG_NAME = "Bench Org"
SECRET_KEY = "bench-secret-key-0123456789abcdef0123456789abcdef"
# (role in the bench organization, email, display name)
SEED_USERS = (
    ("owner", "owner@bench.example.com", "Olivia Owner"),
    ("manager", "manager@bench.example.com", "Manny Manager"),
    ("member", "member@bench.example.com", "Mia Member"),
)
STATUSES = ("new", "in_progress", "won", "lost")
STAGES = ("qualification", "proposal", "negotiation", "closed")
CURRENCIES = ("USD", "EUR", "GBP")
DEEP_PAGE_SIZE = 25
CURSOR_PAGES_PER_WALK = 3

# Scenario name -> default weight. A scenario may issue several requests, each recorded
# under its own operation name (e.g. patch_deal = get_deal + patch_deal).
DEFAULT_WEIGHTS: dict[str, float] = {
    "list_contacts": 12,
    "search_contacts": 8,
    "list_deals": 15,
    "deals_deep_page": 4,
    "deals_cursor_walk": 4,
    "get_deal": 10,
    "create_deal": 5,
    "patch_deal": 6,
    "create_task": 4,
    "list_tasks": 8,
    "list_activities": 6,
    "post_comment": 4,
    "analytics_summary": 6,
    "analytics_summary_days": 1,
    "analytics_funnel": 5,
}
# Row order of the results table (unknown names go last, alphabetically).
ROW_ORDER = (
    "list_contacts",
    "search_contacts",
    "list_deals[created_at]",
    "list_deals[amount]",
    "list_deals[updated_at]",
    "deals_deep_page",
    "deals_cursor_page",
    "get_deal",
    "create_deal",
    "patch_deal",
    "create_task",
    "list_tasks",
    "list_activities",
    "post_comment",
    "analytics_summary",
    "analytics_summary[days]",
    "analytics_funnel",
)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def utc_today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


# --- infrastructure: database, Redis, processes ---------------------------------------------


def psycopg_url(sqlalchemy_url: str) -> str:
    """A libpq URL (what psycopg.connect takes) from a SQLAlchemy one."""
    from sqlalchemy.engine import make_url

    return (
        make_url(sqlalchemy_url).set(drivername="postgresql").render_as_string(hide_password=False)
    )


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


def start_infra(args: argparse.Namespace) -> Infra:
    from sqlalchemy.engine import make_url

    from crm_domain.settings import normalize_db_url

    embedded: list[Any] = []
    server = args.database_url or os.environ.get("BENCH_DATABASE_URL")
    if server:
        base = make_url(normalize_db_url(server))
        log(f"PostgreSQL: {base.render_as_string(hide_password=True)} (database {DB_NAME})")
    else:
        from crm_domain.embedded import EmbeddedPostgres

        log("BENCH_DATABASE_URL not set: starting embedded PostgreSQL in .data/bench/pg")
        pg = EmbeddedPostgres(DATA / "pg")
        embedded.append(pg)
        base = make_url(pg.url("postgres"))
    admin_db = base.database if base.database and base.database != DB_NAME else "postgres"
    admin_url = psycopg_url(base.set(database=admin_db).render_as_string(hide_password=False))
    database_url = base.set(database=DB_NAME).render_as_string(hide_password=False)

    redis_url = args.redis_url or os.environ.get("BENCH_REDIS_URL")
    if redis_url:
        log(f"Redis: {redis_url} (key prefix {KEY_PREFIX})")
    else:
        from crm_domain.embedded import EmbeddedRedis

        log("BENCH_REDIS_URL not set: starting embedded Redis in .data/bench/redis")
        rd = EmbeddedRedis(DATA / "redis")
        embedded.append(rd)
        redis_url = rd.url(0)
    return Infra(database_url, admin_url, redis_url, embedded)


def prepare_database(infra: Infra, *, drop: bool) -> None:
    import psycopg

    with psycopg.connect(infra.admin_url, autocommit=True) as conn:
        if drop:
            log(f"dropping database {DB_NAME}")
            conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,)).fetchone():
            log(f"creating database {DB_NAME}")
            conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    log("alembic upgrade head")
    env = {**os.environ, "DATABASE_URL": infra.database_url, "SECRET_KEY": SECRET_KEY}
    done = subprocess.run(
        [str(BIN / "alembic"), "upgrade", "head"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
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


def clear_redis_keys(redis_url: str) -> int:
    """Forget the cached analytics of a previous bench database (ids restart at 1)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    deleted = 0
    for key in client.scan_iter(f"{KEY_PREFIX}:*", count=1000):
        deleted += client.delete(key)
    client.close()
    return deleted


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    """A subprocess in its own process group, logging to a file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name, self.argv, self.env = name, argv, env
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20) -> None:
        if not self.alive():
            return
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        except ProcessLookupError:
            pass

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def build_services(
    args: argparse.Namespace, infra: Infra, port: int, profile_dir: Path | None
) -> tuple[Service, Service]:
    env = {
        **os.environ,
        "DATABASE_URL": infra.database_url,
        "REDIS_URL": infra.redis_url,
        "SECRET_KEY": SECRET_KEY,
        "BCRYPT_ROUNDS": "4",
        "RATELIMIT_ENABLED": "false",  # the load comes from one address and few tokens
        "REDIS_KEY_PREFIX": KEY_PREFIX,
        # Virtual users log in once; their tokens must outlive the run.
        "ACCESS_TOKEN_MINUTES": str(max(15, math.ceil((args.duration + args.warmup) / 60) + 30)),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("BENCH_PROFILE_DIR", None)
    workers, threads = args.web_workers, args.web_threads
    target = "wsgi:app"
    if profile_dir is not None:
        # cProfile profiles one thread at a time: one process, one thread.
        workers, threads = 1, 1
        target = "bench.profiling:app"
        env["BENCH_PROFILE_DIR"] = str(profile_dir)
    web_argv = [
        str(BIN / "gunicorn"),
        target,
        # Our settings, not the repository's ./gunicorn.conf.py (access log, recycling).
        "--config",
        str(ROOT / "bench" / "gunicorn_bench.py"),
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        "--worker-class",
        "gthread" if threads > 1 else "sync",
        "--timeout",
        "120",
        "--graceful-timeout",
        "15",
        "--keep-alive",
        "30",
        "--backlog",
        "2048",
    ]
    worker_argv = [
        str(BIN / "celery"),
        "-A",
        "celery_app",
        "worker",
        "--loglevel=warning",
        f"--concurrency={args.worker_concurrency}",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "-n",
        "bench@%h",
    ]
    log_dir = DATA / "logs"
    return Service("web", web_argv, env, log_dir), Service("worker", worker_argv, env, log_dir)


def wait_for_http(port: int, web: Service, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not web.alive():
            raise RuntimeError(f"gunicorn exited during startup:\n{web.tail()}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                conn.close()
                return
            conn.close()
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"gunicorn did not answer /health within {timeout}s:\n{web.tail()}")


# --- HTTP client --------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    body: Any
    headers: http.client.HTTPMessage
    elapsed: float  # seconds

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class Client:
    """One keep-alive connection; reconnects when the server closed it (sync workers close
    after every response, gthread ones after --keep-alive seconds idle)."""

    RETRYABLE = (
        http.client.RemoteDisconnected,
        http.client.CannotSendRequest,
        http.client.ResponseNotReady,
        ConnectionResetError,
        BrokenPipeError,
    )

    def __init__(self, port: int, timeout: float = 120) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.token: str | None = None
        self.org_id: int | None = None

    def close(self) -> None:
        self.conn.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        url = API + path + ("?" + urlencode(params, doseq=True) if params else "")
        all_headers = {"Accept": "application/json", **(headers or {})}
        if self.token:
            all_headers["Authorization"] = f"Bearer {self.token}"
        if self.org_id is not None:
            all_headers["X-Organization-Id"] = str(self.org_id)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            all_headers["Content-Type"] = "application/json"
        start = time.perf_counter()
        for attempt in (0, 1):
            reused = self.conn.sock is not None
            try:
                self.conn.request(method, url, body=data, headers=all_headers)
                resp = self.conn.getresponse()
                raw = resp.read()
                break
            except self.RETRYABLE:
                self.conn.close()
                if attempt or not reused:
                    raise
            except Exception:
                self.conn.close()
                raise
        elapsed = time.perf_counter() - start
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = raw[:500].decode(errors="replace")
        return Response(resp.status, payload, resp.headers, elapsed)


def api_call(client: Client, method: str, path: str, **kw: Any) -> Any:
    """A setup request that must succeed."""
    resp = client.request(method, path, **kw)
    if not resp.ok:
        raise RuntimeError(f"{method} {path} -> {resp.status}: {str(resp.body)[:500]}")
    return resp.body


# --- seeding ------------------------------------------------------------------------------------


@dataclass
class SeedUser:
    role: str
    email: str
    name: str
    user_id: int = 0


@dataclass
class Tenant:
    org_id: int
    users: list[SeedUser]


def register_tenant(port: int) -> Tenant:
    users = [SeedUser(role, email, name) for role, email, name in SEED_USERS]
    owner_client = Client(port)
    org_id = 0
    for user in users:
        client = owner_client if user.role == "owner" else Client(port)
        body = api_call(
            client,
            "POST",
            "/auth/register",
            body={
                "email": user.email,
                "password": PASSWORD,
                "name": user.name,
                "organization_name": ORG_NAME if user.role == "owner" else f"{user.name}'s org",
            },
        )
        user.user_id = int(body["user"]["id"])
        if user.role == "owner":
            org_id = int(body["organization"]["id"])
            owner_client.token = body["access_token"]
        else:
            client.close()
    for user in users:
        if user.role != "owner":
            api_call(
                owner_client,
                "POST",
                f"/organizations/{org_id}/members",
                body={"email": user.email, "role": user.role},
            )
    owner_client.close()
    log(f"registered organization {org_id} with owner, manager and member (through the API)")
    return Tenant(org_id, users)


def existing_tenant(infra: Infra) -> Tenant | None:
    """The tenant of a previous run (for --skip-seed), or None."""
    import psycopg

    emails = [email for _, email, _ in SEED_USERS]
    with psycopg.connect(infra.db_conninfo) as conn:
        rows = conn.execute(
            "SELECT u.email, u.id, m.organization_id, m.role FROM users u"
            " JOIN organization_members m ON m.user_id = u.id"
            " JOIN organizations o ON o.id = m.organization_id"
            " WHERE u.email = ANY(%s) AND o.name = %s",
            (emails, ORG_NAME),
        ).fetchall()
    found = {email: (uid, org, role) for email, uid, org, role in rows}
    if len(found) != len(SEED_USERS) or len({org for _, org, _ in found.values()}) != 1:
        return None
    users = [SeedUser(role, email, name, found[email][0]) for role, email, name in SEED_USERS]
    return Tenant(next(iter(found.values()))[1], users)


class Progress:
    def __init__(self, label: str, total: int) -> None:
        self.label, self.total = label, max(total, 1)
        self.next_pct = 10
        self.start = time.monotonic()

    def update(self, done: int) -> None:
        pct = done * 100 // self.total
        if pct >= self.next_pct:
            rate = done / max(time.monotonic() - self.start, 1e-6)
            log(f"  {self.label}: {done:,}/{self.total:,} ({pct}%, {rate:,.0f} rows/s)")
            self.next_pct = (pct // 10 + 1) * 10


def _cents_str(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def _copy(
    conn: Any, table: str, columns: tuple[str, ...], rows: Iterable[tuple[Any, ...]], total: int
) -> None:
    progress = Progress(table, total)
    with (
        conn.cursor() as cur,
        cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy,
    ):
        for i, row in enumerate(rows, 1):
            copy.write_row(row)
            if i % 1000 == 0 or i == total:
                progress.update(i)
    conn.execute(
        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
        f" (SELECT COALESCE(max(id), 1) FROM {table}))"
    )


def bulk_insert(infra: Infra, tenant: Tenant, args: argparse.Namespace) -> dict[str, int]:
    """COPY contacts, deals, tasks and comments for the tenant."""
    import psycopg

    rng = random.Random(args.random_seed)
    org = tenant.org_id
    owners = [u.user_id for u in tenant.users]
    now = dt.datetime.now(dt.UTC)
    today = now.date()
    year = 365 * 86400
    counts = {
        "contacts": args.contacts,
        "deals": args.deals,
        "tasks": args.tasks if args.deals else 0,
        "activities": args.activities if args.deals else 0,
    }
    with psycopg.connect(infra.db_conninfo) as conn:

        def first_id(table: str) -> int:
            return int(conn.execute(f"SELECT COALESCE(max(id), 0) + 1 FROM {table}").fetchone()[0])

        c0 = first_id("contacts")

        def contacts() -> Iterable[tuple[Any, ...]]:
            for i in range(args.contacts):
                cid = c0 + i
                created = now - dt.timedelta(seconds=rng.uniform(0, year))
                yield (
                    cid,
                    org,
                    rng.choice(owners),
                    f"Contact {cid}",
                    f"contact{cid}@example.com",
                    f"+1-555-{cid:07d}",
                    created,
                    created + dt.timedelta(seconds=rng.uniform(0, (now - created).total_seconds())),
                )

        _copy(
            conn,
            "contacts",
            (
                "id",
                "organization_id",
                "owner_id",
                "name",
                "email",
                "phone",
                "created_at",
                "updated_at",
            ),
            contacts(),
            args.contacts,
        )
        conn.commit()
        contact_ids = range(c0, c0 + args.contacts)
        if not args.contacts:
            counts.update(deals=0, tasks=0, activities=0)
            return counts

        d0 = first_id("deals")
        deal_created: list[dt.datetime] = []

        def deal_state() -> tuple[str, str]:
            status = rng.choices(STATUSES, weights=(30, 35, 15, 20))[0]
            if status == "new":
                stage = rng.choices(STAGES, weights=(80, 20, 0, 0))[0]
            elif status == "in_progress":
                stage = rng.choices(STAGES, weights=(30, 40, 30, 0))[0]
            else:
                stage = rng.choices(STAGES, weights=(5, 10, 15, 70))[0]
            return status, stage

        def deals() -> Iterable[tuple[Any, ...]]:
            for i in range(args.deals):
                did = d0 + i
                status, stage = deal_state()
                if status == "won":
                    cents = rng.randint(1, 10_000_000)
                else:
                    cents = 0 if rng.random() < 0.05 else rng.randint(0, 10_000_000)
                contact = rng.choice(contact_ids)
                created = now - dt.timedelta(seconds=rng.uniform(0, year))
                deal_created.append(created)
                yield (
                    did,
                    org,
                    contact,
                    rng.choice(owners),
                    f"Deal {did} for Contact {contact}",
                    _cents_str(cents),
                    rng.choices(CURRENCIES, weights=(60, 25, 15))[0],
                    status,
                    stage,
                    created,
                    created + dt.timedelta(seconds=rng.uniform(0, (now - created).total_seconds())),
                )

        _copy(
            conn,
            "deals",
            (
                "id",
                "organization_id",
                "contact_id",
                "owner_id",
                "title",
                "amount",
                "currency",
                "status",
                "stage",
                "created_at",
                "updated_at",
            ),
            deals(),
            args.deals,
        )
        conn.commit()
        if not args.deals:
            return counts

        def tasks() -> Iterable[tuple[Any, ...]]:
            for i in range(counts["tasks"]):
                deal = d0 + rng.randrange(args.deals)
                created = now - dt.timedelta(seconds=rng.uniform(0, 30 * 86400))
                yield (
                    org,
                    deal,
                    f"Task {i + 1}: follow up on deal {deal}",
                    today + dt.timedelta(days=rng.randint(-7, 60)),
                    rng.random() < 0.25,
                    created,
                    created,
                )

        _copy(
            conn,
            "tasks",
            (
                "organization_id",
                "deal_id",
                "title",
                "due_date",
                "is_done",
                "created_at",
                "updated_at",
            ),
            tasks(),
            counts["tasks"],
        )

        def activities() -> Iterable[tuple[Any, ...]]:
            for i in range(counts["activities"]):
                k = rng.randrange(args.deals)
                created = deal_created[k]
                created += dt.timedelta(seconds=rng.uniform(0, (now - created).total_seconds()))
                yield (
                    org,
                    d0 + k,
                    rng.choice(owners),
                    "comment",
                    json.dumps({"text": f"Seeded comment {i + 1}"}),
                    created,
                )

        _copy(
            conn,
            "activities",
            ("organization_id", "deal_id", "author_id", "type", "payload", "created_at"),
            activities(),
            counts["activities"],
        )
        conn.commit()
    return counts


def vacuum_analyze(infra: Infra) -> None:
    """VACUUM ANALYZE: statistics plus the visibility map, so autovacuum does not start on
    the freshly loaded tables in the middle of the measurement; then a CHECKPOINT."""
    import psycopg

    with psycopg.connect(infra.db_conninfo, autocommit=True) as conn:
        for table in ("contacts", "deals", "tasks", "activities"):
            conn.execute(f"VACUUM (ANALYZE) {table}")
        conn.execute("ANALYZE")
        # Flush the loaded pages now, not through the checkpointer during the measurement.
        try:
            conn.execute("CHECKPOINT")
        except psycopg.Error as exc:  # needs superuser or pg_checkpoint
            log(f"CHECKPOINT skipped: {exc}")


# --- what the virtual users work on -------------------------------------------------------------


@dataclass
class Dataset:
    org_id: int
    users: list[SeedUser]
    contact_ids: list[int]
    deal_ids: list[int]  # grows with created deals (list.append is atomic)
    deals_by_owner: dict[int, list[int]]
    deals_with_tasks: list[int]
    deals_with_activities: list[int]
    deal_total: int
    cursor_supported: bool = False


def load_dataset(infra: Infra, tenant: Tenant) -> Dataset:
    import psycopg

    org = tenant.org_id
    with psycopg.connect(infra.db_conninfo) as conn:
        contact_ids = [
            r[0] for r in conn.execute("SELECT id FROM contacts WHERE organization_id = %s", (org,))
        ]
        deal_rows = conn.execute(
            "SELECT id, owner_id FROM deals WHERE organization_id = %s", (org,)
        ).fetchall()
        with_tasks = [
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT deal_id FROM tasks WHERE organization_id = %s", (org,)
            )
        ]
        with_activities = [
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT deal_id FROM activities WHERE organization_id = %s", (org,)
            )
        ]
    by_owner: dict[int, list[int]] = defaultdict(list)
    for deal_id, owner_id in deal_rows:
        by_owner[owner_id].append(deal_id)
    return Dataset(
        org_id=org,
        users=tenant.users,
        contact_ids=contact_ids,
        deal_ids=[r[0] for r in deal_rows],
        deals_by_owner=dict(by_owner),
        deals_with_tasks=with_tasks,
        deals_with_activities=with_activities,
        deal_total=len(deal_rows),
    )


# --- measurement --------------------------------------------------------------------------------


class ErrorLog:
    """Counts errors by (operation, status, code) and keeps the first sample of each."""

    MAX_KINDS = 200

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.kinds: dict[tuple[str, str, str], dict[str, Any]] = {}

    def add(self, op: str, status: str, code: str, sample: str) -> None:
        key = (op, status, code)
        with self.lock:
            entry = self.kinds.get(key)
            if entry is not None:
                entry["count"] += 1
            elif len(self.kinds) < self.MAX_KINDS:
                self.kinds[key] = {
                    "operation": op,
                    "status": status,
                    "code": code,
                    "count": 1,
                    "sample": sample[:600],
                }

    def entries(self) -> list[dict[str, Any]]:
        with self.lock:
            return sorted(self.kinds.values(), key=lambda e: -e["count"])


class OpAborted(Exception):
    """A request of a scenario failed (already recorded); the scenario stops."""


@dataclass
class Recorder:
    """Per virtual user (no locking): latencies and errors of the measured window."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class RunClock:
    def __init__(self, warmup: float, duration: float) -> None:
        now = time.monotonic()
        self.measure_from = now + warmup
        self.stop_at = self.measure_from + duration
        self.stop = threading.Event()

    def running(self) -> bool:
        return not self.stop.is_set() and time.monotonic() < self.stop_at


class VirtualUser:
    def __init__(
        self,
        index: int,
        port: int,
        data: Dataset,
        clock: RunClock,
        errors: ErrorLog,
        scenarios: list[tuple[str, float]],
        args: argparse.Namespace,
    ) -> None:
        self.index = index
        self.data = data
        self.user = data.users[index % len(data.users)]
        self.client = Client(port)
        self.client.org_id = data.org_id
        self.clock = clock
        self.errors = errors
        self.rec = Recorder()
        self.rng = random.Random(args.random_seed * 1000 + index)
        self.think = args.think_ms / 1000
        self.names = [name for name, _ in scenarios]
        self.weights = [weight for _, weight in scenarios]
        own = data.deals_by_owner.get(self.user.user_id, [])
        # A member changes only their own deals; the other roles any deal.
        self.own_deals: list[int] = list(own)
        self.created = 0
        self.cursor: dict[str, Any] | None = None  # an ongoing cursor walk

    # -- plumbing

    def call(
        self,
        op: str,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        started = time.monotonic()
        measured = started >= self.clock.measure_from
        try:
            resp = self.client.request(method, path, params=params, body=body, headers=headers)
        except Exception as exc:
            if measured:
                self.rec.errors[op] += 1
                self.rec.latencies[op].append(time.monotonic() - started)
            self.errors.add(op, "exception", type(exc).__name__, f"{method} {path}: {exc!r}")
            raise OpAborted from exc
        if measured:
            self.rec.latencies[op].append(resp.elapsed)
        if not resp.ok:
            if measured:
                self.rec.errors[op] += 1
            code = ""
            if isinstance(resp.body, dict) and isinstance(resp.body.get("error"), dict):
                code = str(resp.body["error"].get("code", ""))
            query = "?" + urlencode(params, doseq=True) if params else ""
            sample = f"{method} {path}{query} -> {resp.status} {json.dumps(resp.body)[:400]}"
            self.errors.add(op, str(resp.status), code, sample)
            raise OpAborted
        return resp

    def login(self) -> None:
        body = api_call(
            self.client,
            "POST",
            "/auth/login",
            body={"email": self.user.email, "password": PASSWORD},
        )
        self.client.token = body["access_token"]

    def run(self) -> None:
        try:
            self.login()
        except Exception as exc:
            self.errors.add("login", "exception", type(exc).__name__, repr(exc))
            return
        while self.clock.running():
            scenario = self.rng.choices(self.names, self.weights)[0]
            try:
                getattr(self, f"s_{scenario}")()
            except OpAborted:
                pass
            except Exception as exc:  # a bug in a scenario: keep it visible, keep going
                self.errors.add(scenario, "client-bug", type(exc).__name__, repr(exc))
            if self.think:
                time.sleep(self.think)
        self.client.close()

    # -- helpers

    def any_deal(self) -> int:
        return self.rng.choice(self.data.deal_ids)

    def modifiable_deal(self) -> int:
        if self.user.role == "member":
            return self.rng.choice(self.own_deals or self.data.deal_ids)
        return self.any_deal()

    def amount(self, positive: bool = False) -> str:
        return _cents_str(self.rng.randint(1 if positive else 0, 10_000_000))

    # -- scenarios

    def s_list_contacts(self) -> None:
        params = {"page": self.rng.randint(1, 50), "page_size": 20}
        self.call("list_contacts", "GET", "/contacts", params=params)

    def s_search_contacts(self) -> None:
        n = self.rng.choice(self.data.contact_ids) if self.data.contact_ids else 1
        term = self.rng.choice(
            (
                f"Contact {n}",  # a name (and every name it prefixes)
                f"contact{n}@example.com",  # one email
                str(n)[:3],  # digits: many matches in names and emails
                "nobody-by-this-name",  # no match
            )
        )
        self.call("search_contacts", "GET", "/contacts", params={"search": term})

    def s_list_deals(self) -> None:
        rng = self.rng
        params: dict[str, Any] = {
            "page": rng.randint(1, 20),
            "page_size": rng.choice((20, 25, 50)),
        }
        if rng.random() < 0.5:
            params["status"] = rng.sample(STATUSES, rng.randint(1, 2))
        if rng.random() < 0.3:
            params["stage"] = rng.choice(STAGES)
        if rng.random() < 0.3:
            # Round thresholds, as people pick them in a filter UI.
            low = rng.choice((1_000, 5_000, 10_000, 25_000, 50_000, 75_000))
            params["min_amount"] = f"{low}.00"
            if rng.random() < 0.5:
                params["max_amount"] = f"{low + rng.choice((5_000, 10_000, 25_000))}.00"
        order_by = rng.choice(("created_at", "amount", "updated_at"))
        params["order_by"] = order_by
        params["order"] = rng.choice(("asc", "desc"))
        self.call(f"list_deals[{order_by}]", "GET", "/deals", params=params)

    def s_deals_deep_page(self) -> None:
        pages = max(1, math.ceil(self.data.deal_total / DEEP_PAGE_SIZE))
        page = max(1, pages - self.rng.randint(0, 10))
        resp = self.call(
            "deals_deep_page",
            "GET",
            "/deals",
            params={"page": page, "page_size": DEEP_PAGE_SIZE},
        )
        if isinstance(resp.body, dict) and isinstance(resp.body.get("total"), int):
            self.data.deal_total = resp.body["total"]

    def s_deals_cursor_walk(self) -> None:
        """A few pages by cursor, continuing the same walk next time (so it goes deep)."""
        if self.cursor is None:
            params: dict[str, Any] = {
                "page_size": DEEP_PAGE_SIZE,
                "order_by": self.rng.choices(("created_at", "amount", "updated_at"), (6, 2, 2))[0],
                "order": self.rng.choice(("asc", "desc")),
            }
            if self.rng.random() < 0.3:
                params["status"] = [self.rng.choice(STATUSES)]
            self.cursor = {"params": params, "next": None}
        for _ in range(CURSOR_PAGES_PER_WALK):
            params = dict(self.cursor["params"])
            if self.cursor["next"]:
                params["cursor"] = self.cursor["next"]
            try:
                resp = self.call("deals_cursor_page", "GET", "/deals", params=params)
            except OpAborted:
                self.cursor = None
                raise
            nxt = resp.body.get("next_cursor") if isinstance(resp.body, dict) else None
            if not nxt:
                self.cursor = None  # the end: start a new walk next time
                return
            self.cursor["next"] = nxt

    def s_get_deal(self) -> None:
        self.call("get_deal", "GET", f"/deals/{self.any_deal()}")

    def s_create_deal(self) -> None:
        self.created += 1
        body = {
            "contact_id": self.rng.choice(self.data.contact_ids),
            "title": f"Bench deal {self.index}-{self.created}",
            "amount": self.amount(),
            "currency": self.rng.choice(CURRENCIES),
        }
        resp = self.call("create_deal", "POST", "/deals", body=body)
        deal_id = int(resp.body["id"])
        self.own_deals.append(deal_id)
        self.data.deal_ids.append(deal_id)

    def s_patch_deal(self) -> None:
        """Read the deal, then move it forward (stage), change its status or its amount,
        with If-Match like a careful client."""
        deal_id = self.modifiable_deal()
        got = self.call("get_deal", "GET", f"/deals/{deal_id}")
        deal = got.body
        rng = self.rng
        stage_index = STAGES.index(deal["stage"])
        changes: dict[str, Any] = {}
        roll = rng.random()
        if roll < 0.4 and stage_index < len(STAGES) - 1:
            changes["stage"] = STAGES[rng.randint(stage_index + 1, len(STAGES) - 1)]
        elif roll < 0.75:
            status = rng.choice([s for s in STATUSES if s != deal["status"]])
            changes["status"] = status
            if status == "won" and Decimal(deal["amount"]) <= 0:
                changes["amount"] = self.amount(positive=True)
        else:
            changes["amount"] = self.amount(positive=deal["status"] == "won")
        headers = {"If-Match": got.headers["ETag"]} if got.headers.get("ETag") else None
        self.call("patch_deal", "PATCH", f"/deals/{deal_id}", body=changes, headers=headers)

    def s_create_task(self) -> None:
        deal_id = self.modifiable_deal()
        due = utc_today() + dt.timedelta(days=self.rng.randint(0, 30))
        body = {"deal_id": deal_id, "title": "Call the client back", "due_date": due.isoformat()}
        self.call("create_task", "POST", "/tasks", body=body)
        self.data.deals_with_tasks.append(deal_id)

    def s_list_tasks(self) -> None:
        rng = self.rng
        roll = rng.random()
        params: dict[str, Any] = {}
        if roll < 0.4:
            pool = self.data.deals_with_tasks or self.data.deal_ids
            params["deal_id"] = rng.choice(pool)
        elif roll < 0.7:
            today = utc_today()
            params.update(
                only_open="true",
                due_after=today.isoformat(),
                due_before=(today + dt.timedelta(days=7)).isoformat(),
            )
        else:
            params.update(only_open=rng.choice(("true", "false")), page=rng.randint(1, 10))
        self.call("list_tasks", "GET", "/tasks", params=params)

    def s_list_activities(self) -> None:
        pool = self.data.deals_with_activities
        deal_id = self.rng.choice(pool) if pool and self.rng.random() < 0.7 else self.any_deal()
        self.call("list_activities", "GET", f"/deals/{deal_id}/activities")

    def s_post_comment(self) -> None:
        deal_id = self.any_deal()
        body = {"type": "comment", "payload": {"text": f"Bench comment from {self.user.role}"}}
        self.call("post_comment", "POST", f"/deals/{deal_id}/activities", body=body)
        self.data.deals_with_activities.append(deal_id)

    def s_analytics_summary(self) -> None:
        self.call("analytics_summary", "GET", "/analytics/deals/summary")

    def s_analytics_summary_days(self) -> None:
        """A non-default window: not precomputed, computed on a cache miss."""
        days = self.rng.choice((7, 90, 365))
        self.call(
            "analytics_summary[days]", "GET", "/analytics/deals/summary", params={"days": days}
        )

    def s_analytics_funnel(self) -> None:
        self.call("analytics_funnel", "GET", "/analytics/deals/funnel")


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize(users: list[VirtualUser], elapsed: float) -> dict[str, dict[str, Any]]:
    latencies: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    for vu in users:
        for op, values in vu.rec.latencies.items():
            latencies[op].extend(values)
        for op, count in vu.rec.errors.items():
            errors[op] += count
    order = {name: i for i, name in enumerate(ROW_ORDER)}
    rows: dict[str, dict[str, Any]] = {}
    for op in sorted(latencies, key=lambda o: (order.get(o, len(order)), o)):
        values = sorted(latencies[op])
        ms = [v * 1000 for v in values]
        rows[op] = {
            "count": len(values),
            "errors": errors.get(op, 0),
            "rps": len(values) / elapsed if elapsed else 0.0,
            "mean_ms": sum(ms) / len(ms) if ms else 0.0,
            "p50_ms": percentile(ms, 50),
            "p95_ms": percentile(ms, 95),
            "p99_ms": percentile(ms, 99),
            "max_ms": ms[-1] if ms else 0.0,
        }
    return rows


def print_table(rows: dict[str, dict[str, Any]], total: dict[str, Any]) -> None:
    header = (
        f"{'operation':<26}{'count':>8}{'errors':>8}{'req/s':>9}"
        f"{'mean':>9}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}"
    )
    print()
    print("latency in ms (client-measured)")
    print(header)
    print("-" * len(header))
    for op, r in rows.items():
        print(
            f"{op:<26}{r['count']:>8}{r['errors']:>8}{r['rps']:>9.1f}{r['mean_ms']:>9.1f}"
            f"{r['p50_ms']:>9.1f}{r['p95_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['max_ms']:>9.1f}"
        )
    print("-" * len(header))
    print(
        f"{'TOTAL':<26}{total['count']:>8}{total['errors']:>8}{total['rps']:>9.1f}"
        f"{total['mean_ms']:>9.1f}{total['p50_ms']:>9.1f}{total['p95_ms']:>9.1f}"
        f"{total['p99_ms']:>9.1f}{total['max_ms']:>9.1f}"
    )
    print()


def run_workload(
    port: int, data: Dataset, args: argparse.Namespace
) -> tuple[list[VirtualUser], ErrorLog, float, bool]:
    weights = dict(DEFAULT_WEIGHTS)
    weights.update(args.weight)
    if not data.cursor_supported:
        weights["deals_cursor_walk"] = 0
    scenarios = [(name, w) for name, w in weights.items() if w > 0]
    if not scenarios:
        raise SystemExit("every scenario has weight 0")
    clock = RunClock(args.warmup, args.duration)
    errors = ErrorLog()
    users = [VirtualUser(i, port, data, clock, errors, scenarios, args) for i in range(args.users)]
    threads = [
        threading.Thread(target=vu.run, name=f"vu-{i}", daemon=True) for i, vu in enumerate(users)
    ]
    log(
        f"workload: {args.users} users for {args.duration:g}s"
        f" (+{args.warmup:g}s warm-up not measured); scenarios: "
        + ", ".join(f"{n}={w:g}" for n, w in scenarios)
    )
    for t in threads:
        t.start()
    interrupted = False
    next_report = clock.measure_from + 10
    try:
        while any(t.is_alive() for t in threads):
            time.sleep(0.2)
            now = time.monotonic()
            if now >= next_report and now < clock.stop_at:
                done = sum(len(v) for vu in users for v in vu.rec.latencies.values())
                log(f"  {now - clock.measure_from:5.0f}s: {done:,} requests measured")
                next_report += 10
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: stopping the virtual users")
        clock.stop.set()
        for t in threads:
            t.join(10)
    # Requests started before the deadline are counted: the window ends with the last one.
    elapsed = max(time.monotonic() - clock.measure_from, 1e-9)
    return users, errors, elapsed, interrupted


def outbox_pending(infra: Infra) -> int | None:
    import psycopg

    try:
        with psycopg.connect(infra.db_conninfo) as conn:
            row = conn.execute(
                "SELECT count(*) FROM outbox_events WHERE delivered_at IS NULL"
            ).fetchone()
            return int(row[0]) if row else None
    except psycopg.Error:
        return None


def process_cpu() -> dict[int, tuple[int, str, float]]:
    """pid -> (process group, command name, CPU seconds so far) from /proc (Linux)."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    found: dict[int, tuple[int, str, float]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            raw = stat.read_text()
            comm = raw[raw.index("(") + 1 : raw.rindex(")")]
            fields = raw[raw.rindex(")") + 2 :].split()
            # fields[2] = pgrp, [11] = utime, [12] = stime (clock ticks)
            found[int(stat.parent.name)] = (
                int(fields[2]),
                comm,
                (int(fields[11]) + int(fields[12])) / tick,
            )
        except (OSError, ValueError, IndexError):
            continue
    return found


def bench_backends(infra: Infra) -> set[int]:
    """Pids of the PostgreSQL backends connected to crm_bench (the app's pooled ones)."""
    import psycopg

    try:
        with psycopg.connect(infra.admin_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (DB_NAME,),
            ).fetchall()
        return {int(r[0]) for r in rows}
    except psycopg.Error:
        return set()


def attribute_cpu(
    before: dict[int, tuple[int, str, float]],
    after: dict[int, tuple[int, str, float]],
    groups: dict[str, int],
    backends: set[int],
) -> dict[str, float]:
    """CPU seconds used between two snapshots: per service process group, PostgreSQL
    backends of crm_bench, and every other `postgres` process of the machine."""
    by_group = {pgid: name for name, pgid in groups.items()}
    used: dict[str, float] = dict.fromkeys([*groups, "postgres crm_bench", "postgres other"], 0.0)
    for pid, (pgrp, comm, cpu) in after.items():
        old = before.get(pid)
        delta = cpu - (old[2] if old and old[1] == comm else 0.0)
        if pgrp in by_group:
            used[by_group[pgrp]] += delta
        elif comm == "postgres" or comm.startswith("postgres:"):
            used["postgres crm_bench" if pid in backends else "postgres other"] += delta
    return used


def cpu_calibration_ms() -> float:
    """Best of 3 timings of a fixed pure-Python loop: the host's single-core speed right now.
    Compare it between runs (a virtual machine's CPU speed can change by 2x)."""

    def once() -> float:
        start = time.perf_counter()
        total = 0
        for i in range(1_000_000):
            total += i * i
        return time.perf_counter() - start

    return min(once() for _ in range(3)) * 1000


def machine_cpu_ticks() -> list[int] | None:
    """The machine-wide `cpu` line of /proc/stat (user nice system idle iowait irq softirq
    steal), or None off Linux."""
    try:
        with open("/proc/stat") as stat:
            return [int(v) for v in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return None


def machine_cpu_split(before: list[int] | None, after: list[int] | None) -> dict[str, float]:
    """Percent of the machine's CPU time: user, system, iowait, steal, idle."""
    if not before or not after:
        return {}
    d = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(d) or 1
    user, nice, system, idle, iowait, irq, softirq, steal = d
    return {
        "user": 100 * (user + nice) / total,
        "system": 100 * (system + irq + softirq) / total,
        "iowait": 100 * iowait / total,
        "steal": 100 * steal / total,
        "idle": 100 * idle / total,
    }


def git_info() -> dict[str, Any]:
    def run(*cmd: str) -> str:
        try:
            return subprocess.run(
                ["git", *cmd], cwd=ROOT, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {"commit": run("rev-parse", "HEAD"), "dirty": bool(run("status", "--porcelain"))}


# --- main ---------------------------------------------------------------------------------------


def parse_weight(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    if name not in DEFAULT_WEIGHTS or not value:
        raise argparse.ArgumentTypeError(
            f"expected NAME=WEIGHT with NAME one of {', '.join(DEFAULT_WEIGHTS)}"
        )
    return name, float(value)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--contacts", type=int, default=10_000, help="contacts to seed")
    p.add_argument("--deals", type=int, default=100_000, help="deals to seed")
    p.add_argument("--tasks", type=int, default=5_000, help="tasks to seed")
    p.add_argument("--activities", type=int, default=2_000, help="comments to seed")
    p.add_argument("--duration", type=float, default=60, help="measured seconds")
    p.add_argument("--warmup", type=float, default=3, help="unmeasured seconds before")
    p.add_argument("--users", type=int, default=8, help="concurrent virtual users")
    p.add_argument("--think-ms", type=float, default=0, help="pause between scenarios")
    p.add_argument(
        "--web-workers",
        type=int,
        default=int(os.environ.get("BENCH_WEB_WORKERS", "3")),
        help="gunicorn worker processes (default 3)",
    )
    p.add_argument(
        "--web-threads",
        type=int,
        default=int(os.environ.get("BENCH_WEB_THREADS", "1")),
        help="threads per gunicorn worker; 1 = sync worker, >1 = gthread (default 1)",
    )
    p.add_argument("--worker-concurrency", type=int, default=1, help="Celery worker processes")
    p.add_argument("--skip-seed", action="store_true", help="reuse crm_bench as it is")
    p.add_argument(
        "--profile",
        action="store_true",
        help="1 gunicorn worker under cProfile; per-endpoint profiles in bench/results/",
    )
    p.add_argument(
        "--weight",
        type=parse_weight,
        action="append",
        default=[],
        metavar="NAME=W",
        help="override a scenario weight (repeatable; 0 disables)",
    )
    p.add_argument("--random-seed", type=int, default=42)
    p.add_argument("--database-url", help="PostgreSQL server URL (default: BENCH_DATABASE_URL)")
    p.add_argument("--redis-url", help="Redis URL (default: BENCH_REDIS_URL)")
    args = p.parse_args(argv)
    args.weight = dict(args.weight)
    if args.users < 1 or args.web_workers < 1 or args.web_threads < 1:
        p.error("--users, --web-workers and --web-threads must be at least 1")
    return args


def _sigterm(*_: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Ctrl-C even when started with SIGINT ignored (a background job of a script).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _sigterm)
    started_at = dt.datetime.now(dt.UTC)
    stamp = started_at.strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(parents=True, exist_ok=True)
    profile_dir = RESULTS / f"profile-{stamp}" if args.profile else None
    infra: Infra | None = None
    services: list[Service] = []
    try:
        infra = start_infra(args)
        prepare_database(infra, drop=not args.skip_seed)
        tenant = existing_tenant(infra) if args.skip_seed else None
        if tenant is None:
            cleared = clear_redis_keys(infra.redis_url)
            if cleared:
                log(f"deleted {cleared} stale '{KEY_PREFIX}:*' keys from Redis")
        port = free_port()
        web, worker = build_services(args, infra, port, profile_dir)
        services = [web, worker]
        for service in services:
            service.start()
        mode = (
            "1 worker x 1 thread under cProfile"
            if profile_dir
            else f"{args.web_workers} workers x {args.web_threads} threads"
        )
        log(f"gunicorn on 127.0.0.1:{port} ({mode}); celery worker; logs in {web.log_path.parent}")
        wait_for_http(port, web)

        seed_info: dict[str, Any] = {"skipped": tenant is not None}
        if tenant is None:
            if args.skip_seed:
                log("--skip-seed: no seeded tenant in crm_bench yet, seeding it")
            t0 = time.monotonic()
            tenant = register_tenant(port)
            log(
                f"bulk insert: {args.contacts:,} contacts, {args.deals:,} deals,"
                f" {args.tasks:,} tasks, {args.activities:,} comments (COPY)"
            )
            counts = bulk_insert(infra, tenant, args)
            t_copy = time.monotonic() - t0
            log("VACUUM ANALYZE, CHECKPOINT")
            vacuum_analyze(infra)
            seed_seconds = time.monotonic() - t0
            seed_info.update(counts=counts, copy_seconds=t_copy, seconds=seed_seconds)
            log(
                f"seeded in {seed_seconds:.1f}s"
                f" (rows {t_copy:.1f}s, the rest VACUUM ANALYZE + CHECKPOINT)"
            )
        else:
            log(f"--skip-seed: reusing organization {tenant.org_id}")

        data = load_dataset(infra, tenant)
        log(
            f"dataset: org {data.org_id}, {len(data.contact_ids):,} contacts,"
            f" {len(data.deal_ids):,} deals, {len(data.deals_with_tasks):,} deals with tasks"
        )
        if not data.contact_ids or not data.deal_ids:
            raise SystemExit("the workload needs at least one contact and one deal")

        owner = Client(port)
        owner.org_id = data.org_id
        owner.token = api_call(
            owner, "POST", "/auth/login", body={"email": SEED_USERS[0][1], "password": PASSWORD}
        )["access_token"]
        t0 = time.monotonic()
        api_call(owner, "GET", "/analytics/deals/summary")
        api_call(owner, "GET", "/analytics/deals/funnel")
        log(f"analytics cache warmed ({time.monotonic() - t0:.2f}s)")
        probe = api_call(owner, "GET", "/deals", params={"page_size": 1})
        data.cursor_supported = isinstance(probe, dict) and "next_cursor" in probe
        owner.close()
        log(
            "cursor pagination: "
            + (
                "offered (next_cursor), walked by deals_cursor_walk"
                if data.cursor_supported
                else "not offered by the API (no next_cursor in list responses): skipped"
            )
        )
        pending_before = outbox_pending(infra)
        load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
        calibration_before = cpu_calibration_ms()
        log(
            f"load average {load_before[0] if load_before else float('nan'):.2f} (1 min);"
            f" CPU check {calibration_before:.0f} ms (a fixed loop; lower = faster host)"
        )
        deals_at_start = len(data.deal_ids)
        groups = {s.name: s.proc.pid for s in services if s.proc is not None}
        procs_before = process_cpu()
        client_cpu_before = time.process_time()

        ticks_before = machine_cpu_ticks()
        users, errors, elapsed, interrupted = run_workload(port, data, args)
        machine_split = machine_cpu_split(ticks_before, machine_cpu_ticks())
        cpu_used = attribute_cpu(procs_before, process_cpu(), groups, bench_backends(infra))
        cpu_used["bench client"] = time.process_time() - client_cpu_before
        # Snapshots surround warm-up + window: spread over both.
        wall = elapsed + args.warmup
        cpu_cores = {k: v / wall for k, v in cpu_used.items()}
        if machine_split:
            busy = (machine_split["user"] + machine_split["system"]) / 100 * (os.cpu_count() or 1)
            cpu_cores["rest of machine"] = max(0.0, busy - sum(cpu_cores.values()))
        rows = summarize(users, elapsed)
        all_ms = sorted(
            v * 1000 for vu in users for values in vu.rec.latencies.values() for v in values
        )
        total = {
            "count": len(all_ms),
            "errors": sum(r["errors"] for r in rows.values()),
            "rps": len(all_ms) / elapsed,
            "mean_ms": sum(all_ms) / len(all_ms) if all_ms else 0.0,
            "p50_ms": percentile(all_ms, 50),
            "p95_ms": percentile(all_ms, 95),
            "p99_ms": percentile(all_ms, 99),
            "max_ms": all_ms[-1] if all_ms else 0.0,
        }
        calibration_after = cpu_calibration_ms()
        pending_end = outbox_pending(infra)
        drained_after = None
        if pending_end:
            t0 = time.monotonic()
            while time.monotonic() - t0 < 15:
                time.sleep(1)
                if not outbox_pending(infra):
                    drained_after = time.monotonic() - t0
                    break
        pending_later = outbox_pending(infra)
        for service in services:
            if not service.alive():
                log(f"WARNING: {service.name} is not running:\n{service.tail()}")

        print_table(rows, total)
        print(
            f"total: {total['count']:,} requests in {elapsed:.1f}s = {total['rps']:.1f} req/s,"
            f" {total['errors']} errors" + (" (INTERRUPTED)" if interrupted else "")
        )
        print(
            f"outbox events pending: {pending_before} before, {pending_end} at the end"
            + (
                f", drained {drained_after:.1f}s later"
                if drained_after is not None
                else (f", {pending_later} after 15s" if pending_end else "")
            )
        )
        print(
            "CPU used during the run, in cores (of "
            f"{os.cpu_count()}): " + ", ".join(f"{k} {v:.2f}" for k, v in cpu_cores.items())
        )
        print(
            f"CPU check (fixed loop, ms): {calibration_before:.0f} before,"
            f" {calibration_after:.0f} after; compare with other runs before comparing results"
        )
        if machine_split:
            print(
                "machine CPU during the run (%): "
                + ", ".join(f"{k} {v:.0f}" for k, v in machine_split.items())
            )
        samples = errors.entries()
        if samples:
            print(f"\nerrors ({len(samples)} distinct kinds; first sample of each):")
            for entry in samples[:12]:
                print(
                    f"  {entry['operation']} {entry['status']} {entry['code']}"
                    f" x{entry['count']}: {entry['sample']}"
                )
        result = {
            "started_at": started_at.isoformat(),
            "finished_at": dt.datetime.now(dt.UTC).isoformat(),
            "interrupted": interrupted,
            "git": git_info(),
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "config": {
                "contacts": args.contacts,
                "deals": args.deals,
                "tasks": args.tasks,
                "activities": args.activities,
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "users": args.users,
                "think_ms": args.think_ms,
                "web_workers": 1 if profile_dir else args.web_workers,
                "web_threads": 1 if profile_dir else args.web_threads,
                "worker_concurrency": args.worker_concurrency,
                "profile": bool(profile_dir),
                "skip_seed": args.skip_seed,
                "random_seed": args.random_seed,
                "weights": {n: w for n, w in {**DEFAULT_WEIGHTS, **args.weight}.items()},
                "database": "BENCH_DATABASE_URL"
                if (args.database_url or os.environ.get("BENCH_DATABASE_URL"))
                else "embedded",
            },
            "seed": seed_info,
            "dataset": {
                "org_id": data.org_id,
                "contacts": len(data.contact_ids),
                "deals_at_start": deals_at_start,
                "deals_at_end": len(data.deal_ids),
            },
            "cpu_cores": cpu_cores,
            "load_average_before": load_before,
            "cpu_check_ms": {"before": calibration_before, "after": calibration_after},
            "machine_cpu_percent": machine_split,
            "cursor_supported": data.cursor_supported,
            "elapsed_s": elapsed,
            "operations": rows,
            "total": total,
            "errors": samples,
            "outbox_pending": {
                "before": pending_before,
                "end": pending_end,
                "after_drain_wait": pending_later,
                "drained_after_s": drained_after,
            },
        }
        if profile_dir is not None:
            # The worker writes its profiles when it exits: stop it now.
            web.stop()
            result["profile_dir"] = str(profile_dir.relative_to(ROOT))
            summary = profile_dir / "summary.txt"
            if summary.exists():
                print(f"\nprofiles: {profile_dir.relative_to(ROOT)}/ (top of summary.txt)")
                print("\n".join(summary.read_text().splitlines()[:30]))
        out = RESULTS / f"{stamp}.json"
        out.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"\nresults: {out.relative_to(ROOT)}")
        return 130 if interrupted else 0
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        for service in reversed(services):
            service.stop()
        if infra is not None:
            infra.stop()


if __name__ == "__main__":
    sys.exit(main())
