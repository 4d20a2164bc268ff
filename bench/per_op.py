"""CPU milliseconds per request, operation by operation: each scenario of the mix runs alone
for a few seconds at a fixed concurrency, and the CPU that each process group used meanwhile
(plus the background work it caused, up to the drained outbox) is divided by the requests
served. Less noisy than req/s on a shared machine: other load slows requests down but does
not add to their CPU time."""

from __future__ import annotations

import time
from typing import Any

from bench.config import log
from bench.cpu import CpuMeter, CpuUsage
from bench.freshness import wait_drained
from bench.infra import Monitor
from bench.report import latency_stats
from bench.seed import Dataset
from bench.workload import RunClock, run_workload

# Column -> the CpuMeter figures it adds up.
GROUPS = {
    "web": ("web",),
    "worker": ("worker", "worker-bulk", "beat"),
    "pg": ("postgres crm_bench",),
}
IDLE_SECONDS = 3.0
SETTLE_SECONDS = 1.5  # after the drain: the analytics refresh it scheduled (0.3 s countdown)
DRAIN_TIMEOUT = 30.0


def _by_group(usage: CpuUsage, groups: dict[str, tuple[str, ...]]) -> dict[str, float]:
    return {g: sum(usage.seconds.get(k, 0.0) for k in keys) for g, keys in groups.items()}


def cpu_per_op(
    port: int,
    data: Dataset,
    scenarios: list[tuple[str, float]],
    meter: CpuMeter,
    monitor: Monitor,
    *,
    users: int,
    seconds: float,
    random_seed: int,
) -> dict[str, Any]:
    groups = {g: keys for g, keys in GROUPS.items() if g != "pg" or meter.postgres is not None}
    wait_drained(monitor, DRAIN_TIMEOUT)
    meter.start()
    time.sleep(IDLE_SECONDS)
    idle_usage = meter.stop()
    idle = {g: s / idle_usage.wall for g, s in _by_group(idle_usage, groups).items()}
    log(
        f"CPU per request: {len(scenarios)} operations alone, {users} users, {seconds:g} s each"
        " (idle use: " + ", ".join(f"{g} {c:.3f}" for g, c in idle.items()) + " cores)"
    )
    rows: dict[str, dict[str, Any]] = {}
    pg_exited, pg_reaped = 0, 0.0
    for name, _ in scenarios:
        meter.start()
        result = run_workload(
            port,
            data,
            [(name, 1.0)],
            RunClock(0, seconds),
            users=users,
            random_seed=random_seed,
            progress=False,
        )
        drained = wait_drained(monitor, DRAIN_TIMEOUT)
        time.sleep(SETTLE_SECONDS)
        usage = meter.stop()
        requests = max(result.requests(), 1)
        cpu = {
            g: max(0.0, used - idle[g] * usage.wall) for g, used in _by_group(usage, groups).items()
        }
        latencies = result.latencies()
        stats = latency_stats([v * 1000 for values in latencies.values() for v in values])
        rows[name] = {
            "requests": result.requests(),
            "requests_by_operation": {op: len(v) for op, v in latencies.items()},
            "rps": result.requests() / result.elapsed,
            "p50_ms": stats["p50_ms"],
            "errors": sum(result.error_counts().values()),
            "error_samples": result.errors.entries()[:3],
            "cpu_s": cpu,
            "wall_s": usage.wall,
            "outbox_drained_after_s": drained["drained_after_s"],
            "postgres": usage.postgres,
            "cpu_ms_per_request": {g: 1000 * c / requests for g, c in cpu.items()},
        }
        pg_exited += usage.postgres.get("bench_exited", 0)
        pg_reaped += usage.postgres.get("reaped_any_database", 0.0)
        per = rows[name]["cpu_ms_per_request"]
        log(
            f"  {name}: {result.requests()} requests, "
            + ", ".join(f"{g} {v:.2f}" for g, v in per.items())
            + f" = {sum(per.values()):.2f} CPU ms per request"
        )
        if result.interrupted:
            break
    _patch_alone(rows)
    return {
        "users": users,
        "seconds": seconds,
        "groups": list(groups),
        "idle_cores": idle,
        "operations": rows,
        "pg_exited": pg_exited,
        "pg_reaped_s": pg_reaped,
    }


def _patch_alone(rows: dict[str, dict[str, Any]]) -> None:
    """patch_deal reads each deal first: count its GETs at the get_deal figure and divide
    the rest by the PATCHes (the mixed figure stays in `cpu_ms_per_request_with_get`)."""
    patch, get = rows.get("patch_deal"), rows.get("get_deal")
    if not patch or not get:
        return
    gets = patch["requests_by_operation"].get("get_deal", 0)
    patches = patch["requests_by_operation"].get("patch_deal", 0)
    if not patches:
        return
    patch["cpu_ms_per_request_with_get"] = patch["cpu_ms_per_request"]
    patch["cpu_ms_per_request"] = {
        g: max(0.0, (1000 * c - gets * get["cpu_ms_per_request"][g]) / patches)
        for g, c in patch["cpu_s"].items()
    }
    patch["net_of"] = "get_deal"
