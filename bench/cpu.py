"""Who used the CPU, from /proc (Linux): each process group of the stack, the PostgreSQL
backends of the bench database apart from the rest of the server, the harness itself and the
machine as a whole; and a fixed loop that times the host's speed.

A process's CPU time (utime + stime) vanishes with it; what remains is added to its parent's
`cutime + cstime` once the parent waits for it. So:
- a process group's figure is its live members' own time plus what they reaped: a gunicorn or
  Celery child that exits still counts, through its parent in the same group;
- the PostgreSQL server's total (the postmaster's own and reaped time plus its live children's)
  is exact, but a backend that exits is reaped by the postmaster, which serves every
  database. Backends of the bench database are therefore followed by pid, sampled every
  0.2 s: one that exits counts up to its last sample (the app's pools keep their connections,
  so few exit), and the postmaster's reaped time says how much left with exiting processes
  of any database (autovacuum, parallel workers, other clients) meanwhile."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
SAMPLE_SECONDS = 0.2


class ProcStat(NamedTuple):
    ppid: int
    pgrp: int
    own: float  # utime + stime, seconds
    reaped: float  # cutime + cstime: children that exited and were waited for
    start: int  # clock ticks after boot: with the pid, names one process


def read_stat(pid: int | str) -> ProcStat | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
        f = raw[raw.rindex(")") + 2 :].split()  # f[0] is field 3 of proc(5)
        return ProcStat(
            int(f[1]),
            int(f[2]),
            (int(f[11]) + int(f[12])) / HZ,
            (int(f[13]) + int(f[14])) / HZ,
            int(f[19]),
        )
    except (OSError, ValueError, IndexError):
        return None


def all_processes() -> dict[int, ProcStat]:
    found: dict[int, ProcStat] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := read_stat(entry.name)) is not None:
            found[int(entry.name)] = stat
    return found


def group_seconds(procs: dict[int, ProcStat], groups: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each named process group (own + reaped time of its members)."""
    by_pgid = {pgid: name for name, pgid in groups.items()}
    used = dict.fromkeys(groups, 0.0)
    for stat in procs.values():
        if stat.pgrp in by_pgid:
            used[by_pgid[stat.pgrp]] += stat.own + stat.reaped
    return used


def _title(pid: int) -> list[str]:
    """A PostgreSQL process's title without `postgres:` and the cluster name:
    ["root", "crm_bench", "127.0.0.1(5123)", "idle"], ["parallel", "worker", "for", "PID", "7"]."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, UnicodeDecodeError):
        return []
    words = raw.split()
    if not words or words[0] != "postgres:":
        return []
    words = words[1:]
    if words and words[0].endswith(":"):  # cluster_name, e.g. "15/main:"
        words = words[1:]
    return words


class PostgresCpu:
    """CPU seconds of one local PostgreSQL server between `start` and `stop`: the backends
    of `database` (and their parallel workers) apart from the rest (see the module doc)."""

    def __init__(self, postmaster: int, database: str, exclude: set[int]) -> None:
        self.postmaster = postmaster
        self.database = database
        self.exclude = exclude  # the harness's own backends
        self.kind: dict[tuple[int, int], bool | None] = {}  # (pid, start) -> a bench process?
        self.seen: dict[tuple[int, int], float] = {}  # bench process -> own CPU last seen
        self.base: dict[tuple[int, int], float] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def _children(self) -> list[int]:
        try:
            path = Path(f"/proc/{self.postmaster}/task/{self.postmaster}/children")
            return [int(p) for p in path.read_text().split()]
        except OSError:  # a kernel without the children file
            return [pid for pid, s in all_processes().items() if s.ppid == self.postmaster]

    def _is_bench(self, pid: int, bench_pids: set[int]) -> bool | None:
        """None while a new backend has no title of its own yet (ask again next time)."""
        words = _title(pid)
        if not words:
            return None
        if words[:4] == ["parallel", "worker", "for", "PID"] and len(words) > 4:
            return words[4].isdigit() and int(words[4]) in bench_pids
        return len(words) > 1 and words[1] == self.database and pid not in self.exclude

    def _sample(self) -> tuple[float, float, set[tuple[int, int]]]:
        """(tree total, postmaster's reaped time, live bench processes) now."""
        main = read_stat(self.postmaster)
        if main is None:
            return 0.0, 0.0, set()
        total = main.own + main.reaped
        alive: set[tuple[int, int]] = set()
        kind: dict[tuple[int, int], bool | None] = {}
        with self.lock:
            bench_pids = {pid for pid, _ in self.seen}
            for pid in sorted(self._children()):  # backends before their parallel workers
                stat = read_stat(pid)
                if stat is None:
                    continue
                total += stat.own + stat.reaped
                key = (pid, stat.start)
                known = self.kind.get(key)
                kind[key] = known if known is not None else self._is_bench(pid, bench_pids)
                if kind[key]:
                    self.seen[key] = stat.own
                    bench_pids.add(pid)
                    alive.add(key)
            self.kind = kind
        return total, main.reaped, alive

    def _run(self) -> None:
        while not self.stopping.wait(SAMPLE_SECONDS):
            self._sample()

    def start(self) -> None:
        self.total0, self.reaped0, _ = self._sample()
        with self.lock:
            self.base = dict(self.seen)
        self.stopping.clear()
        self.thread = threading.Thread(target=self._run, name="pg-cpu", daemon=True)
        self.thread.start()

    def stop(self) -> dict[str, Any]:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join()
        total, reaped, alive = self._sample()
        with self.lock:
            used = {k: v - self.base.get(k, 0.0) for k, v in self.seen.items()}
            self.seen = {k: v for k, v in self.seen.items() if k in alive}
        bench = sum(used.values())
        return {
            "bench": bench,
            "other": max(0.0, total - self.total0 - bench),
            "bench_processes": len(used),
            "bench_exited": sum(1 for k in used if k not in alive),
            "reaped_any_database": reaped - self.reaped0,
        }


def machine_ticks() -> list[int] | None:
    """The machine-wide `cpu` line of /proc/stat (user nice system idle iowait irq softirq
    steal), or None off Linux."""
    try:
        with open("/proc/stat") as stat:
            return [int(v) for v in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return None


def machine_split(before: list[int] | None, after: list[int] | None) -> dict[str, float]:
    """Percent of the machine's CPU time: user, system, iowait, steal, idle."""
    if not before or not after:
        return {}
    d = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(d) or 1
    user, nice, system, idle, iowait, irq, softirq, steal = d
    return {
        "user": 100 * (user + nice) / total,
        "system": 100 * (system + irq + softirq) / total,
        "iowait": 100 * iowait / total,
        "steal": 100 * steal / total,
        "idle": 100 * idle / total,
    }


@dataclass
class CpuUsage:
    seconds: dict[str, float]  # CPU seconds by who used them
    wall: float  # seconds between start and stop
    machine: dict[str, float] = field(default_factory=dict)  # machine_split
    postgres: dict[str, Any] = field(default_factory=dict)  # PostgresCpu.stop

    def cores(self) -> dict[str, float]:
        """Average cores used, plus the rest of the machine (busy time nobody above used)."""
        used = {k: v / self.wall for k, v in self.seconds.items()}
        if self.machine:
            busy = (self.machine["user"] + self.machine["system"]) / 100 * (os.cpu_count() or 1)
            used["rest of machine"] = max(0.0, busy - sum(used.values()))
        return used


class CpuMeter:
    """CPU used between `start` and `stop` by each process group (`groups()`: name -> pgid),
    the PostgreSQL server (if local) and this process."""

    def __init__(self, groups: Callable[[], dict[str, int]], postgres: PostgresCpu | None) -> None:
        self.groups = groups
        self.postgres = postgres

    def start(self) -> None:
        self.pgids = self.groups()
        self.ticks = machine_ticks()
        if self.postgres is not None:
            self.postgres.start()
        self.before = group_seconds(all_processes(), self.pgids)
        self.client = time.process_time()
        self.started = time.monotonic()

    def stop(self) -> CpuUsage:
        after = group_seconds(all_processes(), self.pgids)
        seconds = {name: after[name] - self.before[name] for name in self.pgids}
        pg = self.postgres.stop() if self.postgres is not None else {}
        if pg:
            seconds["postgres crm_bench"] = pg["bench"]
            seconds["postgres other"] = pg["other"]
        seconds["bench client"] = time.process_time() - self.client
        wall = max(time.monotonic() - self.started, 1e-9)
        return CpuUsage(seconds, wall, machine_split(self.ticks, machine_ticks()), pg)


def calibration_ms() -> float:
    """Best of 3 timings of a fixed pure-Python loop: the host's single-core speed right now.
    Compare it between runs (a virtual machine's CPU speed can change by 2x)."""

    def once() -> float:
        start = time.perf_counter()
        total = 0
        for i in range(1_000_000):
            total += i * i
        return time.perf_counter() - start

    return min(once() for _ in range(3)) * 1000
