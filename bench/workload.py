"""Virtual users: threads that run weighted scenarios back to back (a closed loop) against
the API for a bounded time, each on its own keep-alive connection, recording the latency of
every request that starts within the measured window."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from bench.client import Response
from bench.config import log
from bench.scenarios import SCENARIOS
from bench.seed import Dataset, cents_str


class ErrorLog:
    """Counts errors by (operation, status, code) and keeps the first sample of each."""

    MAX_KINDS = 200

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.kinds: dict[tuple[str, str, str], dict[str, Any]] = {}

    def add(self, op: str, status: str, code: str, sample: str) -> None:
        key = (op, status, code)
        with self.lock:
            entry = self.kinds.get(key)
            if entry is not None:
                entry["count"] += 1
            elif len(self.kinds) < self.MAX_KINDS:
                self.kinds[key] = {
                    "operation": op,
                    "status": status,
                    "code": code,
                    "count": 1,
                    "sample": sample[:600],
                }

    def entries(self) -> list[dict[str, Any]]:
        with self.lock:
            return sorted(self.kinds.values(), key=lambda e: -e["count"])


class OpAborted(Exception):
    """A request of a scenario failed (already recorded); the scenario stops."""


@dataclass
class Recorder:
    """Per virtual user (no locking): latencies and errors of the measured window."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class RunClock:
    """Warm-up (not measured), then the measured window; `stop` ends it early."""

    def __init__(self, warmup: float, duration: float) -> None:
        now = time.monotonic()
        self.measure_from = now + warmup
        self.stop_at = self.measure_from + duration
        self.stop = threading.Event()

    def running(self) -> bool:
        return not self.stop.is_set() and time.monotonic() < self.stop_at

    def measuring(self) -> bool:
        return self.running() and time.monotonic() >= self.measure_from


class VirtualUser:
    def __init__(
        self,
        index: int,
        port: int,
        data: Dataset,
        clock: RunClock,
        errors: ErrorLog,
        scenarios: list[tuple[str, float]],
        *,
        random_seed: int,
        think_ms: float,
    ) -> None:
        self.index = index
        self.data = data
        self.user = data.users[index % len(data.users)]
        self.client = data.client(port, self.user)
        self.clock = clock
        self.errors = errors
        self.rec = Recorder()
        self.rng = random.Random(random_seed * 1000 + index)
        self.think = think_ms / 1000
        self.names = [name for name, _ in scenarios]
        self.weights = [weight for _, weight in scenarios]
        # A member changes only their own deals; the other roles any deal.
        self.own_deals: list[int] = list(data.deals_by_owner.get(self.user.user_id, []))
        self.created = 0
        self.cursor: dict[str, Any] | None = None  # an ongoing cursor walk

    def call(
        self,
        op: str,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        """One request of a scenario, recorded under `op`; raises OpAborted if it failed."""
        started = time.monotonic()
        measured = started >= self.clock.measure_from
        try:
            resp = self.client.request(method, path, params=params, body=body, headers=headers)
        except Exception as exc:
            if measured:
                self.rec.errors[op] += 1
                self.rec.latencies[op].append(time.monotonic() - started)
            self.errors.add(op, "exception", type(exc).__name__, f"{method} {path}: {exc!r}")
            raise OpAborted from exc
        if measured:
            self.rec.latencies[op].append(resp.elapsed)
        if not resp.ok:
            if measured:
                self.rec.errors[op] += 1
            code = ""
            if isinstance(resp.body, dict) and isinstance(resp.body.get("error"), dict):
                code = str(resp.body["error"].get("code", ""))
            query = "?" + urlencode(params, doseq=True) if params else ""
            sample = f"{method} {path}{query} -> {resp.status} {json.dumps(resp.body)[:400]}"
            self.errors.add(op, str(resp.status), code, sample)
            raise OpAborted
        return resp

    def run(self) -> None:
        while self.clock.running():
            scenario = self.rng.choices(self.names, self.weights)[0]
            try:
                SCENARIOS[scenario][1](self)
            except OpAborted:
                pass
            except Exception as exc:  # a bug in a scenario: keep it visible, keep going
                self.errors.add(scenario, "client-bug", type(exc).__name__, repr(exc))
            if self.think:
                time.sleep(self.think)
        self.client.close()

    def any_deal(self) -> int:
        return self.rng.choice(self.data.deal_ids)

    def modifiable_deal(self) -> int:
        if self.user.role == "member":
            return self.rng.choice(self.own_deals or self.data.deal_ids)
        return self.any_deal()

    def amount(self, positive: bool = False) -> str:
        return cents_str(self.rng.randint(1 if positive else 0, 10_000_000))


@dataclass
class LoadResult:
    users: list[VirtualUser]
    errors: ErrorLog
    elapsed: float  # the measured window, seconds
    interrupted: bool

    def latencies(self) -> dict[str, list[float]]:
        merged: dict[str, list[float]] = defaultdict(list)
        for vu in self.users:
            for op, values in vu.rec.latencies.items():
                merged[op].extend(values)
        return merged

    def error_counts(self) -> dict[str, int]:
        merged: dict[str, int] = defaultdict(int)
        for vu in self.users:
            for op, count in vu.rec.errors.items():
                merged[op] += count
        return merged

    def requests(self) -> int:
        return sum(len(v) for vu in self.users for v in vu.rec.latencies.values())


def run_workload(
    port: int,
    data: Dataset,
    scenarios: list[tuple[str, float]],
    clock: RunClock,
    *,
    users: int,
    random_seed: int,
    think_ms: float = 0,
    progress: bool = True,
) -> LoadResult:
    """`users` virtual users until `clock` says stop. Requests started before the deadline
    count: the window ends with the last of them."""
    errors = ErrorLog()
    vus = [
        VirtualUser(
            i, port, data, clock, errors, scenarios, random_seed=random_seed, think_ms=think_ms
        )
        for i in range(users)
    ]
    threads = [threading.Thread(target=vu.run, name=f"vu-{vu.index}", daemon=True) for vu in vus]
    for t in threads:
        t.start()
    interrupted = False
    next_report = clock.measure_from + 10
    try:
        while any(t.is_alive() for t in threads):
            time.sleep(0.1)
            now = time.monotonic()
            if progress and next_report <= now < clock.stop_at:
                done = sum(len(v) for vu in vus for v in vu.rec.latencies.values())
                log(f"  {now - clock.measure_from:5.0f}s: {done:,} requests measured")
                next_report += 10
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: stopping the virtual users")
        clock.stop.set()
        for t in threads:
            t.join(10)
    elapsed = max(time.monotonic() - clock.measure_from, 1e-9)
    return LoadResult(vus, errors, elapsed, interrupted)


def mix(weights: dict[str, float], *, cursor_supported: bool) -> list[tuple[str, float]]:
    """The scenarios that run, with their weights (a weight of 0 leaves one out)."""
    chosen = {**weights}
    if not cursor_supported:
        chosen["deals_cursor_walk"] = 0
    return [(name, w) for name, w in chosen.items() if w > 0]
