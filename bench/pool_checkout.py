"""CPU per pool checkout: no liveness check, SQLAlchemy's pre-ping (a SELECT 1 round trip) and
the poll of the idle socket that crm_domain.db installs (`_closed_by_server`).

Each round opens an engine of one connection per variant, runs N bare checkouts (this
process's CPU), then N checkouts of one `SELECT 1` each (a tiny request: this process's CPU
and its backend's, from /proc, so the server must run on this machine). Rounds alternate
the variants; medians are printed with the load average, since the machine is shared.

    python bench/pool_checkout.py postgresql://root@127.0.0.1:5432/postgres [--n 10000] [--rounds 6]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from crm_domain.db import _closed_by_server
from crm_domain.settings import normalize_db_url

HZ = os.sysconf("SC_CLK_TCK")
VARIANTS = ("none", "pre_ping", "poll")


def engine(url: str, variant: str) -> Engine:
    made = create_engine(url, pool_size=1, pool_pre_ping=variant == "pre_ping")
    if variant == "poll":
        event.listen(made, "checkout", _closed_by_server)
    return made


def cpu_of(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def one_round(url: str, variant: str, n: int) -> tuple[float, float, float]:
    """CPU microseconds: a bare checkout (client), a checkout with one statement (client,
    server)."""
    made = engine(url, variant)
    try:
        with made.connect() as conn:
            backend = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
        client = time.process_time()
        for _ in range(n):
            with made.connect():
                pass
        bare = (time.process_time() - client) / n * 1e6
        server, client = cpu_of(backend), time.process_time()
        for _ in range(n):
            with made.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        return (
            bare,
            (time.process_time() - client) / n * 1e6,
            (cpu_of(backend) - server) / n * 1e6,
        )
    finally:
        made.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("url", help="a PostgreSQL server on this machine")
    parser.add_argument("--n", type=int, default=10_000, help="checkouts per round")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    url = normalize_db_url(args.url)
    results: dict[str, list[tuple[float, float, float]]] = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for variant in VARIANTS:
            results[variant].append(one_round(url, variant, args.n))
    print("CPU microseconds, medians of the rounds")
    print(f"{'variant':9s} {'bare checkout':>14s} {'+SELECT 1 client':>17s} {'server':>8s}")
    for variant, rows in results.items():
        bare, client, server = (statistics.median(r[i] for r in rows) for i in range(3))
        print(f"{variant:9s} {bare:14.1f} {client:17.1f} {server:8.1f}")
    with open("/proc/loadavg") as f:
        print("load average:", " ".join(f.read().split()[:3]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
