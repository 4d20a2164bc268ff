"""Where the tests' PostgreSQL, Redis and Celery broker come from.

TEST_DATABASE_URL / TEST_REDIS_URL (a server URL; the suite creates and drops its own
database on it) win; otherwise an embedded PostgreSQL and Redis are started under .data/test.

TEST_PGBOUNCER=1: the suite reaches PostgreSQL through a PgBouncer in transaction-pooling mode
that it starts itself (tests/pgbouncer.py), with DB_PREPARED_STATEMENTS=false.
TEST_CELERY_BROKER=amqp: Celery's broker is RabbitMQ (TEST_RABBITMQ_URL, a vhost per run and
per stack: tests/rabbit.py) instead of Redis; Redis still holds the caches and the drain flag.
(Not TEST_BROKER: celery.contrib.testing reads that one as the broker's host name.)
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from crm_domain.settings import normalize_db_url

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class TestServices:
    database_url: str
    admin_url: str
    database_name: str
    redis_url: str
    broker: str = "redis"  # TEST_CELERY_BROKER: "redis" or "amqp"
    broker_url: str = ""  # the run's Celery broker (the Redis URL unless TEST_CELERY_BROKER=amqp)
    pgbouncer: Any = None  # tests.pgbouncer.PgBouncer when TEST_PGBOUNCER=1
    _embedded: list[Any] = field(default_factory=list)

    @property
    def direct_url(self) -> str:
        """The test database on the server itself (past PgBouncer, when there is one)."""
        return (
            make_url(self.admin_url)
            .set(database=self.database_name)
            .render_as_string(hide_password=False)
        )

    def drop_database(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database_name}" WITH (FORCE)')

    def stop(self) -> None:
        for service in reversed(self._embedded):
            service.stop()


def _psycopg_url(sqlalchemy_url: str) -> str:
    return (
        make_url(sqlalchemy_url).set(drivername="postgresql").render_as_string(hide_password=False)
    )


def start() -> TestServices:
    embedded: list[Any] = []
    server_url = os.environ.get("TEST_DATABASE_URL")
    if server_url:
        base = normalize_db_url(server_url)
    else:
        from crm_domain.embedded import EmbeddedPostgres

        pg = EmbeddedPostgres(ROOT / ".data" / "test" / "pg")
        embedded.append(pg)
        base = pg.url("postgres")
    redis_url = os.environ.get("TEST_REDIS_URL")
    if not redis_url:
        from crm_domain.embedded import EmbeddedRedis

        rd = EmbeddedRedis(ROOT / ".data" / "test" / "redis")
        embedded.append(rd)
        redis_url = rd.url(15)

    name = f"crm_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = make_url(base).set(database="postgres")
    admin_url = _psycopg_url(admin.render_as_string(hide_password=False))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    database_url = make_url(base).set(database=name).render_as_string(hide_password=False)
    services = TestServices(database_url, admin_url, name, redis_url, _embedded=embedded)
    if os.environ.get("TEST_PGBOUNCER", "") in ("1", "true", "yes"):
        from .pgbouncer import PgBouncer

        # Tools that must reach the server itself (CREATE/DROP DATABASE, pg_dump) use
        # admin_url; everything else goes through PgBouncer.
        services.pgbouncer = PgBouncer(base).start()
        embedded.append(services.pgbouncer)
        services.database_url = services.pgbouncer.url(name).render_as_string(hide_password=False)
    services.broker = os.environ.get("TEST_CELERY_BROKER", "redis").lower()
    if services.broker == "amqp":
        from . import rabbit

        rabbit.remove_leftovers()
        vhost = rabbit.Vhost(name).create()
        embedded.append(vhost)
        services.broker_url = vhost.url
    elif services.broker == "redis":
        services.broker_url = redis_url
    else:
        raise RuntimeError(f"TEST_CELERY_BROKER must be redis or amqp, not {services.broker!r}")
    return services
