#!/usr/bin/env python
"""Import N contacts through a running server and measure the API while it works.

    python bench/import_bench.py --base http://127.0.0.1:8000 [--rows 50000] [--readers 2]

Registers a fresh user and organization, generates the CSV in memory, uploads it
(POST /api/v1/imports), polls the job until it is done, and meanwhile `--readers` threads
GET /api/v1/contacts?page_size=1 (token + tenant check + one indexed read) back to back.
Prints the import's duration and rate, the GET latencies (p50/p95/p99) during the import
and the load average. Needs the API, a worker consuming the "imports" queue and one for
the default queue (the outbox drain that starts the job)."""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.client import Client, fresh_tenant
from bench.config import PASSWORD
from bench.report import latency_line


def generate(rows: int) -> bytes:
    tag = uuid.uuid4().hex[:8]
    lines = ["name,email,phone"]
    lines += [f"Person {i},person{i}-{tag}@example.com,+1 555 {i:07d}" for i in range(rows)]
    return ("\r\n".join(lines) + "\r\n").encode()


def multipart(fields: dict[str, str], content: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="bench.csv"'
        "\r\nContent-Type: text/csv\r\n\r\n".encode()
    )
    return b"".join([*parts, content, f"\r\n--{boundary}--\r\n".encode()]), boundary


def reader(client: Client, stop: threading.Event, out: list[float]) -> None:
    """Back-to-back cheap GETs on one keep-alive connection; latencies in ms into `out`
    (infinity for a failure)."""
    while not stop.is_set():
        try:
            resp = client.request("GET", "/contacts", params={"page_size": 1})
            out.append(resp.elapsed * 1000 if resp.status == 200 else float("inf"))
        except Exception:
            out.append(float("inf"))
    client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="http://127.0.0.1:8000")
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--readers", type=int, default=2)
    args = parser.parse_args()
    owner, client = fresh_tenant(args.base, PASSWORD, "Import bench")

    content = generate(args.rows)
    payload, boundary = multipart({"kind": "contacts"}, content)

    idle: list[float] = []
    stop = threading.Event()
    probe = threading.Thread(target=reader, args=(client(), stop, idle))
    probe.start()
    time.sleep(3)
    stop.set()
    probe.join()

    busy: list[float] = []
    stop = threading.Event()
    threads = [
        threading.Thread(target=reader, args=(client(), stop, busy)) for _ in range(args.readers)
    ]
    for t in threads:
        t.start()
    started = time.perf_counter()
    resp = owner.request(
        "POST",
        "/imports",
        content=payload,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    uploaded = time.perf_counter() - started
    assert resp.status == 202, resp.body
    job = resp.body
    loads = []
    while job["status"] not in ("done", "failed"):
        time.sleep(0.25)
        loads.append(os.getloadavg()[0])
        job = owner.call("GET", f"/imports/{job['id']}")
    elapsed = time.perf_counter() - started
    stop.set()
    for t in threads:
        t.join()

    failed = sum(1 for v in busy if v == float("inf"))
    ok = [v for v in busy if v != float("inf")]
    print(
        f"file: {args.rows} rows, {len(content) / 1e6:.1f} MB; upload answered in {uploaded:.2f} s"
    )
    print(
        f"import: {job['status']} in {elapsed:.1f} s ({args.rows / elapsed:,.0f} rows/s); "
        f"created {job['created']}, errors {job['error_rows']}"
    )
    print(latency_line("GET /contacts?page_size=1 idle", idle))
    print(latency_line(f"GET /contacts?page_size=1 during import ({args.readers} readers)", ok))
    print(f"failed GETs during import: {failed}")
    peak = max(loads, default=0.0)
    print(f"load average: peak 1-min {peak:.2f}; now {os.getloadavg()} ({os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
