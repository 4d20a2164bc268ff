"""What the API records about each request: its request id, its metrics and the fields of
its access-log line.

`RequestObserver`, the outermost WSGI middleware, sees every request that reaches the app
(not the 408s of crm_api.web_worker): it takes the client's `X-Request-ID` when acceptable
(crm_domain.request_id) or makes one, binds it for the request's log lines and outbox
events (while the application runs and while each chunk of its body is made: a streamed
body runs its queries after the view returned), returns it as `X-Request-ID`, and counts and
times the request when the server closes the response, after its last byte: a streamed
response is in flight, and timed, until then. Flask's `after_request` leaves the route
template, user id, organization id and how the request authenticated (`token`, `key` with the
key's id, or `none`) in the WSGI environ, where the middleware (metric labels) and gunicorn's
access log (crm_api.access_log) find them. The middleware also resets, per request, the caller
the domain reads (crm_domain.context). Per request this costs a request id (uuid4), a few
dictionary operations, the body wrapper and five writes to this process's memory-mapped
metric files, no I/O: about 14 us of CPU under gunicorn (see README "Observability")."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, Response, g, request

from crm_domain import context, request_id

from . import key_auth
from .metrics import IN_FLIGHT, LATENCY, RATE_LIMITED, REQUESTS, UNMATCHED

ROUTE_KEY = "crm.route"
USER_KEY = "crm.user_id"
ORGANIZATION_KEY = "crm.organization_id"
AUTH_KEY = "crm.auth"  # token | key | none
API_KEY_ID_KEY = "crm.api_key_id"
HEADER = "X-Request-ID"
# Anything else is labelled "other": the method is client input, labels must stay few.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class RequestObserver:
    def __init__(self, app: WSGIApp) -> None:
        self.app = app
        # The labelled counter and histogram per (route, method, status): `labels()` costs
        # more than the increment itself. Bounded: routes x methods x statuses.
        self._series: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        exchange = _Exchange(self, environ)

        def start(status_line: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            exchange.status = status_line[:3]
            headers.append((HEADER, exchange.request_id))
            return start_response(status_line, headers, *exc_info)

        token = request_id.bind(exchange.request_id)
        caller = context.bind_caller(None)
        try:
            body = self.app(environ, start)
        except BaseException:
            exchange.finish()
            raise
        finally:
            context.reset_caller(caller)
            request_id.reset(token)
        return _ObservedBody(body, exchange)

    def record(self, environ: dict[str, Any], status: str, elapsed: float) -> None:
        method = environ.get("REQUEST_METHOD", "")
        labels = (
            environ.get(ROUTE_KEY, UNMATCHED),
            method if method in METHODS else "other",
            status,
            environ.get(AUTH_KEY, "none"),
        )
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = (
                REQUESTS.labels(*labels),
                LATENCY.labels(*labels[:3]),
            )
        series[0].inc()
        series[1].observe(elapsed)


class _Exchange:
    """One request, from its arrival until the server closes its response (PEP 3333: after
    the last byte, or when the client went away): in flight, then counted and timed."""

    __slots__ = ("environ", "finished", "observer", "request_id", "started", "status")

    def __init__(self, observer: RequestObserver, environ: dict[str, Any]) -> None:
        self.observer = observer
        self.environ = environ
        self.request_id = request_id.accept(environ.get("HTTP_X_REQUEST_ID"))
        self.status = "500"  # if the application raises instead of answering
        self.finished = False
        IN_FLIGHT.inc()
        self.started = time.perf_counter()

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        elapsed = time.perf_counter() - self.started
        IN_FLIGHT.dec()
        self.observer.record(self.environ, self.status, elapsed)


class _ObservedBody:
    """The response body as the server reads it: each chunk is made with the request id bound
    (a streamed body, e.g. a CSV export, runs its queries then), and `close()` closes the body,
    then ends the observation. What werkzeug's ClosingIterator does, plus the binding around
    each chunk, which it has no place for (a subclass would replace both its methods and
    costs twice as much per request)."""

    __slots__ = ("_close", "_exchange", "_next")

    def __init__(self, body: Iterable[bytes], exchange: _Exchange) -> None:
        self._next = iter(body).__next__
        self._close = getattr(body, "close", None)
        self._exchange = exchange

    def __iter__(self) -> _ObservedBody:
        return self

    def __next__(self) -> bytes:
        token = request_id.bind(self._exchange.request_id)
        try:
            return self._next()
        finally:
            request_id.reset(token)

    def close(self) -> None:
        token = request_id.bind(self._exchange.request_id)
        try:
            if self._close is not None:
                self._close()  # the body's own close (a generator's cleanup, teardown)
        finally:
            request_id.reset(token)
            self._exchange.finish()


def _annotate(response: Response) -> Response:
    """after_request: the route template, who asked and how, and 429s by route."""
    rule = request.url_rule
    route = rule.rule if rule is not None else UNMATCHED
    environ = request.environ
    environ[ROUTE_KEY] = route
    key = g.get(key_auth.REQUEST_KEY)
    claims = g.get("_jwt_extended_jwt")
    if key is not None:
        environ[AUTH_KEY] = "key"
        environ[API_KEY_ID_KEY] = str(key.id)
    else:
        environ[AUTH_KEY] = "token" if claims else "none"
    actor = g.get("actor")
    if actor is not None:
        environ[USER_KEY] = str(actor.user_id)
        environ[ORGANIZATION_KEY] = str(actor.organization_id)
    elif key is not None:  # refused before the actor was made (a read key writing, ...)
        environ[USER_KEY] = str(key.user_id)
        environ[ORGANIZATION_KEY] = str(key.organization_id)
    elif claims:  # a login_required route: no organization
        environ[USER_KEY] = str(claims.get("sub"))
    if response.status_code == 429:
        RATE_LIMITED.labels(route).inc()
    return response


def init_observability(app: Flask) -> None:
    app.wsgi_app = RequestObserver(app.wsgi_app)  # type: ignore[method-assign]
    app.after_request(_annotate)
