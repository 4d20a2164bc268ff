"""The identity of the database that derived data comes from.

Redis keeps values derived from PostgreSQL (precomputed analytics, large list totals, the
refresh debounce). They must never outlive the database they came from: after the database
is recreated (ids restart at 1) or restored from an older backup, a value from before is
another tenant's or a vanished state's, and must be a miss.

So every such key starts with `<prefix>:<epoch>:`, where the epoch is a short hash of:
- the random id in the `installation` table (migration 0005): differs for every database
  that was migrated from empty, and changes when an operator runs `rotate`
  (crm_domain.installation);
- facts PostgreSQL itself changes whenever the data is put back by a restore: the row's
  `xmin` and the table's oid (pg_restore recreates the table and re-inserts the row), the
  database's oid (a database created anew, also from a template), the cluster's system
  identifier (another server) and the WAL timeline (point-in-time recovery, a promoted
  standby).
A dump restored into any database therefore has another epoch than the database it was taken
from, even though it carries the same installation id. What this cannot see is a file-level
copy put back without recovery (same cluster, oids and timeline): `rotate` is the mandatory
last step of such a restore (docs/OPERATIONS.md).

Each process reads the epoch with one tiny query and remembers it for `check_seconds`
(INSTALLATION_CHECK_SECONDS, 5 s), and reads it again at once after the pool opens a new
connection (a dropped and recreated database kills the old ones), so a request pays nothing
for it. Values are stored under the epoch read in the same transaction as the data they are
computed from (`read`), so a value is never filed under an identity it did not come from."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from sqlalchemy import Connection, text
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

DEFAULT_CHECK_SECONDS = 5.0
RETRY_SECONDS = 1.0  # after a failed read (database down, table missing): no caching meanwhile
EPOCH_LENGTH = 16  # hex characters of the hash (64 bits)
DERIVED_KINDS = ("analytics", "count")  # `<prefix>:<epoch>:<kind>:...` keys

IDENTITY_SQL = text(
    """
    SELECT i.id::text AS installation_id,
           i.xmin::text AS row_xmin,
           i.tableoid::bigint AS table_oid,
           d.oid::bigint AS database_oid,
           s.system_identifier::text AS system_identifier,
           CASE WHEN pg_is_in_recovery() THEN ''
                ELSE substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END AS timeline
    FROM installation i
    CROSS JOIN pg_control_system() s
    JOIN pg_database d ON d.datname = current_database()
    """
)


class Connections(Protocol):
    """Where the identity is read from (crm_domain.db.Database)."""

    def autocommit(self) -> AbstractContextManager[Connection]: ...


def epoch_of(parts: Sequence[Any]) -> str:
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:EPOCH_LENGTH]


class InstallationIdentity:
    """The epoch of one Database, cached per process (see the module docstring)."""

    def __init__(self, db: Connections, check_seconds: float = DEFAULT_CHECK_SECONDS) -> None:
        self.db = db
        self.check_seconds = check_seconds
        self._epoch: str | None = None  # None while it cannot be read
        self._known: str | None = None  # the last epoch read, kept through an outage
        self._unreadable = False  # the last read failed (an outage is logged once)
        self._expires = 0.0  # time.monotonic() after which the epoch is read again
        self._lock = threading.Lock()

    def epoch(self) -> str | None:
        """The current epoch, or None when it cannot be read (then nothing is cached)."""
        if time.monotonic() < self._expires:
            return self._epoch
        with self._lock:
            if time.monotonic() < self._expires:
                return self._epoch
            try:
                with self.db.autocommit() as conn:
                    epoch = epoch_of(conn.execute(IDENTITY_SQL).one())
            except Exception as exc:
                self._unavailable(exc)
            else:
                self._remember(epoch, self.check_seconds)
            return self._epoch

    def read(self, session: Session | Connection) -> str:
        """The epoch as seen by `session`'s transaction (and remembered)."""
        epoch = epoch_of(session.execute(IDENTITY_SQL).one())
        self._remember(epoch, self.check_seconds)
        return epoch

    def invalidate(self) -> None:
        """Read the epoch again on next use (called when the pool opens a connection)."""
        self._expires = 0.0

    def _unavailable(self, exc: Exception) -> None:
        """The identity cannot be read: an outage (or missing migrations), not a change of
        identity. Logged once when it starts; nothing derived is cached meanwhile."""
        if not self._unreadable:
            reason = str(getattr(exc, "orig", None) or exc).strip() or type(exc).__name__
            log.warning(
                "database unavailable (%s): derived data is neither read nor stored in Redis "
                "until it answers",
                reason.splitlines()[0],
            )
        self._unreadable = True
        self._epoch = None
        self._expires = time.monotonic() + RETRY_SECONDS

    def _remember(self, epoch: str, ttl: float) -> None:
        if self._unreadable:
            log.info("database available again; derived data in Redis is used again")
            self._unreadable = False
        # Compared with the last identity read, across an outage: an unreachable database is
        # not another one, but one restored while it was away is.
        if self._known is not None and epoch != self._known:
            log.warning(
                "database identity changed (%s -> %s): recreated, restored or rotated; "
                "derived data of the previous identity is no longer used",
                self._known,
                epoch,
            )
        self._known = self._epoch = epoch
        self._expires = time.monotonic() + ttl
