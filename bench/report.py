"""Figures out of the measurements: percentiles, the tables printed at the end of a run and
the JSON result file."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from bench.config import RESULTS, ROOT
from bench.scenarios import ROW_ORDER


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def latency_stats(values_ms: list[float]) -> dict[str, float]:
    ms = sorted(values_ms)
    return {
        "count": len(ms),
        "mean_ms": sum(ms) / len(ms) if ms else 0.0,
        "p50_ms": percentile(ms, 50),
        "p95_ms": percentile(ms, 95),
        "p99_ms": percentile(ms, 99),
        "max_ms": ms[-1] if ms else 0.0,
    }


def operation_rows(
    latencies: dict[str, list[float]], errors: dict[str, int], elapsed: float
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Per operation name (table order) and in total: count, errors, req/s and latencies in
    ms, from latencies in seconds."""
    order = {name: i for i, name in enumerate(ROW_ORDER)}
    rows: dict[str, dict[str, Any]] = {}
    for op in sorted(latencies, key=lambda o: (order.get(o, len(order)), o)):
        stats = latency_stats([v * 1000 for v in latencies[op]])
        rows[op] = {"errors": errors.get(op, 0), "rps": stats["count"] / elapsed, **stats}
    total = latency_stats([v * 1000 for values in latencies.values() for v in values])
    total.update(errors=sum(errors.values()), rps=total["count"] / elapsed)
    return rows, total


def print_latency_table(rows: dict[str, dict[str, Any]], total: dict[str, Any]) -> None:
    header = (
        f"{'operation':<26}{'count':>8}{'errors':>8}{'req/s':>9}"
        f"{'mean':>9}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}"
    )

    def line(name: str, r: dict[str, Any]) -> str:
        return (
            f"{name:<26}{r['count']:>8}{r['errors']:>8}{r['rps']:>9.1f}{r['mean_ms']:>9.1f}"
            f"{r['p50_ms']:>9.1f}{r['p95_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['max_ms']:>9.1f}"
        )

    print("\nlatency in ms (client-measured)")
    print(header)
    print("-" * len(header))
    for op, r in rows.items():
        print(line(op, r))
    print("-" * len(header))
    print(line("TOTAL", total))
    print()


def print_background(freshness: dict[str, Any] | None, outbox: dict[str, Any]) -> None:
    if freshness is not None:
        lat = freshness["latency_ms"]
        print(
            f"analytics freshness (write -> visible in the summary), {freshness['writes']}"
            f" writes: p50 {lat['p50_ms']:.0f} ms, p95 {lat['p95_ms']:.0f}, p99"
            f" {lat['p99_ms']:.0f}, max {lat['max_ms']:.0f}"
            + (
                f"; {freshness['not_visible']} not visible within"
                f" {freshness['not_visible_within_s']:.0f} s"
                if freshness["not_visible"]
                else ""
            )
            + f" ({freshness['requests']} probe requests, not in the table)"
        )
        for error in freshness["errors"][:3]:
            print(f"  probe error: {error}")
    peak = outbox.get("during_load", {})
    drained = outbox["drained_after_s"]
    print(
        f"outbox backlog: {outbox['pending_before']} before the load,"
        f" peak {peak.get('max_pending')} during it, {outbox['pending_at_end']} at its end"
        + (
            f" (oldest {outbox['oldest_at_end_s']:.1f} s)"
            if outbox["oldest_at_end_s"] is not None
            else ""
        )
        + (
            f", drained {drained:.1f} s later"
            if drained is not None
            else f", {outbox['pending_after_wait']} pending {outbox['waited_up_to_s']:g} s later"
        )
        + (f"; {outbox['parked']} parked (out of attempts)" if outbox["parked"] else "")
    )


def print_cpu(cores: dict[str, float], machine: dict[str, float], check: dict[str, float]) -> None:
    print(
        f"CPU used during the run, in cores (of {os.cpu_count()}): "
        + ", ".join(f"{k} {v:.2f}" for k, v in cores.items())
    )
    print(
        f"CPU check (fixed loop, ms): {check['before']:.0f} before, {check['after']:.0f} after;"
        " compare with other runs before comparing results"
    )
    if machine:
        print(
            "machine CPU during the run (%): "
            + ", ".join(f"{k} {v:.0f}" for k, v in machine.items())
        )


def print_errors(samples: list[dict[str, Any]]) -> None:
    if samples:
        print(f"\nerrors ({len(samples)} distinct kinds; first sample of each):")
        for e in samples[:12]:
            print(f"  {e['operation']} {e['status']} {e['code']} x{e['count']}: {e['sample']}")


def print_cpu_per_op(phase: dict[str, Any]) -> None:
    groups = phase["groups"]
    header = (
        f"{'operation':<24}{'requests':>9}{'req/s':>8}{'p50 ms':>8}{'errors':>7}"
        + "".join(f"{g:>8}" for g in groups)
        + f"{'total':>8}"
    )
    print(
        f"\nCPU ms per request, each operation alone: {phase['users']} users,"
        f" {phase['seconds']:g} s each, idle use subtracted"
    )
    print(header)
    print("-" * len(header))
    for name, row in phase["operations"].items():
        per = row["cpu_ms_per_request"]
        mark = "*" if row.get("net_of") else " "
        print(
            f"{name + mark:<24}{row['requests']:>9}{row['rps']:>8.1f}{row['p50_ms']:>8.1f}"
            f"{row['errors']:>7}"
            + "".join(f"{per[g]:>8.2f}" for g in groups)
            + f"{sum(per.values()):>8.2f}"
        )
    print("-" * len(header))
    if any(row.get("net_of") for row in phase["operations"].values()):
        print("* its GETs subtracted at the get_deal figure: the PATCH alone")
    idle = phase["idle_cores"]
    print(
        "idle use (cores, subtracted): "
        + ", ".join(f"{g} {idle[g]:.3f}" for g in groups)
        + f"; PostgreSQL backends of crm_bench that exited: {phase['pg_exited']},"
        f" CPU reaped by the postmaster (any database) {phase['pg_reaped_s']:.2f} s"
    )


def git_info() -> dict[str, Any]:
    def run(*cmd: str) -> str:
        try:
            return subprocess.run(
                ["git", *cmd], cwd=ROOT, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {"commit": run("rev-parse", "HEAD"), "dirty": bool(run("status", "--porcelain"))}


def machine_info() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def write_json(result: dict[str, Any], stamp: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{stamp}.json"
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return out


def latency_line(what: str, values: list[float]) -> str:
    """`what: n=… p50=… p95=… p99=… max=…` of latencies in ms (failures left out)."""
    ordered = sorted(values)
    return (
        f"{what}: n={len(values)} p50={percentile(ordered, 50):.1f} ms "
        f"p95={percentile(ordered, 95):.1f} ms p99={percentile(ordered, 99):.1f} ms "
        f"max={max(values, default=0):.1f} ms"
    )
