"""A read timeout for request bodies, so a client that stops sending mid-body frees its
server thread after BODY_READ_TIMEOUT seconds instead of holding it until it disconnects.

Like nginx's `client_body_timeout`, the timeout bounds each pause between two pieces of the
body, not the whole transfer. The body (bounded by MAX_CONTENT_LENGTH) is read before the
application sees it; a read that times out is answered with 408 in the unified error shape
and the connection is closed. Bodies without a Content-Length (chunked) or above the limit
are left to the application, which refuses the latter with 413."""

from __future__ import annotations

import io
import json
import socket
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from werkzeug.exceptions import ClientDisconnected, RequestTimeout

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_BODY = json.dumps(
    {
        "error": {
            "code": "REQUEST_TIMEOUT",
            "message": "The request body did not arrive in time",
            "details": {},
        }
    }
).encode()


class BodyDeadline:
    def __init__(self, app: WSGIApp, *, timeout: float, max_length: int) -> None:
        self.app = app
        self.timeout = timeout
        self.max_length = max_length

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        sock = environ.get("gunicorn.socket")
        length = _content_length(environ)
        if sock is None or not length or length > self.max_length or self.timeout <= 0:
            return self.app(environ, start_response)
        body = self._read(environ["wsgi.input"], sock, length)
        if body is None:
            start_response(
                "408 Request Timeout",
                [
                    ("Content-Type", "application/json"),
                    ("Content-Length", str(len(_BODY))),
                    ("Connection", "close"),
                ],
            )
            return [_BODY]
        environ["wsgi.input"] = io.BytesIO(body)
        return self.app(environ, start_response)

    def _read(self, stream: Any, sock: socket.socket, length: int) -> bytes | None:
        sock.settimeout(self.timeout)
        try:
            return bytes(stream.read(length))  # short if the client closed early
        except (TimeoutError, OSError):
            return None
        finally:
            sock.settimeout(None)


def _content_length(environ: dict[str, Any]) -> int | None:
    raw = environ.get("CONTENT_LENGTH") or ""
    return int(raw) if raw.isdigit() else None


class BodyReadTimeout(RequestTimeout):
    description = "The request body did not arrive in time"


@contextmanager
def read_deadline(environ: dict[str, Any], timeout: float) -> Iterator[None]:
    """The same bound for a body the middleware leaves to the application (a large upload,
    read as a stream): each pause in the body may last `timeout` seconds; a longer one is a
    408 (BodyReadTimeout) instead of a thread held until the client goes away."""
    sock = environ.get("gunicorn.socket")
    if sock is None or timeout <= 0:
        yield
        return
    sock.settimeout(timeout)
    try:
        yield
    except (TimeoutError, ClientDisconnected) as exc:
        # werkzeug reports a failed read of the body as a disconnected client (400), raised
        # while it handles the read's error
        if isinstance(exc, TimeoutError) or isinstance(exc.__context__, TimeoutError):
            raise BodyReadTimeout() from exc
        raise
    finally:
        sock.settimeout(None)
