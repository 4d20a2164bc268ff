"""Where one HTTP/1.x request ends in the bytes received so far, so that the web worker
(crm_api.web_worker) hands a request to a thread only once it is all there.

Only the framing is worked out: the end of the head (its blank line), then the end of the body
by Content-Length or by the chunked transfer coding (RFC 9112 sections 2, 6 and 7.1).
gunicorn's own parser still parses and checks the whole request when a thread takes it. So
whatever the framer does not recognise (a head over the size limit, a bare LF, conflicting or
malformed lengths, a coding other than a final `chunked`, a malformed chunk size) is passed on
at once, for gunicorn to refuse, instead of being waited on; and a body longer than `max_body`
is passed on after its head, to be read by the thread under the worker's body deadlines."""

from __future__ import annotations

import re

_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_MAX_CHUNK_LINE = 8192  # a size line with extensions (gunicorn: limit_request_field_size)
_MAX_TRAILERS = 65536


class RequestFrame:
    """The bytes of one request as they arrive (`data`, which may run on into the next
    pipelined request) and how far the request goes."""

    def __init__(self, *, max_head: int, max_body: int) -> None:
        self.max_head = max_head
        self.max_body = max_body
        self.data = bytearray()
        self.head_end = 0  # offset just past the head's blank line; 0 while the head is coming
        self.ready = False  # a thread can take the request now (see `feed`)
        self.partial = False  # ready, but not all here: the thread may read the rest itself
        self.expects_continue = False  # `Expect: 100-continue` on an HTTP/1.1 request
        self._body_end = -1  # a body of known length ends here
        self._chunk = -1  # a chunked body: where the next chunk-size line starts

    def feed(self, data: bytes) -> bool:
        """Add the bytes just received. True once a thread can take the request: its head and
        whole body are here, or it is one to pass on (see the module's docstring)."""
        start = len(self.data)
        self.data += data
        if not self.head_end:
            end = self.data.find(b"\r\n\r\n", max(0, start - 3))
            if end < 0:
                if len(self.data) > self.max_head or _bare_lf(self.data, start):
                    self._pass_on()
                return self.ready
            self.head_end = end + 4
            self._frame(bytes(self.data[:end]))
        if not self.ready:
            self._check_body()
        return self.ready

    def _frame(self, head: bytes) -> None:
        lowered = head.lower()
        if not (
            b"content-length" in lowered or b"transfer-encoding" in lowered or b"expect" in lowered
        ):
            self._body_end = self.head_end  # no body (the common case, kept cheap)
            return
        lines = head.split(b"\r\n")
        if not lines[0]:
            del lines[0]  # one empty line may come before the request line (RFC 9112 2.2)
        version = lines[0].rpartition(b" ")[2] if lines else b""
        lengths: list[bytes] = []
        codings: list[bytes] = []
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or line[:1] in (b" ", b"\t"):  # no field, or obsolete line folding
                self._pass_on()
                return
            name = name.lower()
            if name == b"content-length":
                lengths.append(value.strip(b" \t"))
            elif name == b"transfer-encoding":
                codings += [c.strip(b" \t").lower() for c in value.split(b",")]
            elif name == b"expect":
                self.expects_continue = (
                    version == b"HTTP/1.1" and value.strip(b" \t").lower() == b"100-continue"
                )
        if codings:
            if lengths or version != b"HTTP/1.1" or codings[-1] != b"chunked":
                self._pass_on()  # gunicorn refuses these (RFC 9112 6.1, 6.3)
            else:
                self._chunk = self.head_end
        elif len(lengths) > 1 or (lengths and not lengths[0].isdigit()):
            self._pass_on()
        else:
            length = int(lengths[0]) if lengths else 0
            if length > self.max_body:
                self._pass_on()
            else:
                self._body_end = self.head_end + length

    def _pass_on(self) -> None:
        self.ready = self.partial = True

    def _check_body(self) -> None:
        if self._body_end >= 0:
            self.ready = len(self.data) >= self._body_end
            return
        data = self.data
        while True:
            line_end = data.find(b"\r\n", self._chunk)
            if line_end < 0:
                if len(data) - self._chunk > _MAX_CHUNK_LINE:
                    self._pass_on()
                return
            size = data[self._chunk : line_end].split(b";", 1)[0].strip(b" \t")
            if not _CHUNK_SIZE.fullmatch(size):
                self._pass_on()
                return
            if int(size, 16) == 0:  # the last chunk: then trailer fields and a blank line
                if data.find(b"\r\n\r\n", line_end) >= 0:
                    self.ready = True
                elif len(data) - line_end > _MAX_TRAILERS:
                    self._pass_on()
                return
            following = line_end + 2 + int(size, 16) + 2  # the chunk's data and its CRLF
            if following - self.head_end > self.max_body:
                self._pass_on()
                return
            if len(data) < following:
                return
            self._chunk = following


def _bare_lf(data: bytearray, start: int) -> bool:
    """Whether a LF from `start` on lacks its CR (gunicorn refuses such a head at once)."""
    at = data.find(b"\n", start)
    while at >= 0:
        if at == 0 or data[at - 1] != 0x0D:
            return True
        at = data.find(b"\n", at + 1)
    return False
