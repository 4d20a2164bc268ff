"""CPU and Redis calls of rate limiting on the request path (issue 19).

In-process (Flask's test client, the real database and Redis; no HTTP server), one user,
`GET /deals/{id}` (a small authenticated read) on three apps in alternating rounds:
- `off`: RATELIMIT_ENABLED=false (what the application costs without any limit);
- `exact`: RATELIMIT_SYNC_MS=0, every request's API limit counted in Redis (one Lua script);
- `batched`: the default, counted in process and synced to Redis every RATELIMIT_SYNC_MS.
CPU seconds of this process per request (`time.process_time`), medians and minimums of the
rounds, Flask-Limiter's before-request check alone (`timeit`, best of 5), and Redis
commands and server CPU per request (`INFO commandstats`, `INFO cpu`: the whole server's, so
give the bench a Redis of its own, e.g. `redis-server --port 6390 --save ''`). The API
limit is raised so that no request is refused.

  BENCH_DATABASE_URL=postgresql://root@127.0.0.1:5432/postgres \\
  BENCH_REDIS_URL=redis://127.0.0.1:6390/0 python bench/ratelimit_cost.py [--requests 2000]

Prints the figures and the load average (the machine is shared: compare the differences)."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import timeit
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.config import API, KEY_PREFIX, log
from bench.in_process import register
from bench.infra import own_database, start_infra

VARIANTS: dict[str, dict[str, Any]] = {
    "off": {"RATELIMIT_ENABLED": False},
    "exact": {"RATELIMIT_ENABLED": True, "RATELIMIT_SYNC_MS": 0},
    "batched": {"RATELIMIT_ENABLED": True},
}


def _commands(redis_client: Any) -> tuple[int, int, float]:
    """(commands, of which scripts called: round trips, CPU seconds) of the Redis server so
    far (but INFO)."""
    stats = redis_client.info("commandstats")
    calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}
    calls.pop("info", None)
    cpu = redis_client.info("cpu")
    return (
        sum(calls.values()),
        calls.get("evalsha", 0) + calls.get("eval", 0),
        float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
    )


def _check_us(app: Any, path: str, headers: dict[str, str]) -> float:
    """CPU microseconds of Flask-Limiter's before-request check alone (best of 5 runs)."""
    limiter = next(iter(app.extensions["limiter"]))
    with app.test_request_context(path, headers=headers):

        def check() -> None:
            limiter.context.reset()
            limiter._check_request_limit()

        runs = timeit.repeat(check, number=2000, repeat=5, timer=time.process_time)
    return min(runs) / 2000 * 1e6


def _round(client: Any, path: str, headers: dict[str, str], n: int) -> float:
    started = time.process_time()
    for _ in range(n):
        response = client.get(path, headers=headers)
        assert response.status_code == 200, response.get_json()
    return (time.process_time() - started) / n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="per round and variant")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--profile", help="cProfile this variant's rounds (prints the top 30)")
    args = parser.parse_args()
    names = args.variants.split(",")

    infra = start_infra(os.environ.get("BENCH_DATABASE_URL"), os.environ.get("BENCH_REDIS_URL"))
    name = f"crm_ratelimit_bench_{os.getpid()}"  # a database of its own, dropped at the end
    try:
        with own_database(infra, name, REDIS_KEY_PREFIX=f"{KEY_PREFIX}-ratelimit"):
            import redis

            from crm_api import create_app

            apps = {
                v: create_app(OUTBOX_DISPATCH="none", RATELIMIT_API="1000000/minute", **cfg)
                for v, cfg in VARIANTS.items()
                if v in names
            }
            client = next(iter(apps.values())).test_client()
            _, _, headers = register(client, "Rate Limit Bench")
            contact = client.post(f"{API}/contacts", json={"name": "C"}, headers=headers)
            deal = client.post(
                f"{API}/deals",
                json={"contact_id": contact.get_json()["id"], "title": "D"},
                headers=headers,
            ).get_json()
            path = f"{API}/deals/{deal['id']}"
            clients = {v: app.test_client() for v, app in apps.items()}
            redis_client = redis.Redis.from_url(infra.redis_url)

            load_before = os.getloadavg()
            for v in names:  # warm up every path
                _round(clients[v], path, headers, 200)
            cpu: dict[str, list[float]] = {v: [] for v in names}
            calls: dict[str, list[tuple[float, ...]]] = {v: [] for v in names}
            profiler = None
            if args.profile:
                import cProfile

                profiler = cProfile.Profile(time.process_time)
            for _ in range(args.rounds):
                for v in names:
                    before = _commands(redis_client)
                    if profiler is not None and v == args.profile:
                        profiler.enable()
                    cpu[v].append(_round(clients[v], path, headers, args.requests))
                    if profiler is not None and v == args.profile:
                        profiler.disable()
                    after = _commands(redis_client)
                    calls[v].append(
                        tuple((a - b) / args.requests for a, b in zip(after, before, strict=True))
                    )
            load_after = os.getloadavg()

            print(
                f"GET /deals/{{id}}, CPU ms per request ({args.rounds} rounds of"
                f" {args.requests}), Redis commands per request:"
            )
            medians = {v: statistics.median(cpu[v]) * 1000 for v in names}
            lows = {v: min(cpu[v]) * 1000 for v in names}
            for v in names:
                rounds = [round(x * 1000, 3) for x in cpu[v]]
                print(
                    f"  {v:8} median {medians[v]:.3f}  min {lows[v]:.3f}  rounds {rounds}\n"
                    f"           Redis per request: commands"
                    f" {statistics.median(c[0] for c in calls[v]):.3f}, scripts (round trips)"
                    f" {statistics.median(c[1] for c in calls[v]):.3f}, server CPU"
                    f" {statistics.median(c[2] for c in calls[v]) * 1e6:.1f} us"
                )
            if "off" in medians:
                for v in names:
                    if v != "off":
                        print(
                            f"  {v} - off: median {medians[v] - medians['off']:.3f},"
                            f" min {lows[v] - lows['off']:.3f} ms per request"
                        )
            for v in names:
                if v != "off":
                    check = _check_us(apps[v], path, headers)
                    print(f"  {v}: the before-request check alone {check:.1f} us")
            print(f"load average before {load_before}, after {load_after}")
            if profiler is not None:
                import pstats

                stats = pstats.Stats(profiler).sort_stats("cumulative")
                stats.print_stats(30)
                stats.print_stats("flask_limiter|limits|ratelimit|redis", 40)
                stats.print_callees(
                    "_filter_limits|_evaluate_limits|_inject_headers|resolve_limits"
                )
            for app in apps.values():
                app.extensions["crm_db"].dispose()
            return 0
    finally:
        infra.stop()


if __name__ == "__main__":
    log("rate limiting cost: off, exact, batched")
    raise SystemExit(main())
