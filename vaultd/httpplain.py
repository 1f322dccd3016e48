"""Plain requests, parsed and answered without gunicorn's per-request objects.

Nearly every request a Vault client sends has one shape: an HTTP/1.1
request line with an origin-form target, a handful of ordinary headers
(``Host``, ``X-Vault-Token``, ``Content-Type``, ``Content-Length``) and a
body of the length it names.  Measured on gunicorn 27, its parser took about
70 µs of such a request and its environ and ``Response`` objects another 40,
more than the KV read they carried (about 100).  For a request that the
event loop has already framed (:mod:`vaultd.httpframe`), this module checks
that it has exactly that shape, builds the same WSGI environ that
``gunicorn.http.wsgi.create`` would, and writes the answer as gunicorn's
``Response`` would, byte for byte apart from ``Date``, but with the head and
a fixed-length body in one send.

Anything else (HTTP/1.0, an ``Expect`` or ``Transfer-Encoding``, forwarding
headers, a header name with an underscore, a character outside visible
ASCII, a repeated ``Host``, a limit reached, an unusual method) returns
None from :func:`parse` and goes through gunicorn's parser unchanged, which
then decides, errors included.  So the grammar accepted here is a strict
subset of what gunicorn accepts, and ``tests/unit/test_httpplain.py``
checks both halves against gunicorn itself: the same environ for every
request accepted here, the same answer bytes for every response.
"""

from __future__ import annotations

import io
import os
import re
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote_to_bytes

from gunicorn import SERVER, SERVER_SOFTWARE
from gunicorn import util as gutil
from gunicorn.http.wsgi import FileWrapper, WSGIErrorsWrapper

_REQUEST_LINE = re.compile(rb"(GET|HEAD|POST|PUT|DELETE|PATCH|OPTIONS|LIST) (/[\x21-\x7e]*) HTTP/1\.1")
"""Methods Vault clients send, an origin-form target of visible ASCII."""
_NAME = re.compile(rb"[!#$%&'*+.^`|~0-9A-Za-z-]+")
"""An RFC 9110 token without ``_``: gunicorn 22 and later drop headers whose
names hold one (``X_Vault_Token`` would otherwise pose as ``X-Vault-Token``
in the environ), 20.1 keeps them; such requests go to gunicorn's parser."""
_VALUE = re.compile(rb"[\x20-\x7e\t]*")
_DEFERRED = frozenset({"EXPECT", "TRANSFER-ENCODING", "UPGRADE", "FORWARDED", "TE", "TRAILER", "KEEP-ALIVE"})
"""Headers whose handling is gunicorn's (or a proxy's) business."""
_RESPONSE_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_RESPONSE_VALUE = re.compile(r"[ \t\x21-\x7e\x80-\xff]*")
_STATUS = re.compile(r"[0-9]{3}(?: [ \t\x21-\x7e\x80-\xff]*)?")
"""What may go into the status line and header lines: no CR or LF, so an
answer cannot be split (RFC 9112 section 4 and 5)."""


class Limits:
    """gunicorn's request limits, read once per worker from its config."""

    __slots__ = ("field_size", "fields", "line")

    def __init__(self, line: int, fields: int, field_size: int) -> None:
        self.line = line
        self.fields = fields
        self.field_size = field_size

    @classmethod
    def from_config(cls, cfg: Any) -> Limits:
        return cls(int(cfg.limit_request_line), int(cfg.limit_request_fields), int(cfg.limit_request_field_size))


class PlainRequest:
    """What gunicorn's ``Request`` would hold, for the attributes its hooks
    and :class:`PlainResponse` read."""

    __slots__ = ("body", "close", "headers", "method", "path", "query", "uri", "version")

    def __init__(
        self, method: str, uri: str, path: str, query: str, headers: list[tuple[str, str]], body: bytes, close: bool
    ) -> None:
        self.method = method
        self.uri = uri
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.close = close
        self.version = (1, 1)

    def should_close(self) -> bool:
        return self.close


def parse(data: bytes, limits: Limits) -> PlainRequest | None:
    """The request that is all of ``data`` if it has the plain shape, else
    None (and gunicorn's parser takes it)."""
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    lines = data[:head_end].split(b"\r\n")
    first = lines[0]
    if limits.line and len(first) > limits.line:
        return None
    match = _REQUEST_LINE.fullmatch(first)
    if match is None:
        return None
    target = match.group(2)
    if b"#" in target or target.startswith(b"//"):
        return None
    if limits.fields and len(lines) - 1 > limits.fields:
        return None
    headers: list[tuple[str, str]] = []
    close = False
    length: int | None = None
    seen: set[str] = set()
    for line in lines[1:]:
        if limits.field_size and len(line) > limits.field_size:
            return None
        raw_name, colon, raw_value = line.partition(b":")
        if not colon or _NAME.fullmatch(raw_name) is None or _VALUE.fullmatch(raw_value) is None:
            return None
        name = raw_name.decode("ascii").upper()
        value = raw_value.strip(b" \t").decode("ascii")
        if name in _DEFERRED or name.startswith("X-FORWARDED-"):
            return None
        if name in ("HOST", "CONNECTION", "CONTENT-LENGTH", "CONTENT-TYPE"):
            if name in seen:
                return None
            seen.add(name)
            if name == "CONNECTION":
                option = value.lower()
                if option == "close":
                    close = True
                elif option != "keep-alive":
                    return None
            elif name == "CONTENT-LENGTH":
                if not value.isdigit() or len(value) > 18:
                    return None
                length = int(value)
        headers.append((name, value))
    body = data[head_end + 4 :]
    if len(body) != (length or 0):
        return None
    uri = target.decode("ascii")
    path, _, query = uri.partition("?")
    return PlainRequest(match.group(1).decode("ascii"), uri, path, query, headers, body, close)


class EnvironMaker:
    """``gunicorn.http.wsgi.create``'s environ, for a :class:`PlainRequest`.

    The keys every request shares are made once per worker; ``wsgi.errors``
    (a wrapper over gunicorn's error log streams) is shared too, as it holds
    no per-request state."""

    def __init__(self, cfg: Any) -> None:
        self.scheme = "https" if cfg.is_ssl else "http"
        self.base: dict[str, Any] = {
            "wsgi.errors": WSGIErrorsWrapper(cfg),
            "wsgi.version": (1, 0),
            "wsgi.multithread": True,
            "wsgi.multiprocess": cfg.workers > 1,
            "wsgi.run_once": False,
            "wsgi.file_wrapper": FileWrapper,
            "wsgi.input_terminated": True,
            "SERVER_SOFTWARE": SERVER_SOFTWARE,
            "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.url_scheme": self.scheme,
            "SCRIPT_NAME": "",
        }

    @staticmethod
    def usable() -> bool:
        """gunicorn takes ``SCRIPT_NAME`` from the process environment and
        strips it from every path; with one set, every request goes its way."""
        return not os.environ.get("SCRIPT_NAME")

    def make(self, req: PlainRequest, sock: Any, client: Any, server: Any) -> dict[str, Any]:
        environ = dict(self.base)
        environ["wsgi.input"] = io.BytesIO(req.body)
        environ["gunicorn.socket"] = sock
        environ["REQUEST_METHOD"] = req.method
        environ["QUERY_STRING"] = req.query
        environ["RAW_URI"] = req.uri
        host = None
        for name, value in req.headers:
            if name == "CONTENT-TYPE":
                environ["CONTENT_TYPE"] = value
                continue
            if name == "CONTENT-LENGTH":
                environ["CONTENT_LENGTH"] = value
                continue
            if name == "HOST":
                host = value
            key = "HTTP_" + name.replace("-", "_")
            if key in environ:
                environ[key] = f"{environ[key]},{value}"
            else:
                environ[key] = value
        if isinstance(client, str):
            environ["REMOTE_ADDR"] = client
        elif isinstance(client, bytes):
            environ["REMOTE_ADDR"] = client.decode()
        else:
            environ["REMOTE_ADDR"] = client[0]
            environ["REMOTE_PORT"] = str(client[1])
        if isinstance(server, str):
            parts: list[Any] = server.split(":")
            if len(parts) == 1:  # a unix socket: the Host header names the server
                if host:
                    parts = host.split(":")
                    if len(parts) == 1:
                        parts.append(80 if self.scheme == "http" else 443)
                else:
                    parts.append("")
            server = parts
        environ["SERVER_NAME"] = server[0]
        environ["SERVER_PORT"] = str(server[1])
        environ["PATH_INFO"] = unquote_to_bytes(req.path).decode("latin-1")
        return environ


_date_cache: tuple[int, str] = (0, "")


def http_date() -> str:
    """gunicorn's ``Date`` value, formatted once a second rather than per
    answer (``email.utils.formatdate`` drops the fraction anyway)."""
    global _date_cache
    now = int(time.time())
    cached = _date_cache
    if cached[0] == now:
        return cached[1]
    text = gutil.http_date(now)
    _date_cache = (now, text)
    return text


class PlainResponse:
    """gunicorn's ``Response`` (start_response, write, close, should_close)
    for a plain request, minus sendfile: the head waits for the first body
    bytes, so that a fixed-length answer leaves in one send.  As gunicorn 27
    does (RFC 9110), an answer to HEAD and a 1xx, 204 or 304 carry no body,
    and a 1xx or 204 no ``Content-Length``."""

    __slots__ = (
        "chunked",
        "headers",
        "headers_sent",
        "must_close",
        "omits_body",
        "req",
        "response_length",
        "sent",
        "sock",
        "status",
        "status_code",
        "upgrade",
    )

    def __init__(self, req: PlainRequest, sock: Any) -> None:
        self.req = req
        self.sock = sock
        self.status: str | None = None
        self.status_code: int | None = None
        self.chunked = False
        self.must_close = False
        self.headers: list[tuple[str, str]] = []
        self.headers_sent = False
        self.response_length: int | None = None
        self.sent = 0
        self.upgrade = False
        self.omits_body = False

    def force_close(self) -> None:
        self.must_close = True

    def should_close(self) -> bool:
        if self.must_close or self.req.close:
            return True
        if self.response_length is not None or self.chunked:
            return False
        if self.req.method == "HEAD":
            return False
        code = self.status_code
        return not (code is not None and (code < 200 or code in (204, 304)))

    def start_response(
        self, status: str, headers: Iterable[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        if exc_info:
            try:
                if self.status and self.headers_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("Response headers already set!")
        if not isinstance(status, str) or _STATUS.fullmatch(status) is None:
            raise ValueError("invalid response status")
        self.status = status
        code = self.status_code = int(status[:3])
        self._process_headers(headers)
        self.omits_body = self.req.method == "HEAD" or code in (204, 304) or 100 <= code < 200
        if code == 204 or 100 <= code < 200:
            self.headers = [(name, value) for name, value in self.headers if name.lower() != "content-length"]
            self.response_length = None
        self.chunked = self.response_length is None and not self.omits_body
        return self.write

    def _process_headers(self, headers: Iterable[tuple[str, str]]) -> None:
        for name, value in headers:
            if not isinstance(name, str) or not isinstance(value, str):
                raise TypeError(f"{name!r} is not a string")
            if _RESPONSE_NAME.fullmatch(name) is None:
                raise ValueError(f"invalid response header name {name!r}")
            if _RESPONSE_VALUE.fullmatch(value) is None:
                raise ValueError(f"invalid value for response header {name!r}")  # the value may be secret
            value = value.strip(" \t")
            lname = name.lower()
            if lname == "content-length":
                self.response_length = int(value)
            elif gutil.is_hoppish(name):
                if lname == "connection":
                    if value.lower() == "upgrade":
                        self.upgrade = True
                elif lname == "upgrade" and value.lower() == "websocket":
                    self.headers.append((name, value))
                continue
            self.headers.append((name, value))

    def _head(self) -> bytes:
        if self.upgrade:
            connection = "upgrade"
        elif self.should_close():
            connection = "close"
        else:
            connection = "keep-alive"
        lines = [f"HTTP/1.1 {self.status}\r\nServer: {SERVER}\r\nDate: {http_date()}\r\nConnection: {connection}\r\n"]
        if self.chunked:
            lines.append("Transfer-Encoding: chunked\r\n")
        lines.extend(f"{name}: {value}\r\n" for name, value in self.headers)
        lines.append("\r\n")
        return "".join(lines).encode("latin-1")

    def write(self, data: bytes) -> None:
        if not isinstance(data, bytes):
            raise TypeError(f"{type(data).__name__} is not bytes")
        if self.omits_body:
            self._send(b"")
            return
        size = len(data)
        if self.response_length is not None:
            if self.sent >= self.response_length:
                self._send(b"")
                return
            if self.sent + size > self.response_length:
                data = data[: self.response_length - self.sent]
                size = len(data)
        if self.chunked:
            if size == 0:  # an empty chunk would end the body: the head only
                self._send(b"")
                return
            data = b"%X\r\n%s\r\n" % (size, data)
        self.sent += size
        self._send(data)

    def _send(self, data: bytes) -> None:
        if not self.headers_sent:
            data = self._head() + data
            self.headers_sent = True
        if data:
            self.sock.sendall(data)

    def close(self) -> None:
        self._send(b"0\r\n\r\n" if self.chunked else b"")
