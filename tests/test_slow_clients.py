"""Slow clients against the web server as the Procfile runs it (gunicorn with gunicorn.conf.py
as shipped, crm_api.web_worker) with nothing in front.

Clients that stop or trickle in the middle of a request hold no server thread: /health
answers while more of them than the server has threads are held, for each kind alone and all
kinds together. Each gets 408 once its deadline passes (HEADER_READ_TIMEOUT for the head,
BODY_READ_TIMEOUT for a pause in a body, BODY_TOTAL_TIMEOUT for the whole body, small here),
and connections that end are closed without stalling the server. Requests from well-behaved
clients (pipelined, in pieces, chunked, with `Expect: 100-continue`) are still served."""

from __future__ import annotations

import itertools
import json
import logging
import os
import selectors
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from gunicorn.config import Config

from crm_api.web_worker import BufferingThreadWorker
from crm_domain.embedded import free_port
from scripts.procfile import Process, process_env

from .stack import wait_until

HEADER_READ_TIMEOUT = 2.0
BODY_READ_TIMEOUT = 3.0
BODY_TOTAL_TIMEOUT = 5.0
TRICKLE_EVERY = 0.5  # well under BODY_READ_TIMEOUT: only the total deadline stops a trickle
LATE = 15.0  # a deadline is met if the answer comes this long after it at the latest (loaded CI)
WORKERS = (os.cpu_count() or 1) + 1  # gunicorn.conf.py's defaults: cores + 1 processes ...
THREADS = WORKERS * 8  # ... of 8 threads each
SLOW = max(60, THREADS + 12)  # slow clients of each kind: more than the server has threads
LOGIN = "POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


@contextmanager
def _web(test_services, log_dir: Path, name: str, deadlines: float | None) -> Iterator[str]:
    port = free_port()
    env = {
        **process_env(),
        "DATABASE_URL": test_services.database_url,
        "REDIS_URL": test_services.redis_url,
        "REDIS_KEY_PREFIX": f"{test_services.database_name}-{name}",
        "METRICS_ROOT": str(log_dir / "metrics"),
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "ACCESS_LOG": "0",
    }
    for knob in ("WEB_CONCURRENCY", "WEB_THREADS", "WEB_WORKER_CLASS", "WEB_KEEPALIVE"):
        env.pop(knob, None)  # the defaults are what is under test
    for knob, short in (
        ("HEADER_READ_TIMEOUT", HEADER_READ_TIMEOUT),
        ("BODY_READ_TIMEOUT", BODY_READ_TIMEOUT),
        ("BODY_TOTAL_TIMEOUT", BODY_TOTAL_TIMEOUT),
    ):
        env[knob] = str(deadlines or short)
    web = Process("web", env, log_path=log_dir / f"{name}.log")
    web.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _health(base) == 200, 30, 0.2)
        yield base
    finally:
        web.stop()


@pytest.fixture(scope="module")
def patient(test_services, tmp_path_factory) -> Iterator[str]:
    """The server with deadlines long enough that every slow client is still held while the
    test looks at /health."""
    with _web(test_services, tmp_path_factory.mktemp("patient"), "patient", 300.0) as base:
        yield base


@pytest.fixture(scope="module")
def server(app, test_services, tmp_path_factory) -> Iterator[str]:
    """The server with short deadlines (`app`: the database is migrated)."""
    with _web(test_services, tmp_path_factory.mktemp("slow"), "slow", None) as base:
        yield base


def _health(base: str, timeout: float = 10) -> int | None:
    try:
        with urllib.request.urlopen(base + "/health", timeout=timeout) as r:
            r.read()
            return int(r.status)
    except OSError:
        return None


def _connect(base: str, first: bytes) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(first)
    return sock


# The kinds of slow client: each sends the start of a request and then nothing (or, for
# `trickle`, one byte every TRICKLE_EVERY seconds, sent by a Trickler).
KINDS: dict[str, bytes] = {
    # the request line and one header, no blank line
    "head": b"GET /health HTTP/1.1\r\nHost: x\r\n",
    # a chunked body that stops in its first chunk
    "chunked": (LOGIN + "Transfer-Encoding: chunked\r\n\r\n10\r\n").encode() + b'{"email": ',
    # a body of announced length that stops
    "stalled": (LOGIN + "Content-Length: 1000\r\n\r\n").encode() + b'{"email": ',
    # a body of announced length that comes one byte at a time
    "trickle": (LOGIN + "Content-Length: 1000\r\n\r\n").encode() + b'{"email": "',
}
DEADLINES = {
    "head": HEADER_READ_TIMEOUT,
    "chunked": BODY_READ_TIMEOUT,
    "stalled": BODY_READ_TIMEOUT,
    "trickle": BODY_TOTAL_TIMEOUT,
}


class Trickler:
    """Sends one byte to each of its sockets every TRICKLE_EVERY seconds until stopped."""

    def __init__(self) -> None:
        self.socks: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(TRICKLE_EVERY):
            for sock in list(self.socks):
                try:
                    sock.send(b"a")
                except OSError:
                    self.socks.remove(sock)  # answered and closed by the server

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@contextmanager
def _slow_clients(base: str, kinds: list[str], count: int = SLOW) -> Iterator[dict]:
    """{kind: [(socket, when it was opened), ...]}; closed on exit."""
    trickler = Trickler()
    opened: dict[str, list[tuple[socket.socket, float]]] = {kind: [] for kind in kinds}
    try:
        for _ in range(count):
            for kind in kinds:
                sock = _connect(base, KINDS[kind])
                opened[kind].append((sock, time.monotonic()))
                if kind == "trickle":
                    trickler.socks.append(sock)
        yield opened
    finally:
        trickler.stop()
        for socks in opened.values():
            for sock, _ in socks:
                sock.close()


def _still_open(sock: socket.socket) -> bool:
    """Nothing came from the server on `sock`, which it has not closed."""
    sock.setblocking(False)
    try:
        sock.recv(1)  # a byte, or b"" for a closed connection
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)


def _answers(socks: list[socket.socket], bound: float) -> dict[socket.socket, tuple[bytes, float]]:
    """What the server sent on each socket until it closed it, and when it closed it
    (time.monotonic()); waits `bound` seconds at most."""
    selector = selectors.DefaultSelector()
    received: dict[socket.socket, bytes] = {}
    done: dict[socket.socket, tuple[bytes, float]] = {}
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        received[sock] = b""
    end = time.monotonic() + bound
    while len(done) < len(socks) and time.monotonic() < end:
        for key, _ in selector.select(timeout=max(0.0, end - time.monotonic())):
            sock = key.fileobj  # type: ignore[assignment]
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if data:
                received[sock] += data
            else:
                selector.unregister(sock)
                done[sock] = (received[sock], time.monotonic())
    selector.close()
    return done


def _is_408(raw: bytes) -> bool:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head.startswith(b"HTTP/1.1 408") and (
        json.loads(body)["error"]["code"] == "REQUEST_TIMEOUT"
    )


def _exchange(base: str, request: bytes, until: Callable[[bytes], bool]) -> bytes:
    """Send `request` on a new connection; what comes back until `until(received)`."""
    sock = _connect(base, request)
    sock.settimeout(HEADER_READ_TIMEOUT + LATE)
    raw = b""
    try:
        while not until(raw):
            chunk = sock.recv(65536)
            if not chunk:
                break
            raw += chunk
    finally:
        sock.close()
    return raw


def _responses(raw: bytes) -> list[tuple[bytes, bytes]]:
    """The (status line, body) of each complete response in `raw` (bodies with
    Content-Length)."""
    found = []
    while b"\r\n\r\n" in raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            0,  # an interim (1xx) response
        )
        if len(rest) < length:
            break
        found.append((head.split(b"\r\n", 1)[0], rest[:length]))
        raw = rest[length:]
    return found


def _complete(count: int) -> Callable[[bytes], bool]:
    """Whether `count` final (not 1xx) responses have come."""
    return lambda raw: sum(not s.startswith(b"HTTP/1.1 1") for s, _ in _responses(raw)) >= count


# -- slow clients hold no thread -----------------------------------------------------------


@pytest.mark.parametrize(
    "kinds",
    [["head"], ["chunked"], ["stalled"], ["trickle"], list(KINDS)],
    ids=["head", "chunked", "stalled", "trickle", "all-kinds"],
)
def test_health_answers_while_more_slow_clients_than_threads_are_held(
    patient: str, kinds: list[str]
) -> None:
    with _slow_clients(patient, kinds) as opened:
        for _ in range(WORKERS):  # more than one worker process gets a chance
            assert _health(patient, timeout=30) == 200
        held = [sock for socks in opened.values() for sock, _ in socks]
        # /health answered while every slow client was still held, not once they were let go
        assert sum(_still_open(sock) for sock in held) == len(held)


def test_connections_that_end_are_closed_without_stalling_the_server(server: str) -> None:
    """A response that closes the connection waits for the client's FIN; clients that never
    send it are let go after 2 s all at once, not one after another (gunicorn's own close
    blocks its poller 2 s each: 20 such clients per process, 40 s)."""
    request = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    socks = [_connect(server, request) for _ in range(20 * WORKERS)]
    try:
        answers = _answers(socks, bound=LATE)
        assert len(answers) == len(socks)  # all closed by the server
        assert all(raw.startswith(b"HTTP/1.1 200") for raw, _ in answers.values())
    finally:
        for sock in socks:
            sock.close()


# -- and each gets 408 at its deadline -----------------------------------------------------


def test_each_slow_client_gets_408_at_its_deadline(server: str) -> None:
    with _slow_clients(server, list(KINDS)) as opened:
        assert _health(server, timeout=30) == 200
        socks = {sock: (kind, start) for kind, pairs in opened.items() for sock, start in pairs}
        answers = _answers(list(socks), bound=BODY_TOTAL_TIMEOUT + LATE)
    assert len(answers) == len(socks), "some slow clients were never answered"
    for sock, (raw, closed) in answers.items():
        kind, start = socks[sock]
        assert _is_408(raw), (kind, raw[:300])
        waited = closed - start
        assert DEADLINES[kind] - 0.5 <= waited < DEADLINES[kind] + LATE, (kind, waited)


def test_a_client_that_sends_nothing_is_disconnected(server: str) -> None:
    host, port = server.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    start = time.monotonic()
    try:
        answers = _answers([sock], bound=HEADER_READ_TIMEOUT + LATE)
    finally:
        sock.close()
    assert [raw for raw, _ in answers.values()] == [b""]
    assert answers[sock][1] - start >= HEADER_READ_TIMEOUT - 0.5


@pytest.fixture(scope="module")
def token(server: str) -> dict[str, str]:
    request = urllib.request.Request(
        server + "/api/v1/auth/register",
        data=json.dumps(
            {
                "email": f"slow-{time.monotonic_ns()}@example.com",
                "password": "StrongPassword123",
                "name": "Slow",
                "organization_name": "Slow Inc",
            }
        ).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        body = json.loads(r.read())
    return {
        "Authorization": f"Bearer {body['access_token']}",
        "X-Organization-Id": str(body["organization"]["id"]),
    }


def _upload(server: str, token: dict[str, str], first_rows: int) -> socket.socket:
    """POST /imports announcing a 3 MB body (larger than the worker reads ahead: the
    application streams it) and sending `first_rows` rows of it."""
    head = (
        "POST /api/v1/imports HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: multipart/form-data; boundary=b0undary\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in token.items())
        + "Content-Length: 3000000\r\n\r\n"
    )
    part = (
        '--b0undary\r\nContent-Disposition: form-data; name="file"; filename="a.csv"\r\n'
        "Content-Type: text/csv\r\n\r\nname\r\n"
    )
    return _connect(server, head.encode() + part.encode() + b"Ann\r\n" * first_rows)


@pytest.mark.parametrize("trickle", [False, True], ids=["stalled", "trickling"])
def test_a_slow_large_upload_is_answered_408_too(
    server: str, token: dict[str, str], trickle: bool
) -> None:
    """POST /imports takes bodies above what the worker reads ahead; they are read by the
    application, each read waiting at most BODY_READ_TIMEOUT and none after
    BODY_TOTAL_TIMEOUT."""
    trickler = Trickler()
    sock = _upload(server, token, 300_000)  # 1.5 MB, then nothing or a byte at a time
    start = time.monotonic()
    if trickle:
        trickler.socks.append(sock)
    try:
        answers = _answers([sock], bound=BODY_TOTAL_TIMEOUT + LATE)
    finally:
        trickler.stop()
        sock.close()
    raw, closed = answers[sock]
    assert _is_408(raw), raw[:600]
    deadline = BODY_TOTAL_TIMEOUT if trickle else BODY_READ_TIMEOUT
    assert deadline - 1.0 <= closed - start < deadline + LATE


# -- well-behaved clients are served -------------------------------------------------------


def test_pipelined_requests_are_all_answered(server: str) -> None:
    raw = _exchange(
        server,
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 2
        + b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n",
        _complete(3),
    )
    assert [status for status, _ in _responses(raw)] == [
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 404 NOT FOUND",
    ]


# A login the application answers 401 INVALID_CREDENTIALS: proof that it got the whole body.
WRONG_LOGIN = json.dumps({"email": "nobody@example.com", "password": "WrongPassword123"}).encode()


def _read_answer(sock: socket.socket) -> bytes:
    sock.settimeout(LATE)
    raw = b""
    while not _complete(1)(raw):
        raw += sock.recv(65536)
    return raw


def _assert_wrong_login(raw: bytes) -> None:
    [(status, answer)] = _responses(raw)  # one answer (and no interim one)
    assert status.startswith(b"HTTP/1.1 401"), raw
    assert json.loads(answer)["error"]["code"] == "INVALID_CREDENTIALS"


def test_a_request_in_pieces_is_answered(server: str) -> None:
    body = WRONG_LOGIN
    request = (LOGIN + f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    cuts = [7, 30, len(request) - 20, len(request) - 3, len(request)]
    sock = _connect(server, request[: cuts[0]])
    try:
        for start, end in itertools.pairwise(cuts):
            time.sleep(0.1)  # each piece in a packet of its own
            sock.sendall(request[start:end])
        raw = _read_answer(sock)
    finally:
        sock.close()
    _assert_wrong_login(raw)


def test_a_chunked_body_with_trailers_reaches_the_application(server: str) -> None:
    body = WRONG_LOGIN
    chunks = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in (body[:10], body[10:]))
    request = (LOGIN + "Transfer-Encoding: chunked\r\n\r\n").encode() + chunks
    _assert_wrong_login(_exchange(server, request + b"0\r\nX-Trailer: yes\r\n\r\n", _complete(1)))


def test_expect_100_continue_gets_one_interim_answer_then_the_answer(server: str) -> None:
    head = (LOGIN + f"Expect: 100-continue\r\nContent-Length: {len(WRONG_LOGIN)}\r\n\r\n").encode()
    sock = _connect(server, head)
    try:
        sock.settimeout(LATE)
        interim = b""
        while not interim.endswith(b"\r\n\r\n"):
            interim += sock.recv(1)
        sock.sendall(WRONG_LOGIN)
        raw = _read_answer(sock)
    finally:
        sock.close()
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    _assert_wrong_login(raw)  # no second 100 Continue before the answer


def test_a_head_with_bare_line_feeds_is_refused_at_once(server: str) -> None:
    """gunicorn refuses it (400); the worker passes it on instead of waiting for a CRLF."""
    raw = _exchange(server, b"GET /health HTTP/1.1\nHost: x\n\n", lambda raw: b"\r\n\r\n" in raw)
    assert raw.startswith(b"HTTP/1.1 400"), raw


@pytest.mark.parametrize(
    ("setting", "value"),
    [("certfile", __file__), ("proxy_protocol", "v1"), ("http2_cleartext", "upgrade")],
)
def test_the_worker_refuses_to_start_with_what_belongs_to_the_proxy(
    setting: str, value: str
) -> None:
    cfg = Config()
    cfg.set(setting, value)
    with pytest.raises(RuntimeError, match="serves plain HTTP"):
        BufferingThreadWorker.check_config(cfg, logging.getLogger(__name__))
