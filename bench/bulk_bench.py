#!/usr/bin/env python
"""Update N deals with one bulk action through a running server and measure the API meanwhile.

    python bench/bulk_bench.py --base http://127.0.0.1:8000 [--deals 10000] [--readers 2]

Registers a fresh user and organization, imports N deals of one contact (a CSV import through
the API, then waits until it is done), measures `GET /deals?page_size=1` back to back while
idle, then sends one bulk action (`filter: {}`, `changes: {"stage": "proposal"}`: each deal
gets its timeline entry and its `deal.updated` and `deal.stage_changed` events) and polls it
until it is done while `--readers` threads keep sending that GET. Prints the job's duration
and rate, the GET latencies (p50/p95/p99) idle and during the job, and the load average.
Needs the API, a worker consuming the "imports" queue and one for the default queues (the
outbox drain that starts the job)."""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.client import Client, fresh_tenant
from bench.config import PASSWORD
from bench.import_bench import multipart
from bench.report import latency_line


def reader(client: Client, stop: threading.Event, out: list[float]) -> None:
    """Back-to-back cheap GETs of deals on one keep-alive connection; latencies in ms into
    `out` (infinity for a failure)."""
    while not stop.is_set():
        try:
            resp = client.request("GET", "/deals", params={"page_size": 1})
            out.append(resp.elapsed * 1000 if resp.status == 200 else float("inf"))
        except Exception:
            out.append(float("inf"))
    client.close()


def measure(make: Any, readers: int, work: Any) -> tuple[Any, list[float]]:
    """`work()` while `readers` threads send GETs; (its result, the latencies)."""
    latencies: list[float] = []
    stop = threading.Event()
    threads = [
        threading.Thread(target=reader, args=(make(), stop, latencies)) for _ in range(readers)
    ]
    for t in threads:
        t.start()
    try:
        return work(), latencies
    finally:
        stop.set()
        for t in threads:
            t.join()


def wait_done(owner: Client, path: str, loads: list[float]) -> dict[str, Any]:
    job: dict[str, Any] = owner.call("GET", path)
    while job["status"] not in ("done", "failed", "cancelled"):
        time.sleep(0.25)
        loads.append(os.getloadavg()[0])
        job = owner.call("GET", path)
    return job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="http://127.0.0.1:8000")
    parser.add_argument("--deals", type=int, default=10_000)
    parser.add_argument("--readers", type=int, default=2)
    args = parser.parse_args()
    owner, client = fresh_tenant(args.base, PASSWORD, "Bulk bench")

    email = f"buyer-{uuid.uuid4().hex[:8]}@example.com"
    owner.call("POST", "/contacts", body={"name": "Buyer", "email": email})
    rows = [f"Deal {i},{100 + i}.00,USD,{email}" for i in range(args.deals)]
    content = ("\r\n".join(["title,amount,currency,contact_email", *rows]) + "\r\n").encode()
    payload, boundary = multipart({"kind": "deals"}, content)
    resp = owner.request(
        "POST",
        "/imports",
        content=payload,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert resp.status == 202, resp.body
    imported = wait_done(owner, f"/imports/{resp.body['id']}", [])
    assert imported["created"] == args.deals, imported
    time.sleep(5)  # the import's outbox events and analytics settle

    _, idle = measure(client, 1, lambda: time.sleep(3))

    loads: list[float] = []

    def bulk() -> tuple[dict[str, Any], float, float]:
        started = time.perf_counter()
        resp = owner.request(
            "POST",
            "/bulk-actions",
            body={
                "entity": "deal",
                "action": "update",
                "filter": {},
                "changes": {"stage": "proposal"},
            },
        )
        answered = time.perf_counter() - started
        assert resp.status == 202, resp.body
        job = wait_done(owner, f"/bulk-actions/{resp.body['id']}", loads)
        return job, answered, time.perf_counter() - started

    (job, answered, elapsed), busy = measure(client, args.readers, bulk)
    failed = sum(1 for v in busy if v == float("inf"))
    ok = [v for v in busy if v != float("inf")]
    print(f"bulk action answered in {answered:.2f} s (its {job['total']} ids resolved)")
    print(
        f"bulk action: {job['status']} in {elapsed:.1f} s ({job['done'] / elapsed:,.0f} "
        f"records/s); succeeded {job['succeeded']}, failed {job['failed']}"
    )
    print(latency_line("GET /deals?page_size=1 idle", idle))
    print(latency_line(f"GET /deals?page_size=1 during the job ({args.readers} readers)", ok))
    print(f"failed GETs during the job: {failed}")
    peak = max(loads, default=0.0)
    print(f"load average: peak 1-min {peak:.2f}; now {os.getloadavg()} ({os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
