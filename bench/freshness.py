"""How far the background lags the writes under load: the analytics freshness probe and the
outbox backlog (sampled during the load, then timed until it drains)."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from bench.config import PROBE_CURRENCY
from bench.infra import Backlog, Monitor
from bench.report import latency_stats
from bench.seed import Dataset
from bench.workload import RunClock

POLL_SECONDS = 0.1
TIMEOUT_SECONDS = 30.0
PROBE_AMOUNT = "100.00"


class FreshnessProbe:
    """During the measured window, again and again: a write that changes the bench
    organization's analytics in a known way (it creates a deal in the test currency, which
    nothing else uses, or marks the one it created won), then GET /analytics/deals/summary
    every 0.1 s until `by_currency` shows it. The latency runs from the write's response to
    the response that shows the change; a write starts at most every `every` seconds."""

    def __init__(
        self, port: int, data: Dataset, monitor: Monitor, clock: RunClock, every: float
    ) -> None:
        self.port = port
        self.data = data
        self.contact_id = data.contact_ids[0]
        self.org_id = data.org_id
        self.monitor = monitor
        self.clock = clock
        self.every = every
        self.samples: list[dict[str, Any]] = []  # kind, seconds (None: not seen in time), polls
        self.errors: list[str] = []
        self.requests = 0
        self.open_deal: int | None = None
        self.thread = threading.Thread(target=self._run, name="freshness", daemon=True)

    def finish(self) -> dict[str, Any]:
        """Wait for the last write to show (or time out); the figures."""
        self.thread.join(TIMEOUT_SECONDS + 5)
        return self.summary()

    def _baseline(self) -> dict[str, int]:
        rows = self.monitor.conn.execute(
            "SELECT status, count(*) FROM deals WHERE organization_id = %s AND currency = %s"
            " GROUP BY status",
            (self.org_id, PROBE_CURRENCY),
        ).fetchall()
        counts = {str(status): int(n) for status, n in rows}
        return {"new": counts.get("new", 0), "won": counts.get("won", 0)}

    def _write(self, expected: dict[str, int]) -> str:
        self.requests += 1
        if self.open_deal is None:
            body = {
                "contact_id": self.contact_id,
                "title": "Freshness probe",
                "amount": PROBE_AMOUNT,
                "currency": PROBE_CURRENCY,
            }
            self.open_deal = int(self.client.call("POST", "/deals", body=body)["id"])
            expected["new"] += 1
            return "create"
        deal, self.open_deal = self.open_deal, None
        self.client.call("PATCH", f"/deals/{deal}", body={"status": "won"})
        expected["new"] -= 1
        expected["won"] += 1
        return "won"

    def _visible(self, expected: dict[str, int]) -> bool:
        self.requests += 1
        body = self.client.call("GET", "/analytics/deals/summary")
        shown = body.get("by_currency", {}).get(PROBE_CURRENCY, {})
        return all(shown.get(s, {}).get("count", 0) == n for s, n in expected.items())

    def _run(self) -> None:
        owner = next(u for u in self.data.users if u.role == "owner")
        self.client = self.data.client(self.port, owner)
        while not self.clock.stop.is_set() and time.monotonic() < self.clock.measure_from:
            time.sleep(0.05)
        try:
            expected = self._baseline()
            while self.clock.measuring():
                try:
                    kind = self._write(expected)
                except Exception as exc:  # an error answer: note it, try again later
                    self.errors.append(f"write: {exc!r}"[:300])
                    time.sleep(self.every)
                    continue
                written = time.monotonic()
                polls, seconds = 0, None
                while time.monotonic() - written < TIMEOUT_SECONDS:
                    polls += 1
                    try:
                        if self._visible(expected):
                            seconds = time.monotonic() - written
                            break
                    except Exception as exc:
                        self.errors.append(f"summary: {exc!r}"[:300])
                    time.sleep(POLL_SECONDS)
                self.samples.append({"kind": kind, "seconds": seconds, "polls": polls})
                time.sleep(max(0.0, written + self.every - time.monotonic()))
        except Exception as exc:  # keep the run going; the report says what happened
            self.errors.append(f"probe stopped: {exc!r}"[:300])
        finally:
            self.client.close()

    def summary(self) -> dict[str, Any]:
        seen = [s["seconds"] * 1000 for s in self.samples if s["seconds"] is not None]
        return {
            "writes": len(self.samples),
            "not_visible_within_s": TIMEOUT_SECONDS,
            "not_visible": sum(1 for s in self.samples if s["seconds"] is None),
            "requests": self.requests,
            "latency_ms": latency_stats(seen),
            "errors": self.errors[:10],
            "samples": self.samples,
        }


class OutboxWatch:
    """The outbox backlog once a second while the load runs."""

    def __init__(self, monitor: Monitor, clock: RunClock) -> None:
        self.monitor = monitor
        self.clock = clock
        self.samples: list[Backlog] = []
        self.thread = threading.Thread(target=self._run, name="outbox-watch", daemon=True)

    def _run(self) -> None:
        while self.clock.running():
            with contextlib.suppress(Exception):  # a monitoring hiccup must not end the run
                self.samples.append(self.monitor.backlog())
            self.clock.stop.wait(1.0)

    def join(self) -> None:
        self.thread.join(5)

    def peak(self) -> dict[str, Any]:
        return {
            "max_pending": max((b.pending for b in self.samples), default=None),
            "max_oldest_s": max((b.oldest_s or 0.0 for b in self.samples), default=None),
        }


def wait_drained(monitor: Monitor, timeout: float) -> dict[str, Any]:
    """The backlog now (the end of the load), and how long it takes to reach zero."""
    start = time.monotonic()
    end = monitor.backlog()
    drained_after: float | None = 0.0 if end.pending == 0 else None
    last = end
    while drained_after is None and time.monotonic() - start < timeout:
        time.sleep(0.2)
        last = monitor.backlog()
        if last.pending == 0:
            drained_after = time.monotonic() - start
    return {
        "pending_at_end": end.pending,
        "oldest_at_end_s": end.oldest_s,
        "parked": last.parked,
        "drained_after_s": drained_after,
        "pending_after_wait": last.pending,
        "waited_up_to_s": timeout,
    }
