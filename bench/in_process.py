"""What the in-process benchmarks (Flask's test client, no HTTP server) share: a tenant of
their own and wall-clock timing of requests."""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any

from bench.config import API, PASSWORD


def register(client: Any, name: str) -> tuple[int, int, dict[str, str]]:
    """(organization id, owner id, request headers) of a new tenant through the API."""
    r = client.post(
        f"{API}/auth/register",
        json={
            "email": f"bench-{uuid.uuid4().hex[:10]}@bench.example.com",
            "password": PASSWORD,
            "name": name,
            "organization_name": name,
        },
    )
    body = r.get_json()
    headers = {
        "Authorization": f"Bearer {body['access_token']}",
        "X-Organization-Id": str(body["organization"]["id"]),
    }
    return body["organization"]["id"], body["user"]["id"], headers


def wall(client: Any, method: str, path: str, headers: dict[str, str], **kw: Any) -> float:
    """Seconds one request took (it must succeed)."""
    started = time.perf_counter()
    response = client.open(path, method=method, headers=headers, **kw)
    assert response.status_code < 300, response.get_json()
    return time.perf_counter() - started


def p50_ms(client: Any, path: str, headers: dict[str, str], n: int) -> float:
    return statistics.median(wall(client, "GET", path, headers) for _ in range(n)) * 1000
