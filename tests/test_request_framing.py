"""The web worker's framer (crm_api.request_framing): a request is ready for a thread exactly
when its last byte has come, however the bytes are split, and gunicorn's own parser agrees
on where it ends; what gunicorn refuses, or a body too large to read ahead, is passed on with
its head instead of being waited on."""

from __future__ import annotations

import itertools

import pytest
from gunicorn.config import Config
from gunicorn.http.parser import RequestParser
from hypothesis import given
from hypothesis import strategies as st

from crm_api.request_framing import RequestFrame

MAX_HEAD = 16384
MAX_BODY = 4096
NEXT = b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n"


def _frame() -> RequestFrame:
    return RequestFrame(max_head=MAX_HEAD, max_body=MAX_BODY)


def _request(body: bytes | None, chunks: list[int] | None, headers: list[bytes]) -> bytes:
    head = b"POST /api/v1/things?a=1 HTTP/1.1\r\nHost: x\r\n" + b"".join(headers)
    if body is None:
        return head + b"\r\n"
    if chunks is None:
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    out, at = [], 0
    for size in [*chunks, len(body)]:
        piece = body[at : at + size]
        if piece:
            out.append(b"%x;n=v\r\n%s\r\n" % (len(piece), piece))
        at += len(piece)
    trailer = b"X-Sum: 1\r\n" if len(chunks) % 2 else b""
    return (
        head + b"Transfer-Encoding: chunked\r\n\r\n" + b"".join(out) + b"0\r\n" + trailer + b"\r\n"
    )


requests = st.builds(
    _request,
    body=st.none() | st.binary(max_size=MAX_BODY // 2),
    chunks=st.none() | st.lists(st.integers(1, 300), max_size=6),
    headers=st.lists(
        st.sampled_from([b"Accept: */*\r\n", b"X-A:b\r\n", b"Expect: 100-continue\r\n"]),
        max_size=3,
        unique=True,
    ),
)


@given(request=requests, cuts=st.lists(st.integers(0, 10_000), max_size=8))
def test_ready_exactly_at_the_last_byte_however_split(request: bytes, cuts: list[int]) -> None:
    frame = _frame()
    points = [0, *sorted({c % len(request) for c in cuts} - {0})]
    for start, end in itertools.pairwise(points):  # every piece but the last
        assert not frame.feed(request[start:end])
    assert frame.feed(request[points[-1] :] + NEXT)
    assert not frame.partial


@given(request=requests)
def test_gunicorn_ends_the_request_where_the_framer_does(request: bytes) -> None:
    frame = _frame()
    assert not frame.feed(request[:-1]) and frame.feed(request[-1:])
    parser = RequestParser(Config(), iter([request + NEXT]), ("127.0.0.1", 1))
    first = next(parser)
    first.body.read()
    assert next(parser).path == "/next"  # the next request starts right after it


def test_a_head_split_inside_its_blank_line_is_found() -> None:
    frame = _frame()
    for piece in (b"GET / HTTP/1.1\r\nHost: x\r", b"\n\r", b"\n"):
        ready = frame.feed(piece)
    assert ready


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\nHost: x\n",  # bare LF
        b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
        b"POST / HTTP/1.1\r\nX-A: b\r\n  folded\r\nContent-Length: 5\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * 9000,
        b"GET / HTTP/1.1\r\nX-Long: " + b"a" * MAX_HEAD,
    ],
    ids=[
        "bare-lf",
        "length-and-chunked",
        "chunked-not-last",
        "no-chunked",
        "chunked-http-1.0",
        "two-lengths",
        "signed-length",
        "folded-line",
        "bad-chunk-size",
        "endless-chunk-size",
        "head-too-long",
    ],
)
def test_what_gunicorn_refuses_is_passed_on_without_waiting(head: bytes) -> None:
    frame = _frame()
    assert frame.feed(head)
    assert frame.partial  # the thread bounds its reads if gunicorn were to read on


def test_a_body_larger_than_read_ahead_is_passed_on_with_its_head() -> None:
    frame = _frame()
    assert frame.feed(b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\nab" % (MAX_BODY + 1))
    assert frame.partial


def test_a_chunked_body_growing_past_read_ahead_is_passed_on() -> None:
    frame = _frame()
    assert not frame.feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert not frame.feed(b"%x\r\n%s\r\n" % (MAX_BODY // 2, b"a" * (MAX_BODY // 2)))
    assert frame.feed(b"%x\r\n" % (MAX_BODY // 2 + 10))
    assert frame.partial


@pytest.mark.parametrize(("version", "expected"), [(b"HTTP/1.1", True), (b"HTTP/1.0", False)])
def test_expect_100_continue_is_noticed_on_http_1_1_only(version: bytes, expected: bool) -> None:
    frame = _frame()
    head = b"POST / %s\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n" % version
    assert not frame.feed(head)
    assert frame.expects_continue is expected
