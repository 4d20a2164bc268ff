"""Engine, session factory and declarative base."""

from __future__ import annotations

import select
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import psycopg
from sqlalchemy import Connection, Engine, MetaData, create_engine, event, text
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import DeclarativeBase, ORMExecuteState, Session, sessionmaker
from sqlalchemy.pool import NullPool

from .identity import DEFAULT_CHECK_SECONDS, InstallationIdentity

if TYPE_CHECKING:
    from .settings import Settings

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
    (migrations 0003 and 0010), so they are not part of the models."""
    return not (type_ == "index" and reflected and (name or "").endswith("_trgm"))


# Called right after a transaction that recorded outbox events commits.
Publisher = Callable[[], None]


class ReadOnlySession(RuntimeError):
    """A write was attempted through Database.reads() (a programming error)."""


@event.listens_for(Session, "before_flush")
def _no_flush_when_reading(session: Session, *_: Any) -> None:
    if session.info.get("read_only"):
        raise ReadOnlySession("this session only reads: write inside Database.transaction()")


@event.listens_for(Session, "do_orm_execute")
def _no_dml_when_reading(state: ORMExecuteState) -> None:
    if state.session.info.get("read_only") and (
        state.is_insert or state.is_update or state.is_delete
    ):
        raise ReadOnlySession("this session only reads: write inside Database.transaction()")


def _closed_by_server(dbapi_connection: Any, *_: Any) -> None:
    """Pool checkout hook: a pooled connection that the server has closed since it was
    last used (a restart, a terminated backend, a pooler's idle timeout) is replaced before
    the caller gets it, so the first request after a database restart succeeds.

    An idle connection has nothing to read: psycopg consumed every reply up to the last
    ReadyForQuery, and nothing here LISTENs. A readable socket therefore holds the server's
    goodbye (FATAL 57P01 "terminating connection") or its end of file. Finding that is one
    poll(2) with a zero timeout, no round trip (about 1 us); SQLAlchemy's pre-ping would
    cost a SELECT 1 round trip per checkout (measured: 65-90 us of client and 10-20 us of
    server CPU, 7-10 % of an authenticated GET; bench/pool_checkout.py, docs/PERFORMANCE.md).
    A connection that died without a word (a crashed host, a dropped NAT entry) is not seen
    here: its first statement fails (503)."""
    try:
        poller = select.poll()
        poller.register(dbapi_connection.pgconn.socket, select.POLLIN)
        readable = bool(poller.poll(0))
    except (psycopg.Error, OSError) as exc:  # closed, or no socket left
        raise DisconnectionError(f"connection unusable: {exc}") from exc
    if readable:
        raise DisconnectionError("the server closed the connection while it was idle")


class Database:
    """One engine and session factory per process (recreate after fork with `dispose`).

    `publisher`, when set, is called after each commit that recorded outbox events;
    `count_cache`, when set, answers list totals (see crm_domain.counting); `identity` is
    the database's epoch that data kept in Redis is bound to (crm_domain.identity),
    read again whenever the pool opens a new connection.

    Behind PgBouncer in transaction mode (docs/SCALING.md): `prepared_statements=False`
    unless the pooler tracks them (PgBouncer >= 1.22 with max_prepared_statements), and
    `null_pool=True` to leave all pooling to PgBouncer (a connection per checkout; the
    identity is then re-read every `identity_check_seconds` only, since every checkout is a
    new connection). Nothing here keeps session state on a connection (no SET, no session
    advisory locks, no LISTEN), so either pool is safe there."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 5,
        null_pool: bool = False,
        prepared_statements: bool = True,
        publisher: Publisher | None = None,
        identity_check_seconds: float = DEFAULT_CHECK_SECONDS,
    ) -> None:
        self.url = url
        self.pool_size = pool_size
        self.null_pool = null_pool
        self.prepared_statements = prepared_statements
        self.publisher = publisher
        self.count_cache: object | None = None  # crm_domain.counting.LargeCountCache
        self.identity = InstallationIdentity(self, identity_check_seconds)
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._factory: sessionmaker[Session] | None = None
        self._probe: Engine | None = None  # connections of their own for ping()

    @classmethod
    def from_settings(
        cls, settings: Settings, *, url: str | None = None, pool_size: int | None = None
    ) -> Database:
        """A Database configured by DATABASE_URL, DB_POOL, DB_POOL_SIZE and
        DB_PREPARED_STATEMENTS (`url` and `pool_size` override)."""
        return cls(
            url or settings.database_url,
            pool_size=settings.db_pool_size if pool_size is None else pool_size,
            null_pool=settings.db_pool == "null",
            prepared_statements=settings.db_prepared_statements,
            identity_check_seconds=settings.installation_check_seconds,
        )

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    connect_args: dict[str, Any] = {"connect_timeout": 5}
                    if not self.prepared_statements:
                        connect_args["prepare_threshold"] = None  # psycopg: never prepare
                    pooling: dict[str, Any] = (
                        {"poolclass": NullPool}
                        if self.null_pool
                        else {
                            "pool_size": self.pool_size,
                            "max_overflow": self.pool_size,
                            # No pre-ping (a round trip per checkout): connections the
                            # server closed are found without one (_closed_by_server).
                            "pool_pre_ping": False,
                            "pool_recycle": 1800,
                            "pool_timeout": 10,
                        }
                    )
                    self._engine = create_engine(self.url, connect_args=connect_args, **pooling)
                    self._factory = sessionmaker(self._engine, expire_on_commit=False)
                    if not self.null_pool:
                        event.listen(self._engine, "connect", self._connected)
                        event.listen(self._engine, "checkout", _closed_by_server)
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
    def reads(self) -> Iterator[Session]:
        """A session that only reads: each statement commits on its own (autocommit), which
        saves the BEGIN and COMMIT round trips of a transaction; its statements do not
        share one snapshot. Writing through it raises ReadOnlySession (nothing is written)."""
        session = self.new_session()
        session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        session.info["read_only"] = True
        try:
            yield session
        finally:
            session.close()

    @contextmanager
    def autocommit(self) -> Iterator[Connection]:
        """A connection without a transaction: one round trip per read, for tiny lookups."""
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            yield conn

    def ping(self) -> None:
        """One round trip on a connection of its own, never the pool's (a readiness probe
        neither waits for nor takes a connection the requests need); raises when the
        database does not answer. libpq bounds the connecting (2 s at least); a caller that
        needs a shorter deadline runs this in a thread (crm_api.health)."""
        with self._probe_engine().connect() as conn:
            conn.execute(text("SELECT 1"))

    def _probe_engine(self) -> Engine:
        if self._probe is None:
            with self._lock:
                if self._probe is None:
                    self._probe = create_engine(
                        self.url,
                        poolclass=NullPool,
                        connect_args={"connect_timeout": 2, "prepare_threshold": None},
                    )
        return self._probe

    def dispose(self) -> None:
        """Drop pooled connections (call in a child process after fork)."""
        if self._engine is not None:
            self._engine.dispose(close=False)
