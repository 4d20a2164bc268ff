"""The web server's worker (gunicorn.conf.py): gunicorn's gthread worker, except that no
thread ever waits for a client to send its request.

Stock gthread hands a connection to a thread as soon as its first bytes arrive; the thread
then blocks until the client has sent the rest, so a few dozen clients that stop half-way
hold every thread (60 of them kept /health from answering for 40 s). Here a thread reads
what has arrived without blocking; if the request is not all there (head, and a body up to
MAX_CONTENT_LENGTH) it gives the connection back to the poller at once, with the bytes so
far, and takes it up again when more arrive. Only a complete request is handled. The poller
(the worker's main thread, which accepts connections and watches kept-alive ones) keeps the
deadlines (crm_domain.settings.ClientDeadlines):

- the head must be complete within HEADER_READ_TIMEOUT of the connection (or, on a kept-alive
  connection, of the request's first byte);
- a body may pause at most BODY_READ_TIMEOUT between two pieces, and must be complete within
  BODY_TOTAL_TIMEOUT of the end of the head, however steadily it trickles.

Past a deadline the client gets 408 (the API's JSON error) and the connection is closed; a
connection that sent nothing is just closed. A slow client therefore holds a socket and the
bytes it sent, never a thread (memory: at most worker_connections, 1000 by default, times
MAX_CONTENT_LENGTH per process, should that many clients each send a whole body and stall).
The reads stay in the threads, as in stock gthread: a read on the main thread would wait for
the GIL behind busy threads on every request.

A larger body (an import, up to IMPORT_MAX_BYTES) is handled with its head; the thread reads
it under the same two body deadlines (a socket timeout before each read) and then closes the
connection instead of draining what the application left unread. Connections are closed by
the poller without blocking it (gunicorn's graceful close waits up to 2 s for the client's
FIN on the main thread, so clients that never close stalled the poller).

Overload: a worker runs at most WEB_MAX_RUNNING complete requests at once (by default its
threads less one, so that a thread is always free to read requests, answer the probes and turn
requests away) and parks at most WEB_MAX_QUEUED more, complete, in a FIFO queue of its own;
a request finding both full gets 503 with Retry-After (the API's JSON error) at once, before
the application sees it, and the connection is closed. A slot that frees goes to the oldest
parked request. GET /health and /ready are never counted nor turned away. This bounds what
waits in a worker (the thread pool's own queue is unbounded), so that at several times the
saturating concurrency the requests served keep their latency and the excess is told to come
back, instead of every request waiting longer (docs/PERFORMANCE.md, "Overload").

gunicorn's parser still parses and checks each request; the worker only finds where it ends
(crm_api.request_framing), and sends `100 Continue` itself when a body is expected. Plain
HTTP/1.x only: TLS, HTTP/2 and the PROXY protocol are refused at start (they belong to the
proxy in front); WEB_WORKER_CLASS=gthread selects gunicorn's own worker."""

from __future__ import annotations

import contextlib
import json
import math
import selectors
import socket
import threading
import time
from collections import deque
from concurrent.futures import Future
from functools import partial
from typing import Any

from gunicorn import http
from gunicorn.http.message import DEFAULT_MAX_HEADERFIELD_SIZE, MAX_HEADERS, MAX_REQUEST_LINE
from gunicorn.workers.gthread import ThreadWorker

from crm_domain.settings import ClientDeadlines, admission_from_env, client_deadlines_from_env

from .request_framing import RequestFrame
from .slow_clients import MAX_CONTENT_LENGTH

RECV_SIZE = 65536
LINGER_SECONDS = 2.0  # how long a closing connection may take to send its FIN (gunicorn's)
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_TIMEOUT_BODY = json.dumps(
    {
        "error": {
            "code": "REQUEST_TIMEOUT",
            "message": "The request did not arrive in time",
            "details": {},
        }
    }
).encode()
TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)

RETRY_AFTER_OVERLOADED = 1  # seconds
_OVERLOADED_BODY = json.dumps(
    {
        "error": {
            "code": "SERVICE_UNAVAILABLE",
            "message": "The server is at capacity; try again after Retry-After seconds",
            "details": {"reason": "overloaded"},
        }
    }
).encode()
OVERLOADED_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Retry-After: %d\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
    % (RETRY_AFTER_OVERLOADED, len(_OVERLOADED_BODY), _OVERLOADED_BODY)
)
PROBES = (b"GET /health ", b"GET /health?", b"GET /ready ", b"GET /ready?")

_MORE, _READY, _GONE = "more", "ready", "gone"
_WAIT = object()  # handle(): the request is not all there; the poller waits for more
_PARKED = object()  # handle(): the request waits in the worker's queue for a turn


class Incoming:
    """A request being received: its bytes so far and its current deadline."""

    __slots__ = ("body_end", "continue_sent", "deadline", "deadlines", "frame")

    def __init__(self, frame: RequestFrame, deadlines: ClientDeadlines, now: float) -> None:
        self.frame = frame
        self.deadlines = deadlines
        self.deadline = now + deadlines.header
        self.body_end = math.inf  # BODY_TOTAL_TIMEOUT from the end of the head
        self.continue_sent = False

    def feed(self, data: bytes, now: float) -> bool:
        had_head = bool(self.frame.head_end)
        ready = self.frame.feed(data)
        if self.frame.head_end:
            if not had_head:
                self.body_end = now + self.deadlines.body_total
            self.deadline = min(now + self.deadlines.body_idle, self.body_end)
        return ready

    @property
    def last_read(self) -> float:
        """No read of a request handled unfinished (its body larger than the worker reads
        ahead, or a head for gunicorn to refuse) starts after this."""
        return self.body_end if self.frame.head_end else self.deadline


class BodyDeadline:
    """Stands in for the socket of a request whose body a thread reads (gunicorn's
    SocketUnreader only calls `recv`): each read waits at most `idle` seconds, and none
    starts after `end`."""

    def __init__(self, sock: socket.socket, idle: float, end: float) -> None:
        self.sock = sock
        self.idle = idle
        self.end = end

    def recv(self, size: int) -> bytes:
        remaining = self.end - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request body took longer than BODY_TOTAL_TIMEOUT")
        self.sock.settimeout(min(self.idle, remaining))
        return self.sock.recv(size)


class BufferingThreadWorker(ThreadWorker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deadlines = client_deadlines_from_env()
        self.max_head = _max_head(self.cfg)
        self.incoming: dict[Any, Incoming] = {}  # connection -> request being received
        self.lingering: dict[Any, float] = {}  # closing connection -> when to stop waiting
        self.next_expiry = math.inf  # no deadline in either dict is earlier
        admission = admission_from_env()
        self.max_running = admission.running_for(self.cfg.threads)
        self.max_queued = admission.max_queued
        self.admission_lock = threading.Lock()
        self.running = 0  # requests in the application (probes not counted)
        self.parked: deque[Any] = deque()  # complete requests waiting for a turn

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        super().check_config(cfg, log)
        if cfg.is_ssl or cfg.proxy_protocol != "off" or cfg.http2_cleartext != "off":
            raise RuntimeError(
                f"{cls.__name__} serves plain HTTP/1.x: terminate TLS, HTTP/2 and the PROXY "
                "protocol in the proxy in front, or set WEB_WORKER_CLASS=gthread"
            )

    # -- the poller (main thread) ---------------------------------------------------------

    def finish_request(self, conn: Any, fs: Future[Any]) -> None:
        result = None if fs.cancelled() or fs.exception() is not None else fs.result()
        if result is _PARKED:
            return  # the connection is in self.parked; _release hands it to a thread
        if result is _WAIT:
            self._wait(conn)
        elif result is False:
            self._linger(conn)  # instead of gunicorn's close, which blocks the poller
        else:
            super().finish_request(conn, fs)

    def _wait(self, conn: Any) -> None:
        """Watch a connection whose request is not all there for more bytes or its deadline."""
        self.incoming[conn] = conn.incoming
        self.next_expiry = min(self.next_expiry, conn.incoming.deadline)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._readable, conn))

    def _readable(self, conn: Any, _sock: Any) -> None:
        self.poller.unregister(conn.sock)
        del self.incoming[conn]
        self.enqueue_req(conn)  # a thread reads what came (handle)

    def _linger(self, conn: Any) -> None:
        """Close after the client's FIN (or LINGER_SECONDS), so that data it still sends does
        not make the kernel reset the connection and lose the response."""
        try:
            conn.sock.setblocking(False)
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        self.lingering[conn] = until = time.monotonic() + LINGER_SECONDS
        self.next_expiry = min(self.next_expiry, until)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._drain, conn))

    def _drain(self, conn: Any, _sock: Any) -> None:
        try:
            if conn.sock.recv(RECV_SIZE):
                return
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        self.poller.unregister(conn.sock)
        del self.lingering[conn]
        self._close(conn)

    def _close(self, conn: Any) -> None:
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self) -> None:
        """gthread's loop calls this after every turn: also end the requests and closing
        connections past their deadline (and, once the worker stops, idle new ones)."""
        super().murder_pending()
        now = time.monotonic()
        if now < self.next_expiry and self.alive:
            return
        self.next_expiry = math.inf
        for conn, incoming in list(self.incoming.items()):
            if incoming.deadline <= now or not (self.alive or incoming.frame.data):
                self.poller.unregister(conn.sock)
                del self.incoming[conn]
                if incoming.frame.data:
                    self.log.debug("408 for %s: the request did not arrive in time", conn.client)
                    _send(conn.sock, TIMEOUT_RESPONSE)
                    self._linger(conn)
                else:
                    self._close(conn)
            else:
                self.next_expiry = min(self.next_expiry, incoming.deadline)
        for conn, until in list(self.lingering.items()):
            if until <= now:
                self.poller.unregister(conn.sock)
                del self.lingering[conn]
                self._close(conn)
            else:
                self.next_expiry = min(self.next_expiry, until)

    # -- a thread ---------------------------------------------------------------------------

    def handle(self, conn: Any) -> Any:
        """Read what has arrived, without blocking; handle the request if it is all there,
        else give the connection back to the poller (_WAIT)."""
        incoming: Incoming | None = getattr(conn, "incoming", None)
        if incoming is None:  # a new request (on a new or a kept-alive connection)
            now = time.monotonic()
            frame = RequestFrame(max_head=self.max_head, max_body=MAX_CONTENT_LENGTH)
            incoming = conn.incoming = Incoming(frame, self.deadlines, now)
            if conn.parser is not None:  # bytes read ahead behind the previous request
                ahead = conn.parser.unreader.take_buffered()
                if ahead:
                    incoming.feed(ahead, now)
        if not incoming.frame.ready:
            state = self._receive(conn, incoming)
            if state is not _READY:
                if state is _GONE:
                    conn.incoming = None
                    return False
                return _WAIT
        counted = not incoming.frame.data.startswith(PROBES)
        if counted and not getattr(conn, "admitted", False):
            with self.admission_lock:
                if self.running < self.max_running:
                    self.running += 1
                elif len(self.parked) < self.max_queued:
                    self.parked.append(conn)
                    return _PARKED
                else:
                    counted = False
            if not counted:
                return self._turn_away(conn)
        conn.admitted = False
        if conn.parser is None:  # else gthread makes it in TConn.init
            conn.parser = http.get_parser(self.cfg, conn.sock, conn.client)
        conn.parser.unreader.unread(bytes(incoming.frame.data))
        conn.data_ready = True  # gthread would otherwise wait for bytes (5 s, on this thread)
        try:
            return super().handle(conn)
        finally:
            conn.incoming = None
            if counted:
                self._release()

    def _turn_away(self, conn: Any) -> bool:
        """503 with Retry-After, without running the application; the connection closes."""
        conn.incoming = None
        self.log.debug("503 for %s: the worker is at capacity", conn.client)
        _send(conn.sock, OVERLOADED_RESPONSE)
        return False

    def _release(self) -> None:
        """A request left the application: its turn goes to the oldest parked one."""
        with self.admission_lock:
            if not self.parked:
                self.running -= 1
                return
            conn = self.parked.popleft()
        conn.admitted = True  # its turn was taken for it (self.running is unchanged)
        try:
            self.enqueue_req(conn)
        except RuntimeError:  # the worker is stopping: its thread pool takes no more
            with self.admission_lock:
                self.running -= 1
            self._close(conn)

    def _receive(self, conn: Any, incoming: Incoming) -> str:
        """Read until the request is all there or nothing more has come."""
        if conn.sock.gettimeout() != 0.0:
            conn.sock.setblocking(False)
        while True:
            try:
                data = conn.sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                return _GONE
            if not data:
                return _GONE
            if incoming.feed(data, time.monotonic()):
                return _READY
        frame = incoming.frame
        if frame.head_end and frame.expects_continue and not incoming.continue_sent:
            incoming.continue_sent = True
            _send(conn.sock, CONTINUE)
        return _MORE

    def handle_request(self, req: Any, conn: Any) -> Any:
        incoming: Incoming = conn.incoming
        if incoming.continue_sent:
            req._expected_100_continue = False  # _receive sent it; gunicorn would again
        if incoming.frame.partial:  # the connection closes after it (_keepalive_after)
            conn.parser.unreader.sock = BodyDeadline(
                conn.sock, self.deadlines.body_idle, incoming.last_read
            )
        return super().handle_request(req, conn)

    def _keepalive_after(self, conn: Any, keepalive: bool) -> bool:
        # A body read from the socket may have an unread rest, which gunicorn would drain for
        # up to 5 s from a client that may be slow: close the connection instead.
        if conn.incoming.frame.partial:
            return False
        return bool(super()._keepalive_after(conn, keepalive))


def _send(sock: socket.socket, data: bytes) -> None:
    """Send a short answer without blocking (it fits in an idle socket's buffer)."""
    with contextlib.suppress(OSError):
        sock.send(data)


def _max_head(cfg: Any) -> int:
    """A bound above gunicorn's own limit on a request head: a head longer than this is one
    gunicorn refuses, so it is passed on instead of waited on."""
    line = MAX_REQUEST_LINE if cfg.limit_request_line else 1024 * 1024  # 0: gunicorn's "no limit"
    fields = (
        cfg.limit_request_fields if 0 < cfg.limit_request_fields <= MAX_HEADERS else MAX_HEADERS
    )
    size = cfg.limit_request_field_size
    size = size if size > 0 else DEFAULT_MAX_HEADERFIELD_SIZE
    return line + 4 + fields * (size + 2) + 4
