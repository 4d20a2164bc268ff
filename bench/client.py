"""The harness's HTTP client: one keep-alive connection per virtual user (standard library)."""

from __future__ import annotations

import http.client
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from bench.config import API


@dataclass
class Response:
    status: int
    body: Any
    headers: http.client.HTTPMessage
    elapsed: float  # seconds, request sent -> body read

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class Client:
    """One keep-alive connection; reconnects when the server closed it (sync workers close
    after every response, gthread ones after their keep-alive seconds idle)."""

    RETRYABLE = (
        http.client.RemoteDisconnected,
        http.client.CannotSendRequest,
        http.client.ResponseNotReady,
        ConnectionResetError,
        BrokenPipeError,
    )

    def __init__(
        self,
        port: int,
        *,
        host: str = "127.0.0.1",
        token: str | None = None,
        org_id: int | None = None,
        timeout: float = 120,
    ) -> None:
        self.conn = http.client.HTTPConnection(host, port, timeout=timeout)
        self.token = token
        self.org_id = org_id

    def close(self) -> None:
        self.conn.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        """`body` is sent as JSON; `content` as it is (give its Content-Type in `headers`)."""
        url = API + path + ("?" + urlencode(params, doseq=True) if params else "")
        all_headers = {"Accept": "application/json", **(headers or {})}
        if self.token:
            all_headers["Authorization"] = f"Bearer {self.token}"
        if self.org_id is not None:
            all_headers["X-Organization-Id"] = str(self.org_id)
        data = content
        if body is not None:
            data = json.dumps(body).encode()
            all_headers["Content-Type"] = "application/json"
        start = time.perf_counter()
        for attempt in (0, 1):
            reused = self.conn.sock is not None
            try:
                self.conn.request(method, url, body=data, headers=all_headers)
                resp = self.conn.getresponse()
                raw = resp.read()
                break
            except self.RETRYABLE:
                self.conn.close()
                if attempt or not reused:
                    raise
            except Exception:
                self.conn.close()
                raise
        elapsed = time.perf_counter() - start
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = raw[:500].decode(errors="replace")
        return Response(resp.status, payload, resp.headers, elapsed)

    def call(self, method: str, path: str, **kw: Any) -> Any:
        """A request that must succeed: its JSON body."""
        resp = self.request(method, path, **kw)
        if not resp.ok:
            raise RuntimeError(f"{method} {path} -> {resp.status}: {str(resp.body)[:500]}")
        return resp.body


def login(port: int, email: str, password: str, org_id: int | None = None) -> Client:
    """A client logged in as `email` (working in `org_id`)."""
    client = Client(port, org_id=org_id)
    body = client.call("POST", "/auth/login", body={"email": email, "password": password})
    client.token = body["access_token"]
    return client


def fresh_tenant(base: str, password: str, org_name: str) -> tuple[Client, Callable[[], Client]]:
    """A new user and organization registered on the server at `base`: a client working as
    them, and a maker of more such clients (one keep-alive connection each)."""
    url = urlsplit(base)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    owner = Client(port, host=host)
    body = owner.call(
        "POST",
        "/auth/register",
        body={
            "email": f"bench-{uuid.uuid4().hex[:10]}@example.com",
            "password": password,
            "name": "Bench",
            "organization_name": org_name,
        },
    )
    owner.token, owner.org_id = body["access_token"], body["organization"]["id"]

    def client() -> Client:
        return Client(port, host=host, token=owner.token, org_id=owner.org_id, timeout=30)

    return owner, client
