"""A database of its own for tests that drop, recreate or restore it (never the session's).

Apps built on it share the Redis of the test run and one key prefix, as the processes of a
deployment do across a restore; the prefix starts with the session's database name, so the
session's cleanup removes its keys."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic import command
from alembic.config import Config
from flask import Flask
from sqlalchemy.engine import make_url

from crm_api import create_app
from crm_domain.settings import Settings

from .api import ApiClient
from .services import TestServices

ROOT = Path(__file__).resolve().parent.parent


class ScratchDatabase:
    def __init__(self, services: TestServices, tmp_path: Path) -> None:
        self.services = services
        self.tmp_path = tmp_path
        suffix = uuid.uuid4().hex[:6]
        self.name = f"{services.database_name}_s{suffix}"
        self.prefix = f"{services.database_name}-scratch-{suffix}"
        self.url = (
            make_url(services.database_url)
            .set(database=self.name)
            .render_as_string(hide_password=False)
        )
        self._apps: list[Flask] = []
        self._extra: list[str] = []

    # --- databases ------------------------------------------------------------------------

    def admin(self, *statements: str) -> None:
        with psycopg.connect(self.services.admin_url, autocommit=True) as conn:
            for sql in statements:
                conn.execute(sql)  # type: ignore[arg-type]

    def create(self, revision: str = "head") -> None:
        self.admin(f'CREATE DATABASE "{self.name}"')
        cfg = Config(str(ROOT / "alembic.ini"))
        cfg.attributes["url"] = self.url
        cfg.attributes["configure_logger"] = False
        command.upgrade(cfg, revision)

    def recreate(self) -> None:
        """What the issue's operator did: drop the database and build it again from empty."""
        self.admin(f'DROP DATABASE "{self.name}" WITH (FORCE)')
        self.create()
        self._reconnect_clients()

    def _reconnect_clients(self) -> None:
        """Behind PgBouncer, the operator's last step after replacing a database: KILL and
        RESUME it on PgBouncer's console, so that the processes' connections are closed and
        their pools open new ones (as they do when the server itself closed them)."""
        if self.services.pgbouncer is not None:
            self.services.pgbouncer.disconnect(self.name)

    def libpq_url(self, database: str | None = None) -> str:
        """The server itself (pg_dump and pg_restore keep session state: never via PgBouncer)."""
        url = make_url(self.services.admin_url).set(database=database or self.name)
        return url.render_as_string(hide_password=False)

    def snapshot(self, method: str) -> str:
        """A copy of the database as it is now: a pg_dump archive or a template database."""
        if method == "pg_restore":
            if shutil.which("pg_dump") is None or shutil.which("pg_restore") is None:
                pytest.skip("pg_dump/pg_restore not installed")
            path = str(self.tmp_path / f"{self.name}.dump")
            done = subprocess.run(
                ["pg_dump", "--format=custom", f"--file={path}", self.libpq_url()],
                capture_output=True,
                text=True,
            )
            if done.returncode != 0 and "version mismatch" in done.stderr:
                pytest.skip(f"pg_dump cannot dump this server: {done.stderr.strip()}")
            assert done.returncode == 0, done.stderr
            return path
        copy = f"{self.name}_c"
        # A template must have no other sessions: the operator stops the app's processes.
        for app in self._apps:
            app.extensions["crm_db"].engine.dispose()
        if self.services.pgbouncer is not None:  # ... and PgBouncer lets go of the database
            self.services.pgbouncer.disconnect(self.name)
        self.admin(f'CREATE DATABASE "{copy}" TEMPLATE "{self.name}"')
        self._extra.append(copy)
        return copy

    def restore(self, method: str, snapshot: str) -> None:
        """Put the older copy back under the database's name (the apps keep running)."""
        if method == "pg_restore":
            done = subprocess.run(
                [
                    "pg_restore",
                    "--clean",
                    "--if-exists",
                    "--no-owner",
                    f"--dbname={self.libpq_url()}",
                    snapshot,
                ],
                capture_output=True,
                text=True,
            )
            assert done.returncode == 0, done.stderr
            return
        self.admin(
            f'DROP DATABASE "{self.name}" WITH (FORCE)',
            f'CREATE DATABASE "{self.name}" TEMPLATE "{snapshot}"',
        )
        self._reconnect_clients()

    def drop(self) -> None:
        for app in self._apps:
            app.extensions["crm_db"].engine.dispose()
        for name in [self.name, *self._extra]:
            self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    # --- processes ------------------------------------------------------------------------

    def app(self, *, check_seconds: float = 5.0) -> Flask:
        """An API process on this database (its own pool, identity cache and count cache)."""
        pooling = Settings.from_env()  # DB_POOL, DB_PREPARED_STATEMENTS (PgBouncer runs)
        settings = Settings(
            database_url=self.url,
            db_pool=pooling.db_pool,
            db_prepared_statements=pooling.db_prepared_statements,
            redis_url=self.services.redis_url,
            secret_key=os.environ["SECRET_KEY"],
            bcrypt_rounds=4,
            db_pool_size=2,
            redis_key_prefix=self.prefix,
            installation_check_seconds=check_seconds,
        )
        # RATELIMIT_ENABLED: like the session's app (for a rate limiter, where there is one).
        app = create_app(settings, OUTBOX_DISPATCH="inline", TESTING=True, RATELIMIT_ENABLED=False)
        self._apps.append(app)
        return app


def wait_ready(api: ApiClient, timeout: float = 10.0) -> None:
    """The first requests after the database was dropped meet the pool's dead connections
    (503); a load balancer's readiness probe waits this out the same way."""
    deadline = time.monotonic() + timeout
    while True:
        r = api.get("/ready")
        if r.status_code == 200:
            return
        assert time.monotonic() < deadline, r.get_json()
        time.sleep(0.05)


def without_as_of(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "as_of"}
