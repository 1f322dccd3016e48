"""Where one HTTP/1.1 request ends in a buffer, before anything parses it.

:mod:`vaultd.httpworker` reads requests in its event loop and hands only
complete ones to its threads; this is how it knows a request is complete.
It is pure (bytes in, a length or an error out), so the cases that matter
for a server reading untrusted input (chunked bodies, pipelined requests,
oversize heads and bodies, ambiguous lengths) are tested without sockets.
"""

from __future__ import annotations

import json
import re

HEAD_LIMIT = 64 * 1024
"""Largest request head (request line and headers).  Vault tokens are about
100 bytes; gunicorn's own limits would allow some 800 KiB."""
MAX_CHUNK_LINE = 1024
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_REASONS = {
    400: "Bad Request",
    408: "Request Timeout",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    417: "Expectation Failed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
}


class FrameError(Exception):
    """A request that cannot be framed: answered with ``status`` and closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class RequestFrame:
    """Finds where the request at the start of a buffer ends.

    Incremental: :meth:`feed` is called each time the buffer grows and
    resumes where it stopped.  It only frames (head end, ``Content-Length``,
    chunk boundaries); gunicorn's parser, run later on exactly these bytes,
    decides everything else, and whatever it refuses is a 400 then.  The
    frame is strict where framing is ambiguous (both length headers,
    differing lengths, folded header lines): request boundaries are decided
    here alone."""

    __slots__ = (
        "body_bytes",
        "chunk_pos",
        "expect_continue",
        "head_end",
        "length",
        "max_body",
        "max_head",
        "scanned",
    )

    def __init__(self, max_head: int = HEAD_LIMIT, max_body: int | None = None) -> None:
        self.max_head = max_head
        self.max_body = max_body
        self.reset()

    def reset(self) -> None:
        self.head_end = -1
        self.scanned = 0
        self.length: int | None = None
        self.chunk_pos = 0
        self.body_bytes = 0
        self.expect_continue = False

    @property
    def head_done(self) -> bool:
        return self.head_end >= 0

    def feed(self, buf: bytes | bytearray) -> int | None:
        """The byte length of the first request in ``buf`` once all of it is
        there, else None; raises :class:`FrameError`."""
        if self.head_end < 0:
            idx = buf.find(b"\r\n\r\n", max(0, self.scanned - 3))
            if idx < 0 or idx + 4 > self.max_head:
                self.scanned = len(buf)
                if len(buf) >= self.max_head:
                    raise FrameError(431, "request header fields too large")
                return None
            self.head_end = idx + 4
            self._read_head(bytes(buf[:idx]))
        if self.length is not None:
            return self.length if len(buf) >= self.length else None
        return self._walk_chunks(buf)

    def _read_head(self, head: bytes) -> None:
        lower = head.lower()
        if b"content-length" not in lower and b"transfer-encoding" not in lower and b"expect" not in lower:
            self.length = self.head_end
            return
        lines = head.split(b"\r\n")
        lengths: set[bytes] = set()
        codings: list[bytes] = []
        for line in lines[1:]:
            if line[:1] in (b" ", b"\t"):
                raise FrameError(400, "malformed request: folded header line")
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                lengths.add(value.strip(b" \t"))
            elif name == b"transfer-encoding":
                codings.extend(item.strip(b" \t").lower() for item in value.split(b","))
            elif name == b"expect":
                self.expect_continue = value.strip(b" \t").lower() == b"100-continue" and lines[0].endswith(b"HTTP/1.1")
        if codings and lengths:
            raise FrameError(400, "malformed request: both Content-Length and Transfer-Encoding")
        if codings:
            if codings != [b"chunked"]:
                raise FrameError(501, "unsupported transfer encoding")
            self.chunk_pos = self.head_end
            return
        if len(lengths) > 1:
            raise FrameError(400, "malformed request: conflicting Content-Length")
        size = 0
        if lengths:
            text = lengths.pop()
            if not text.isdigit() or len(text) > 18:
                raise FrameError(400, "malformed request: invalid Content-Length")
            size = int(text)
        if self.max_body is not None and size > self.max_body:
            raise FrameError(413, "request body too large")
        self.length = self.head_end + size

    def _walk_chunks(self, buf: bytes | bytearray) -> int | None:
        end = len(buf)
        pos = self.chunk_pos
        while True:
            idx = buf.find(b"\r\n", pos, min(end, pos + MAX_CHUNK_LINE + 2))
            if idx < 0:
                if end - pos > MAX_CHUNK_LINE:
                    raise FrameError(400, "malformed request: chunk size line too long")
                return None
            size_text = bytes(buf[pos:idx]).split(b";", 1)[0].strip(b" \t")
            if not _CHUNK_SIZE.fullmatch(size_text):
                raise FrameError(400, "malformed request: invalid chunk size")
            size = int(size_text, 16)
            if size == 0:
                trailer = idx + 2
                if end < trailer + 2:
                    return None
                if buf[trailer : trailer + 2] == b"\r\n":
                    return trailer + 2
                stop = buf.find(b"\r\n\r\n", trailer)
                if stop < 0:
                    if end - trailer > self.max_head:
                        raise FrameError(431, "request trailer fields too large")
                    return None
                return stop + 4
            if self.max_body is not None and self.body_bytes + size > self.max_body:
                raise FrameError(413, "request body too large")
            data_end = idx + 2 + size
            if end < data_end + 2:
                return None
            if buf[data_end : data_end + 2] != b"\r\n":
                raise FrameError(400, "malformed request: chunk without its terminator")
            self.body_bytes += size
            pos = self.chunk_pos = data_end + 2


def error_response(status: int, message: str) -> bytes:
    """A complete ``Connection: close`` answer in Vault's error shape."""
    body = json.dumps({"errors": [message]}).encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body
