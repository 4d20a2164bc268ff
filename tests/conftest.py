"""Test fixtures: a fresh database migrated with Alembic, the Flask app, and an API client."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from alembic import command
from alembic.config import Config

from . import services

ROOT = Path(__file__).resolve().parent.parent
_services = services.start()
# The settings are read from the environment by the app and by the Celery app.
os.environ["DATABASE_URL"] = _services.database_url
os.environ["REDIS_URL"] = _services.redis_url
os.environ["CELERY_BROKER_URL"] = _services.broker_url
if _services.pgbouncer is not None:  # transaction pooling: no server-side prepared statements
    os.environ["DB_PREPARED_STATEMENTS"] = "false"
    # LISTEN needs a session of its own: beat's outbox listener connects past PgBouncer.
    os.environ["OUTBOX_LISTEN_URL"] = _services.direct_url
# Test runs share Redis but each has its own database (ids restart at 1): namespace the keys.
os.environ["REDIS_KEY_PREFIX"] = _services.database_name
os.environ.setdefault("BCRYPT_ROUNDS", "4")
os.environ.setdefault("SECRET_KEY", "test-secret-key-that-is-long-enough-for-hs256")
# E-mail sent without an SMTP server (in-process workers) lands here, not in .data/mail.
os.environ.setdefault("MAIL_DIR", str(ROOT / ".data" / "test" / "mail"))
# Webhook receivers in the tests listen on 127.0.0.1 (the SSRF tests turn this off).
os.environ.setdefault("WEBHOOKS_ALLOW_PRIVATE", "true")
# In-process metrics are this process's own (the stacks' processes get their directories).
os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)

from crm_api import create_app  # noqa: E402
from crm_domain.db import Database  # noqa: E402
from crm_domain.settings import Settings  # noqa: E402
from crm_worker.app import celery_app  # noqa: E402

# Celery's broker keys (queues, bindings) of this run get the run's name too, so tests that
# publish through Celery on the shared Redis neither meet other runs' messages nor leave keys.
# (On RabbitMQ the run has a vhost of its own: tests/rabbit.py.)
if _services.broker == "redis":
    celery_app.conf.broker_transport_options = {
        **celery_app.conf.broker_transport_options,
        "global_keyprefix": f"{_services.database_name}-celery:",
    }

from .api import ApiClient  # noqa: E402
from .mail import SmtpServer, smtp_server  # noqa: E402
from .scratch import ScratchDatabase  # noqa: E402


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    try:
        delete_redis_keys(_services.redis_url, _services.database_name)
        _services.drop_database()
    finally:
        _services.stop()


def delete_redis_keys(redis_url: str, name: str) -> int:
    """Every key this run made in the shared Redis: its prefixes are the database's name
    (`<name>:...`) or start with it (`<name>-count:...`, `<name>-scratch-...:...`)."""
    client = redis.Redis.from_url(redis_url)
    deleted = 0
    try:
        for pattern in (f"{name}:*", f"{name}-*"):
            keys = list(client.scan_iter(match=pattern, count=1000))
            for start in range(0, len(keys), 500):
                deleted += client.delete(*keys[start : start + 500])
    finally:
        client.close()
    return deleted


def _migrate() -> None:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.attributes["url"] = _services.database_url
    cfg.attributes["configure_logger"] = False
    command.upgrade(cfg, "head")


@pytest.fixture(scope="session")
def test_services() -> services.TestServices:
    return _services


@pytest.fixture(scope="session")
def app():
    _migrate()
    # The suite sends thousands of requests from one address: rate limits are tested on apps
    # of their own (tests/test_ratelimit.py).
    return create_app(OUTBOX_DISPATCH="inline", TESTING=True, RATELIMIT_ENABLED=False)


@pytest.fixture(scope="session")
def db(app) -> Database:
    return app.extensions["crm_db"]


@pytest.fixture
def quiet_db(test_services) -> Iterator[Database]:
    """The test database without a publisher: recorded events stay pending."""
    db = Database.from_settings(Settings.from_env(), url=test_services.database_url, pool_size=4)
    yield db
    db.engine.dispose()


@pytest.fixture
def api(app) -> Iterator[ApiClient]:
    yield ApiClient(app.test_client())


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    """A real SMTP server (aiosmtpd) on a free loopback port, plain text, no AUTH."""
    yield from smtp_server()


@pytest.fixture
def scratch(test_services, tmp_path) -> Iterator[ScratchDatabase]:
    """A database of the test's own (created by the test: `scratch.create()`), dropped after."""
    scratch = ScratchDatabase(test_services, tmp_path)
    try:
        yield scratch
    finally:
        scratch.drop()
