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
import http.client
import json
import os
import threading
import time
import uuid
from typing import Any
from urllib.parse import urlsplit


def request(
    base: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port or 80, timeout=120)
    try:
        conn.request(method, "/api/v1" + path, body=body, headers=headers or {})
        response = conn.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw else None
    finally:
        conn.close()


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


def reader(base: str, headers: dict[str, str], stop: threading.Event, out: list[float]) -> None:
    """Back-to-back cheap GETs on one keep-alive connection; latencies in ms into `out`."""
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port or 80, timeout=30)
    while not stop.is_set():
        start = time.perf_counter()
        try:
            conn.request("GET", "/api/v1/contacts?page_size=1", headers=headers)
            response = conn.getresponse()
            response.read()
            ok = response.status == 200
        except (OSError, http.client.HTTPException):
            ok = False
            conn.close()
        out.append((time.perf_counter() - start) * 1000 if ok else float("inf"))


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="http://127.0.0.1:8000")
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--readers", type=int, default=2)
    args = parser.parse_args()

    email = f"bench-{uuid.uuid4().hex[:10]}@example.com"
    status, body = request(
        args.base,
        "POST",
        "/auth/register",
        json.dumps(
            {
                "email": email,
                "password": "BenchPassword123",
                "name": "Bench",
                "organization_name": "Import bench",
            }
        ).encode(),
        {"Content-Type": "application/json"},
    )
    assert status == 201, body
    auth = {
        "Authorization": f"Bearer {body['access_token']}",
        "X-Organization-Id": str(body["organization"]["id"]),
    }
    content = generate(args.rows)
    payload, boundary = multipart({"kind": "contacts"}, content)

    idle: list[float] = []
    stop = threading.Event()
    probe = threading.Thread(target=reader, args=(args.base, auth, stop, idle))
    probe.start()
    time.sleep(3)
    stop.set()
    probe.join()

    busy: list[float] = []
    stop = threading.Event()
    threads = [
        threading.Thread(target=reader, args=(args.base, auth, stop, busy))
        for _ in range(args.readers)
    ]
    for t in threads:
        t.start()
    started = time.perf_counter()
    status, job = request(
        args.base,
        "POST",
        "/imports",
        payload,
        {**auth, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    uploaded = time.perf_counter() - started
    assert status == 202, job
    loads = []
    while job["status"] not in ("done", "failed"):
        time.sleep(0.25)
        loads.append(os.getloadavg()[0])
        status, job = request(args.base, "GET", f"/imports/{job['id']}", headers=auth)
        assert status == 200, job
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
    for label, values in (("idle", idle), (f"during import ({args.readers} readers)", ok)):
        print(
            f"GET /contacts?page_size=1 {label}: n={len(values)} "
            f"p50={percentile(values, 50):.1f} ms p95={percentile(values, 95):.1f} ms "
            f"p99={percentile(values, 99):.1f} ms max={max(values):.1f} ms"
        )
    print(f"failed GETs during import: {failed}")
    peak = max(loads, default=0.0)
    print(f"load average: peak 1-min {peak:.2f}; now {os.getloadavg()} ({os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
