"""Engine, session factory and declarative base."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, MetaData, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from .installation import DEFAULT_CHECK_SECONDS, InstallationIdentity

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    # Server-generated values (ids, defaults, updated_at) come back with the INSERT or
    # UPDATE itself (RETURNING) instead of a SELECT on first access.
    __mapper_args__ = {"eager_defaults": True}


def include_in_migrations(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    """Alembic comparison filter: trigram indexes exist only where the server has pg_trgm
    (migration 0003), so they are not part of the models."""
    return not (type_ == "index" and reflected and (name or "").endswith("_trgm"))


# Called right after a transaction that recorded outbox events commits.
Publisher = Callable[[], None]


class Database:
    """One engine and session factory per process (recreate after fork with `dispose`).

    `publisher`, when set, is called after each commit that recorded outbox events;
    `count_cache`, when set, answers list totals (see crm_domain.counting); `identity` is
    the database's epoch that data kept in Redis is bound to (crm_domain.installation),
    read again whenever the pool opens a new connection."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 5,
        publisher: Publisher | None = None,
        identity_check_seconds: float = DEFAULT_CHECK_SECONDS,
    ) -> None:
        self.url = url
        self.pool_size = pool_size
        self.publisher = publisher
        self.count_cache: object | None = None  # crm_domain.counting.LargeCountCache
        self.identity = InstallationIdentity(self, identity_check_seconds)
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._factory: sessionmaker[Session] | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    self._engine = create_engine(
                        self.url,
                        pool_size=self.pool_size,
                        max_overflow=self.pool_size,
                        # No pre-ping (a round trip per checkout): a connection the server
                        # dropped fails one request with 503 and the pool is invalidated.
                        pool_pre_ping=False,
                        pool_recycle=1800,
                        pool_timeout=10,
                        connect_args={"connect_timeout": 5},
                    )
                    self._factory = sessionmaker(self._engine, expire_on_commit=False)
                    event.listen(self._engine, "connect", self._connected)
        return self._engine

    def _connected(self, *_: Any) -> None:
        # A new connection may reach another database than the last one did (the old one
        # was dropped and recreated, or restored): check the identity before trusting Redis.
        self.identity.invalidate()

    def new_session(self) -> Session:
        _ = self.engine
        assert self._factory is not None
        session = self._factory()
        session.info["outbox_publisher"] = self.publisher
        session.info["count_cache"] = self.count_cache
        return session

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session inside one transaction: committed on success, rolled back on error."""
        session = self.new_session()
        try:
            with session.begin():
                yield session
        finally:
            session.close()

    @contextmanager
    def autocommit(self) -> Iterator[Connection]:
        """A connection without a transaction: one round trip per read, for tiny lookups."""
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            yield conn

    def dispose(self) -> None:
        """Drop pooled connections (call in a child process after fork)."""
        if self._engine is not None:
            self._engine.dispose(close=False)
