#!/usr/bin/env python
"""Benchmark the CRM API end to end: the Procfile's web, worker, worker-bulk and beat on a
seeded tenant, a bounded mixed workload of concurrent virtual users with an analytics
freshness probe, and optionally the CPU cost of each operation alone.

    python bench/run.py [--contacts 10000] [--deals 100000] [--duration 60] [--users 8]
                        [--web-workers 3] [--web-threads 1] [--skip-seed] [--profile]
                        [--cpu-per-op]

PostgreSQL: BENCH_DATABASE_URL (a server URL; the database `crm_bench` is created on it),
else an embedded server under .data/bench. Redis: BENCH_REDIS_URL, else an embedded one.
Results: tables on stdout and bench/results/<timestamp>.json. See bench/README.md."""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import report
from bench.config import DB_NAME, KEY_PREFIX, RESULTS, ROOT, log
from bench.cpu import CpuMeter, PostgresCpu, calibration_ms
from bench.freshness import FreshnessProbe, OutboxWatch, wait_drained
from bench.infra import (
    LOG_DIR,
    Infra,
    Monitor,
    Stack,
    clear_redis_keys,
    prepare_database,
    start_infra,
)
from bench.per_op import cpu_per_op
from bench.scenarios import DEFAULT_WEIGHTS
from bench.seed import (
    Dataset,
    Tenant,
    bulk_insert,
    existing_tenant,
    load_dataset,
    register_tenant,
    vacuum_analyze,
)
from bench.workload import RunClock, mix, run_workload


def parse_weight(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    if name not in DEFAULT_WEIGHTS or not value:
        raise argparse.ArgumentTypeError(
            f"expected NAME=WEIGHT with NAME one of {', '.join(DEFAULT_WEIGHTS)}"
        )
    return name, float(value)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--contacts", type=int, default=10_000, help="contacts to seed")
    p.add_argument("--deals", type=int, default=100_000, help="deals to seed")
    p.add_argument("--tasks", type=int, default=5_000, help="tasks to seed")
    p.add_argument("--activities", type=int, default=2_000, help="comments to seed")
    p.add_argument("--duration", type=float, default=60, help="measured seconds (0: no mix)")
    p.add_argument("--warmup", type=float, default=3, help="unmeasured seconds before")
    p.add_argument("--users", type=int, default=8, help="concurrent virtual users")
    p.add_argument("--think-ms", type=float, default=0, help="pause between scenarios")
    p.add_argument(
        "--web-workers",
        type=int,
        default=int(os.environ.get("BENCH_WEB_WORKERS", "3")),
        help="gunicorn worker processes (WEB_CONCURRENCY; default 3)",
    )
    p.add_argument(
        "--web-threads",
        type=int,
        default=int(os.environ.get("BENCH_WEB_THREADS", "1")),
        help="threads per gunicorn worker (WEB_THREADS); 1 = sync, >1 = gthread (default 1)",
    )
    p.add_argument(
        "--worker-concurrency", type=int, default=1, help="Celery worker processes (default 1)"
    )
    p.add_argument("--skip-seed", action="store_true", help="reuse crm_bench as it is")
    p.add_argument(
        "--profile",
        action="store_true",
        help="1 gunicorn worker under cProfile; per-endpoint profiles in bench/results/",
    )
    p.add_argument(
        "--weight",
        type=parse_weight,
        action="append",
        default=[],
        metavar="NAME=W",
        help="override a scenario weight (repeatable; 0 disables)",
    )
    p.add_argument(
        "--probe-every",
        type=float,
        default=1.0,
        metavar="S",
        help="analytics freshness probe: a write at most every S seconds (0: no probe)",
    )
    p.add_argument(
        "--drain-timeout", type=float, default=60, help="seconds to wait for the outbox to drain"
    )
    p.add_argument(
        "--cpu-per-op",
        action="store_true",
        help="then run each operation alone and report CPU ms per request",
    )
    p.add_argument("--cpu-op-seconds", type=float, default=5, help="seconds per operation")
    p.add_argument("--cpu-op-users", type=int, default=4, help="users per operation")
    p.add_argument("--random-seed", type=int, default=42)
    p.add_argument("--database-url", help="PostgreSQL server URL (default: BENCH_DATABASE_URL)")
    p.add_argument("--redis-url", help="Redis URL (default: BENCH_REDIS_URL)")
    args = p.parse_args(argv)
    args.weight = dict(args.weight)
    if min(args.users, args.web_workers, args.web_threads, args.cpu_op_users) < 1:
        p.error("--users, --web-workers, --web-threads and --cpu-op-users must be at least 1")
    if args.duration <= 0 and not args.cpu_per_op:
        p.error("nothing to run: --duration 0 without --cpu-per-op")
    args.database_url = args.database_url or os.environ.get("BENCH_DATABASE_URL")
    args.redis_url = args.redis_url or os.environ.get("BENCH_REDIS_URL")
    return args


def token_minutes(args: argparse.Namespace) -> int:
    """Virtual users log in once: their tokens must outlive every phase."""
    per_op = len(DEFAULT_WEIGHTS) * (args.cpu_op_seconds + 10) if args.cpu_per_op else 0
    return math.ceil((args.warmup + args.duration + args.drain_timeout + per_op) / 60) + 30


def seed(args: argparse.Namespace, infra: Infra, port: int) -> tuple[Tenant, dict[str, Any]]:
    t0 = time.monotonic()
    tenant = register_tenant(port)
    log(
        f"bulk insert: {args.contacts:,} contacts, {args.deals:,} deals,"
        f" {args.tasks:,} tasks, {args.activities:,} comments (COPY)"
    )
    counts = bulk_insert(infra, tenant, args)
    t_copy = time.monotonic() - t0
    log("VACUUM ANALYZE, CHECKPOINT")
    vacuum_analyze(infra)
    seconds = time.monotonic() - t0
    log(f"seeded in {seconds:.1f}s (rows {t_copy:.1f}s, the rest VACUUM ANALYZE + CHECKPOINT)")
    return tenant, {"skipped": False, "counts": counts, "copy_seconds": t_copy, "seconds": seconds}


def open_dataset(infra: Infra, tenant: Tenant, port: int) -> Dataset:
    """What the users pick from; their logins; the analytics cache warmed."""
    data = load_dataset(infra, tenant)
    log(
        f"dataset: org {data.org_id}, {len(data.contact_ids):,} contacts,"
        f" {len(data.deal_ids):,} deals, {len(data.deals_with_tasks):,} deals with tasks"
    )
    if not data.contact_ids or not data.deal_ids:
        raise SystemExit("the workload needs at least one contact and one deal")
    data.log_in(port)
    owner = data.client(port, data.users[0])
    t0 = time.monotonic()
    owner.call("GET", "/analytics/deals/summary")
    owner.call("GET", "/analytics/deals/funnel")
    log(f"analytics cache warmed ({time.monotonic() - t0:.2f}s)")
    probe = owner.call("GET", "/deals", params={"page_size": 1})
    data.cursor_supported = isinstance(probe, dict) and "next_cursor" in probe
    owner.close()
    log(
        "cursor pagination: "
        + (
            "offered (next_cursor), walked by deals_cursor_walk"
            if data.cursor_supported
            else "not offered by the API (no next_cursor in list responses): skipped"
        )
    )
    return data


def mixed_load(
    args: argparse.Namespace, port: int, data: Dataset, monitor: Monitor, meter: CpuMeter
) -> dict[str, Any]:
    """The mixed workload with the freshness probe; prints its tables, returns its results."""
    scenarios = mix({**DEFAULT_WEIGHTS, **args.weight}, cursor_supported=data.cursor_supported)
    if not scenarios:
        raise SystemExit("every scenario has weight 0")
    backlog_before = monitor.backlog()
    load_before = os.getloadavg()
    check_before = calibration_ms()
    log(
        f"load average {load_before[0]:.2f} (1 min); CPU check {check_before:.0f} ms"
        " (a fixed loop; lower = faster host)"
    )
    log(
        f"workload: {args.users} users for {args.duration:g}s (+{args.warmup:g}s warm-up not"
        " measured); scenarios: " + ", ".join(f"{n}={w:g}" for n, w in scenarios)
    )
    deals_at_start = len(data.deal_ids)
    clock = RunClock(args.warmup, args.duration)
    probe = FreshnessProbe(port, data, monitor, clock, args.probe_every)
    watch = OutboxWatch(monitor, clock)
    meter.start()
    if args.probe_every > 0:
        probe.thread.start()
    watch.thread.start()
    load = run_workload(
        port,
        data,
        scenarios,
        clock,
        users=args.users,
        random_seed=args.random_seed,
        think_ms=args.think_ms,
    )
    usage = meter.stop()  # spans warm-up + window
    outbox = wait_drained(monitor, args.drain_timeout)
    watch.join()
    outbox.update(pending_before=backlog_before.pending, during_load=watch.peak())
    freshness = probe.finish() if args.probe_every > 0 else None
    check_after = calibration_ms()
    rows, total = report.operation_rows(load.latencies(), load.error_counts(), load.elapsed)
    cores = usage.cores()
    samples = load.errors.entries()
    report.print_latency_table(rows, total)
    print(
        f"total: {total['count']:,} requests in {load.elapsed:.1f}s = {total['rps']:.1f} req/s,"
        f" {total['errors']} errors" + (" (INTERRUPTED)" if load.interrupted else "")
    )
    report.print_background(freshness, outbox)
    check = {"before": check_before, "after": check_after}
    report.print_cpu(cores, usage.machine, check)
    report.print_errors(samples)
    return {
        "interrupted": load.interrupted,
        "dataset": {
            "org_id": data.org_id,
            "contacts": len(data.contact_ids),
            "deals_at_start": deals_at_start,
            "deals_at_end": len(data.deal_ids),
        },
        "cpu_cores": cores,
        "postgres_cpu": usage.postgres,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "cpu_check_ms": check,
        "machine_cpu_percent": usage.machine,
        "elapsed_s": load.elapsed,
        "operations": rows,
        "total": total,
        "errors": samples,
        "freshness": freshness,
        "outbox": outbox,
    }


def config(args: argparse.Namespace) -> dict[str, Any]:
    profiled = args.profile
    return {
        **{
            k: getattr(args, k)
            for k in ("contacts", "deals", "tasks", "activities", "users", "think_ms")
        },
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "web_workers": 1 if profiled else args.web_workers,
        "web_threads": 1 if profiled else args.web_threads,
        "worker_concurrency": args.worker_concurrency,
        "profile": profiled,
        "skip_seed": args.skip_seed,
        "random_seed": args.random_seed,
        "weights": {**DEFAULT_WEIGHTS, **args.weight},
        "probe_every_s": args.probe_every,
        "cpu_per_op": args.cpu_per_op,
        "cpu_op_seconds": args.cpu_op_seconds,
        "cpu_op_users": args.cpu_op_users,
        "database": "BENCH_DATABASE_URL" if args.database_url else "embedded",
    }


def _sigterm(*_: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Ctrl-C even when started with SIGINT ignored (a background job of a script).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _sigterm)
    started_at = dt.datetime.now(dt.UTC)
    stamp = started_at.strftime("%Y%m%d-%H%M%S")
    profile_dir = RESULTS / f"profile-{stamp}" if args.profile else None
    infra: Infra | None = None
    stack: Stack | None = None
    monitor: Monitor | None = None
    try:
        infra = start_infra(args.database_url, args.redis_url)
        prepare_database(infra, drop=not args.skip_seed)
        tenant = existing_tenant(infra) if args.skip_seed else None
        if tenant is None and (cleared := clear_redis_keys(infra.redis_url)):
            log(f"deleted {cleared} stale '{KEY_PREFIX}:*' keys from Redis")
        stack = Stack(
            infra,
            web_workers=1 if profile_dir else args.web_workers,
            web_threads=1 if profile_dir else args.web_threads,
            worker_concurrency=args.worker_concurrency,
            token_minutes=token_minutes(args),
            profile_dir=profile_dir,
        )
        stack.start()
        layout = (
            "1 worker x 1 thread under cProfile"
            if profile_dir
            else f"{args.web_workers} workers x {args.web_threads} threads"
        )
        log(
            f"Procfile web (gunicorn on 127.0.0.1:{stack.port}, {layout}), worker"
            f" (concurrency {args.worker_concurrency}), worker-bulk, beat; logs in {LOG_DIR}"
        )
        seed_info: dict[str, Any] = {"skipped": True}
        if tenant is None:
            if args.skip_seed:
                log("--skip-seed: no seeded tenant in crm_bench yet, seeding it")
            tenant, seed_info = seed(args, infra, stack.port)
        else:
            log(f"--skip-seed: reusing organization {tenant.org_id}")
        data = open_dataset(infra, tenant, stack.port)
        monitor = Monitor(infra)
        postmaster = monitor.postmaster_pid()
        if postmaster is None:
            log("PostgreSQL does not run on this machine: no PostgreSQL CPU figures")
        pg = PostgresCpu(postmaster, DB_NAME, {monitor.backend_pid}) if postmaster else None
        meter = CpuMeter(stack.groups, pg)
        result: dict[str, Any] = {
            "started_at": started_at.isoformat(),
            "git": report.git_info(),
            "machine": report.machine_info(),
            "config": config(args),
            "seed": seed_info,
            "cursor_supported": data.cursor_supported,
            "interrupted": False,
        }
        if args.duration > 0:
            result.update(mixed_load(args, stack.port, data, monitor, meter))
        if args.cpu_per_op and not result["interrupted"]:
            phase = cpu_per_op(
                stack.port,
                data,
                mix({**DEFAULT_WEIGHTS, **args.weight}, cursor_supported=data.cursor_supported),
                meter,
                monitor,
                users=args.cpu_op_users,
                seconds=args.cpu_op_seconds,
                random_seed=args.random_seed,
            )
            result["cpu_per_op"] = phase
            report.print_cpu_per_op(phase)
        for problem in stack.problems():
            log(f"WARNING: {problem}")
        result["process_problems"] = stack.problems()
        if profile_dir is not None:
            stack["web"].stop()  # the worker writes its profiles when it exits
            result["profile_dir"] = str(profile_dir.relative_to(ROOT))
            summary = profile_dir / "summary.txt"
            if summary.exists():
                print(f"\nprofiles: {profile_dir.relative_to(ROOT)}/ (top of summary.txt)")
                print("\n".join(summary.read_text().splitlines()[:30]))
        result["finished_at"] = dt.datetime.now(dt.UTC).isoformat()
        out = report.write_json(result, stamp)
        print(f"\nresults: {out.relative_to(ROOT)}")
        return 130 if result["interrupted"] else 0
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        if monitor is not None:
            monitor.close()
        if stack is not None:
            stack.stop()
        if infra is not None:
            infra.stop()


if __name__ == "__main__":
    sys.exit(main())
