"""Beat's ear on the outbox (OUTBOX_WAKE=notify): a thread LISTENs on `crm_outbox` on a
connection of its own and, on each notification, asks for a drain through a DrainWaker (the
debounced flag and drain task of crm_worker.dispatch, that the API used to send itself).

The notification comes from a trigger on outbox_events (migration 0018_outbox_notify) when the
transaction that inserted events commits, once per transaction, at no cost to the API: no
round trip, no broker publish in the web process. LISTEN needs a session of its own, so behind
PgBouncer in transaction mode OUTBOX_LISTEN_URL names a direct connection (NOTIFY itself goes
through the pooler). Whenever the listener (re)connects it asks for a drain once, for events
committed while nobody listened; should it be away, beat's periodic re-dispatch
(OUTBOX_REDISPATCH_SECONDS) still finds every pending event."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg
from sqlalchemy.engine import make_url

from crm_domain.settings import Settings

from .dispatch import DrainFlag, DrainWaker

log = logging.getLogger(__name__)

CHANNEL = "crm_outbox"
RECONNECT_SECONDS = 2.0
CHECK_SECONDS = 30.0  # a quiet connection is checked this often (a dead one is replaced)


class OutboxListener:
    """Calls `wake()` on every notification on CHANNEL, and once per (re)connection."""

    def __init__(self, url: str, wake: Callable[[], None]) -> None:
        self.url = url
        self.wake = wake
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outbox-listener", daemon=True)

    def start(self) -> OutboxListener:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._listen()
            except Exception:
                log.warning(
                    "outbox listener lost its connection; again in %.0f s (beat's re-dispatch "
                    "delivers meanwhile)",
                    RECONNECT_SECONDS,
                    exc_info=True,
                )
            self._stop.wait(RECONNECT_SECONDS)

    def _listen(self) -> None:
        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"LISTEN {CHANNEL}")
            log.info("listening for outbox events")
            self.wake()  # events committed while nobody listened
            while not self._stop.is_set():
                for _ in conn.notifies(timeout=CHECK_SECONDS):
                    self.wake()
                conn.execute("SELECT 1")


def start_listener(settings: Settings, flag: DrainFlag, send: Callable[[], None]) -> OutboxListener:
    """The listener of a beat process: its wake-ups go through the drain flag in Redis, then
    `send` (a drain task)."""
    url = make_url(settings.outbox_listen_url or settings.database_url)
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    return OutboxListener(dsn, DrainWaker(flag, send)).start()
