"""A real webhook receiver for tests: an http.server on 127.0.0.1 (or another loopback
address) in a thread that records every request and answers from a script of status codes
(then 200). It can be stopped and started again on the same port (a receiver that is down for
a while), and hold its answers until the test opens a gate (a request in flight for as long
as the test needs)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook

from crm_domain.embedded import free_port


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered

    @property
    def payload(self) -> dict[str, Any]:
        return json.loads(self.body)

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


class Receiver:
    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port()
        self.requests: list[Received] = []
        self.script: list[int | tuple[int, dict[str, str]]] = []  # answers to come, then 200
        self.delay = 0.0  # seconds to wait before answering
        self.gate: threading.Event | None = None  # if set: answer only once it is open
        self.arrived = 0  # requests whose body has been read (answered or not)
        self.in_flight = 0  # requests read and not yet answered
        self.most_in_flight = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/hooks"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.arrived += 1
                    receiver.in_flight += 1
                    receiver.most_in_flight = max(receiver.most_in_flight, receiver.in_flight)
                if receiver.delay:
                    time.sleep(receiver.delay)
                if receiver.gate is not None:
                    receiver.gate.wait(300)  # a test that forgets to open it ends anyway
                with receiver._lock:
                    receiver.in_flight -= 1
                    answer = receiver.script.pop(0) if receiver.script else 200
                    status, headers = answer if isinstance(answer, tuple) else (answer, {})
                    receiver.requests.append(
                        Received(
                            self.path, {k.lower(): v for k, v in self.headers.items()}, body, status
                        )
                    )
                reply = json.dumps({"status": status}).encode()
                try:
                    self.send_response(status)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(reply)))
                    self.end_headers()
                    self.wfile.write(reply)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the sender gave up waiting (its deadline passed)

            do_GET = do_POST

            def log_message(self, format: str, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def received(self) -> list[Received]:
        with self._lock:
            return list(self.requests)

    def verified(self, *secrets: str) -> list[dict[str, Any]]:
        """Every request's payload, each verified with standardwebhooks against one of the
        secrets (raises WebhookVerificationError otherwise)."""
        payloads = []
        for request in self.received():
            errors = []
            for secret in secrets:
                try:
                    payloads.append(Webhook(secret).verify(request.body, request.headers))
                    break
                except Exception as exc:
                    errors.append(exc)
            else:
                raise errors[0]
        return payloads
