"""Test fixtures: a fresh database migrated with Alembic, the Flask app, and an API client."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config

from . import services

ROOT = Path(__file__).resolve().parent.parent
_services = services.start()
# The settings are read from the environment by the app and by the Celery app.
os.environ["DATABASE_URL"] = _services.database_url
os.environ["REDIS_URL"] = _services.redis_url
# Test runs share Redis but each has its own database (ids restart at 1): namespace the keys.
os.environ["REDIS_KEY_PREFIX"] = _services.database_name
os.environ.setdefault("BCRYPT_ROUNDS", "4")
os.environ.setdefault("SECRET_KEY", "test-secret-key-that-is-long-enough-for-hs256")
# In-process metrics are this process's own (the stacks' processes get their directories).
os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)

from crm_api import create_app  # noqa: E402
from crm_domain.db import Database  # noqa: E402

from .api import ApiClient  # noqa: E402


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    try:
        _services.drop_database()
    finally:
        _services.stop()


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
    return create_app(OUTBOX_DISPATCH="inline", TESTING=True)


@pytest.fixture(scope="session")
def db(app) -> Database:
    return app.extensions["crm_db"]


@pytest.fixture
def api(app) -> Iterator[ApiClient]:
    yield ApiClient(app.test_client())
