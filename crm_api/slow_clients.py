"""408 for a request body that stopped arriving.

The web worker (crm_api.web_worker) reads each request in full before the application sees
it, except a body larger than MAX_CONTENT_LENGTH (an import), which the application reads from
the socket under the worker's body deadlines (BODY_READ_TIMEOUT between two pieces,
BODY_TOTAL_TIMEOUT in all). A read past one of them fails with TimeoutError, which werkzeug
reports as a disconnected client (400); it is answered 408 in the unified error shape."""

from __future__ import annotations

from flask import Flask, Response
from werkzeug.exceptions import ClientDisconnected, RequestTimeout

from .errors import http_exception_response

# The largest body most routes take (413 above), and so the most the web worker reads of a
# body before the request is handled.
MAX_CONTENT_LENGTH = 1024 * 1024


class BodyReadTimeout(RequestTimeout):
    description = "The request body did not arrive in time"


def init_slow_clients(app: Flask) -> None:
    @app.errorhandler(TimeoutError)
    def _timeout(error: TimeoutError) -> Response:
        return http_exception_response(BodyReadTimeout())

    @app.errorhandler(ClientDisconnected)
    def _disconnected(error: ClientDisconnected) -> Response:
        # werkzeug raises it while handling the failed read's error
        if isinstance(error.__context__, TimeoutError):
            return http_exception_response(BodyReadTimeout())
        return http_exception_response(error)
