"""CPU of authentication on the request path: an API key against a login's access token.

In-process (Flask's test client, the real database and Redis; no HTTP server), one user:
1. the whole request path of `GET /deals/{id}` (a small authenticated read), with the key
   and with the token in alternating rounds, CPU seconds of this process per request
   (`time.process_time`), medians of the rounds; the per-process memos work as in
   production (a key's facts and a token's session check are read again once a second);
2. verification alone, as for a credential the process has not seen before: the JWT's
   HS256 signature and claims (flask-jwt-extended's `decode_token`) against the key's
   shape check, SHA-256 and constant-time compare. Either is then one indexed query (a
   token's login session and membership, a key's row and its user's role).

  BENCH_DATABASE_URL=postgresql://root@127.0.0.1:5432/postgres \\
  BENCH_REDIS_URL=redis://127.0.0.1:6379/14 python bench/auth_cost.py [--requests 2000]

Prints the figures and the load average (the machine is shared: compare ratios)."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import time
import timeit
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.config import KEY_PREFIX, log
from bench.infra import own_database, start_infra

API = "/api/v1"


def _cpu_per_request(client: Any, path: str, headers: dict[str, str], n: int) -> float:
    started = time.process_time()
    for _ in range(n):
        response = client.get(path, headers=headers)
        assert response.status_code == 200, response.get_json()
    return (time.process_time() - started) / n


def _cpu_seconds(call: Any, number: int = 2000) -> float:
    """CPU seconds per call (best of 5 runs): waiting for a busy CPU does not count."""
    runs = timeit.repeat(call, number=number, repeat=5, timer=time.process_time)
    return min(runs) / number


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="per round and credential")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--memo-seconds",
        default="1",
        help="ACCESS_CHECK_CACHE_SECONDS (0: every request reads the database, either way)",
    )
    args = parser.parse_args()

    infra = start_infra(os.environ.get("BENCH_DATABASE_URL"), os.environ.get("BENCH_REDIS_URL"))
    name = f"crm_auth_bench_{os.getpid()}"  # a database of its own, dropped at the end
    try:
        with own_database(
            infra,
            name,
            REDIS_KEY_PREFIX=f"{KEY_PREFIX}-auth",
            ACCESS_CHECK_CACHE_SECONDS=args.memo_seconds,
        ):
            from flask_jwt_extended import decode_token

            from crm_api import create_app
            from crm_domain.services.records import api_keys

            app = create_app(OUTBOX_DISPATCH="none", RATELIMIT_ENABLED=False)
            client = app.test_client()
            r = client.post(
                f"{API}/auth/register",
                json={
                    "email": f"auth-{uuid.uuid4().hex[:10]}@bench.example.com",
                    "password": "BenchPassword123",
                    "name": "Auth Bench",
                    "organization_name": "Auth Bench",
                },
            )
            token, org = r.get_json()["access_token"], r.get_json()["organization"]["id"]
            by_token = {"Authorization": f"Bearer {token}", "X-Organization-Id": str(org)}
            contact = client.post(
                f"{API}/contacts", json={"name": "C"}, headers=by_token
            ).get_json()
            deal = client.post(
                f"{API}/deals", json={"contact_id": contact["id"], "title": "D"}, headers=by_token
            ).get_json()
            made = client.post(
                f"{API}/api-keys", json={"name": "bench", "scope": "read"}, headers=by_token
            ).get_json()
            key = made["key"]
            by_key = {"Authorization": f"Bearer {key}"}
            path = f"{API}/deals/{deal['id']}"

            load_before = os.getloadavg()
            _cpu_per_request(client, path, by_token, 200)  # warm up both paths
            _cpu_per_request(client, path, by_key, 200)
            rounds: dict[str, list[float]] = {"token": [], "key": []}
            for _ in range(args.rounds):
                rounds["token"].append(_cpu_per_request(client, path, by_token, args.requests))
                rounds["key"].append(_cpu_per_request(client, path, by_key, args.requests))

            with app.app_context():
                jwt_s = _cpu_seconds(lambda: decode_token(token))
            with app.extensions["crm_db"].autocommit() as conn:
                facts = api_keys.facts(conn, made["prefix"].removeprefix(api_keys.PREFIX))
            assert facts is not None
            now = dt.datetime.now(dt.UTC)

            def check_key() -> None:
                assert api_keys.lookup_of(key) is not None
                api_keys.verify(facts, key, now)

            key_s = _cpu_seconds(check_key)
            load_after = os.getloadavg()

            token_ms = statistics.median(rounds["token"]) * 1000
            key_ms = statistics.median(rounds["key"]) * 1000
            per_round = {k: [round(x * 1000, 3) for x in v] for k, v in rounds.items()}
            print(
                f"GET /deals/{{id}}, CPU ms per request ({args.rounds} rounds of {args.requests},"
                f" ACCESS_CHECK_CACHE_SECONDS={args.memo_seconds}):"
            )
            print(f"  access token  median {token_ms:.3f}  rounds {per_round['token']}")
            print(f"  API key       median {key_ms:.3f}  rounds {per_round['key']}")
            print(f"  key / token   {key_ms / token_ms:.2f}")
            print("verification alone, a credential not seen before (us):")
            print(f"  JWT (HS256 + claims)                     {jwt_s * 1e6:.1f}")
            print(f"  API key (shape + SHA-256 + compare)      {key_s * 1e6:.1f}")
            print(f"load average before {load_before}, after {load_after}")
            app.extensions["crm_db"].dispose()
            return 0
    finally:
        infra.stop()


if __name__ == "__main__":
    log("auth cost: API key against access token")
    raise SystemExit(main())
