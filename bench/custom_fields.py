"""Custom fields at scale: one organization with N contacts and N deals (default 100,000
each) and 20 custom fields of mixed types on each entity, values on every record.

In-process (Flask's test client, the real PostgreSQL and Redis; no HTTP server):
1. `GET /deals?cf.segment=smb` (a select custom field, a quarter of the deals) against
   `GET /deals?status=won` (a built-in column, a quarter too), page 1 of 20 with its total
   and with a cursor: wall-clock p50 over the rounds;
2. CPU of a list page of 20 deals (cursor mode: no count) before the 20 definitions exist
   (the JSON is stored, the answer has no custom fields) and after (20 keys per record);
3. creating and deleting a definition on that organization: wall-clock per request.

  BENCH_DATABASE_URL=postgresql://root@127.0.0.1:5432/postgres \\
  BENCH_REDIS_URL=redis://127.0.0.1:6379/14 python bench/custom_fields.py [--records 100000]

Prints the figures and the load average (the machine is shared: compare ratios)."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.config import KEY_PREFIX, log
from bench.in_process import p50_ms, register, wall
from bench.infra import own_database, psycopg_url, start_infra

API = "/api/v1"
OPTIONS = [{"value": v, "label": v.title()} for v in ("smb", "mid", "enterprise", "public")]
# 20 fields: (key, type); the SQL below gives every record a value of each.
FIELDS = [
    ("segment", "single_select"),
    ("region", "single_select"),
    ("tier", "single_select"),
    ("source", "single_select"),
    ("tags", "multi_select"),
    ("labels", "multi_select"),
    ("budget", "number"),
    ("score", "number"),
    ("seats", "number"),
    ("margin", "number"),
    ("note", "text"),
    ("summary", "text"),
    ("code", "text"),
    ("renewal", "date"),
    ("signed", "date"),
    ("next_call", "datetime"),
    ("last_seen", "datetime"),
    ("hot", "boolean"),
    ("verified", "boolean"),
    ("website", "url"),
]
_SQL_VALUE = {
    "single_select": "(ARRAY['smb','mid','enterprise','public'])[1 + (i + {n}) % 4]",
    "multi_select": "jsonb_build_array("
    "(ARRAY['smb','mid','enterprise','public'])[1 + (i + {n}) % 4])",
    "number": "((i * 7 + {n}) % 100000)::text",
    "text": "'note ' || (i + {n})::text",
    "date": "(date '2026-01-01' + ((i + {n}) % 365))::text",
    "datetime": "to_char((timestamptz '2026-01-01' + ((i + {n}) % 10000) * interval '1 hour') "
    "AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"+00:00\"')",
    "boolean": "((i + {n}) % 2 = 0)",
    "url": "'https://example.com/' || (i + {n})::text",
}


def _json_of_fields() -> str:
    pairs = ", ".join(
        f"'{key}', {_SQL_VALUE[kind].format(n=n)}" for n, (key, kind) in enumerate(FIELDS)
    )
    return f"jsonb_build_object({pairs})"


def _seed(url: str, org: int, owner: int, records: int) -> None:
    import psycopg

    values = _json_of_fields()
    with psycopg.connect(psycopg_url(url), autocommit=True) as conn:
        conn.execute(
            f"INSERT INTO contacts (organization_id, owner_id, name, email, custom_fields) "
            f"SELECT {org}, {owner}, 'Contact ' || i, 'c' || i || '@bench.example.com', "
            f"{values} FROM generate_series(1, {records}) AS i"
        )
        conn.execute(
            f"INSERT INTO deals (organization_id, contact_id, owner_id, title, amount, status, "
            f"custom_fields) SELECT {org}, c.id, {owner}, 'Deal ' || c.id, (c.id % 1000) + 1, "
            f"(ARRAY['new','in_progress','won','lost'])[1 + c.id % 4], "
            f"(SELECT {values} FROM (SELECT c.id AS i) AS one) "
            f"FROM contacts c WHERE c.organization_id = {org}"
        )
        conn.execute("ANALYZE contacts")
        conn.execute("ANALYZE deals")


def _cpu_ms(client: Any, path: str, headers: dict[str, str], n: int) -> float:
    started = time.process_time()
    for _ in range(n):
        assert client.get(path, headers=headers).status_code == 200
    return (time.process_time() - started) / n * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000, help="contacts, and deals")
    parser.add_argument("--requests", type=int, default=200, help="per measurement")
    args = parser.parse_args()

    infra = start_infra(os.environ.get("BENCH_DATABASE_URL"), os.environ.get("BENCH_REDIS_URL"))
    name = f"crm_cf_bench_{os.getpid()}"  # a database of its own, dropped at the end
    try:
        with own_database(infra, name, REDIS_KEY_PREFIX=f"{KEY_PREFIX}-cf") as url:
            from crm_api import create_app

            app = create_app(OUTBOX_DISPATCH="none", RATELIMIT_ENABLED=False)
            client = app.test_client()
            org, owner, headers = register(client, "Custom Fields Bench")
            started = time.perf_counter()
            _seed(url, org, owner, args.records)
            log(
                f"seeded {args.records} contacts and deals in {time.perf_counter() - started:.1f} s"
            )

            load_before = os.getloadavg()
            page = f"{API}/deals?page_size=20&cursor="
            first = client.get(f"{API}/deals?page_size=20", headers=headers).get_json()
            page += first["next_cursor"]
            _cpu_ms(client, page, headers, 50)  # warm up
            cpu_without = _cpu_ms(client, page, headers, args.requests)

            def define(entity: str, key: str, kind: str) -> float:
                body: dict[str, Any] = {"entity": entity, "key": key, "label": key, "type": kind}
                if kind.endswith("select"):
                    body["options"] = OPTIONS
                return wall(client, "POST", f"{API}/custom-fields", headers, json=body)

            for entity in ("contact", "deal"):
                for key, kind in FIELDS:
                    define(entity, key, kind)
            cpu_with = _cpu_ms(client, page, headers, args.requests)

            filters = {
                "custom select (cf.segment=smb), page 1 with total": "cf.segment=smb",
                "built-in column (status=won), page 1 with total": "status=won",
            }
            p50 = {
                label: p50_ms(client, f"{API}/deals?{q}", headers, args.requests // 4)
                for label, q in filters.items()
            }
            for label, q in filters.items():
                cursor = client.get(f"{API}/deals?{q}&page_size=20", headers=headers).get_json()
                path = f"{API}/deals?{q}&page_size=20&cursor={cursor['next_cursor']}"
                p50[label.replace("page 1 with total", "cursor page")] = p50_ms(
                    client, path, headers, args.requests // 4
                )

            creates, deletes = [], []
            for i in range(10):
                creates.append(define("deal", f"extra_{i}", "single_select"))
                listed = client.get(
                    f"{API}/custom-fields?entity=deal&page_size=100", headers=headers
                )
                made = next(d for d in listed.get_json()["items"] if d["key"] == f"extra_{i}")
                deletes.append(wall(client, "DELETE", f"{API}/custom-fields/{made['id']}", headers))
            load_after = os.getloadavg()

            print(f"{args.records} contacts and deals, 20 custom fields each (one organization)")
            for label, value in p50.items():
                print(f"  p50 {label:55s} {value:8.2f} ms")
            print(
                f"  list page of 20 deals (cursor), CPU ms: without fields {cpu_without:.3f}, "
                f"with 20 fields {cpu_with:.3f}, ratio {cpu_with / cpu_without:.2f}"
            )
            print(
                f"  create a definition: median {statistics.median(creates) * 1000:.1f} ms, "
                f"max {max(creates) * 1000:.1f} ms"
            )
            print(
                f"  delete a definition: median {statistics.median(deletes) * 1000:.1f} ms, "
                f"max {max(deletes) * 1000:.1f} ms"
            )
            print(f"load average before {load_before}, after {load_after}")
            app.extensions["crm_db"].dispose()
            return 0
    finally:
        infra.stop()


if __name__ == "__main__":
    log("custom fields at scale")
    raise SystemExit(main())
