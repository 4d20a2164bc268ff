"""Alembic builds the whole schema from empty, matches the models, and downgrades cleanly."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from crm_domain.db import Base, include_in_migrations

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def empty_database(test_services) -> Iterator[str]:
    name = f"crm_mig_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(test_services.admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_url(test_services.database_url).set(database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with psycopg.connect(test_services.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _config(url: str) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.attributes["url"] = url
    cfg.attributes["configure_logger"] = False
    return cfg


def _differences(url: str) -> list[object]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(
                conn, opts={"compare_type": True, "include_object": include_in_migrations}
            )
            return list(compare_metadata(ctx, Base.metadata))
    finally:
        engine.dispose()


def test_upgrade_from_empty_matches_models_and_round_trips(empty_database: str) -> None:
    cfg = _config(empty_database)
    command.upgrade(cfg, "head")
    assert _differences(empty_database) == []
    command.downgrade(cfg, "base")
    engine = create_engine(empty_database)
    with engine.connect() as conn:
        tables = (
            conn.exec_driver_sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            .scalars()
            .all()
        )
    engine.dispose()
    assert set(tables) <= {"alembic_version"}
    command.upgrade(cfg, "head")
    assert _differences(empty_database) == []
