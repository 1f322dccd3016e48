"""A fault-injecting HTTP proxy to put between boto3 and the KMS emulator.

moto answers KMS calls faithfully but cannot be told to throttle, to fail
internally, to report a disabled key or to vanish from the network, and it
says AccessDenied where AWS says IncorrectKeyException.  Tests therefore point
boto3 at this proxy (as ``endpoint``), which forwards to moto and, when told,
answers in KMS's own wire format instead, so the code under test meets the
same bytes it would meet from AWS.

Usage::

    with FaultProxy(moto.endpoint) as proxy:
        proxy.fail("ThrottlingException", times=3, operations={"Decrypt"})
        proxy.reset_connections(times=1)
        proxy.go_down(); ...; proxy.come_up()
        proxy.count("Decrypt", outcome="ThrottlingException")
"""

from __future__ import annotations

import http.client
import http.server
import json
import socket
import struct
import threading
import urllib.parse
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Self

# code -> HTTP status, as AWS KMS sends them.
KMS_ERRORS: dict[str, int] = {
    "AccessDeniedException": 400,
    "IncorrectKeyException": 400,
    "InvalidCiphertextException": 400,
    "DisabledException": 400,
    "NotFoundException": 400,
    "KMSInvalidStateException": 400,
    "InvalidKeyUsageException": 400,
    "UnrecognizedClientException": 400,
    "InvalidSignatureException": 400,
    "ExpiredTokenException": 400,
    "ValidationException": 400,
    "ThrottlingException": 400,
    "KMSInternalException": 500,
    "KeyUnavailableException": 500,
    "DependencyTimeoutException": 503,
}

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "content-length",
}


@dataclass
class _Rule:
    action: str  # "error", "raw", "reset", "hang"
    times: int | None
    operations: frozenset[str] | None
    status: int = 400
    code: str = ""
    message: str = ""
    body: bytes = b""
    content_type: str = ""

    def matches(self, operation: str) -> bool:
        return self.operations is None or operation in self.operations


@dataclass
class Record:
    """One request the proxy saw and what it did with it."""

    operation: str
    outcome: str  # "forwarded", an error code, "http-<status>", "reset", "hang", "down"
    access_key: str = ""
    """The access key id the request was signed with (from its SigV4 header)."""


@dataclass
class _State:
    rules: list[_Rule] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    down: bool = False


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    access_key: str = ""

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: test output should show the test's own logs only."""

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        target = self.headers.get("X-Amz-Target", "")
        operation = target.rsplit(".", 1)[-1] if target else f"{self.command} {self.path}"
        proxy = self.server.proxy
        self.access_key = _access_key(self.headers.get("Authorization", ""))
        rule = proxy._take_rule(operation)
        if rule is None:
            self._forward(body, operation)
        elif rule.action == "reset":
            proxy._record(operation, "reset", self.access_key)
            self._reset()
        elif rule.action == "down":
            proxy._record(operation, "down", self.access_key)
            self._reset()
        elif rule.action == "hang":
            proxy._record(operation, "hang", self.access_key)
            proxy._released.wait()
            self._reset()
        elif rule.action == "raw":
            proxy._record(operation, f"http-{rule.status}", self.access_key)
            self._reply(rule.status, rule.body, rule.content_type)
        else:
            proxy._record(operation, rule.code, self.access_key)
            payload = {"__type": rule.code, "message": rule.message or f"injected {rule.code}"}
            self._reply(rule.status, json.dumps(payload).encode(), "application/x-amz-json-1.1")

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        self.end_headers()
        self.wfile.write(body)

    def _reset(self) -> None:
        """Close with RST, as a dead peer or a dropping firewall looks."""
        self.close_connection = True
        try:
            self.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
        except OSError:
            pass

    def _forward(self, body: bytes, operation: str) -> None:
        upstream = self.server.proxy.upstream
        conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            conn.request(self.command, self.path, body=body, headers=headers)
            response = conn.getresponse()
            payload = response.read()
            # Recorded before answering, so a test that got its answer sees it.
            self.server.proxy._record(operation, "forwarded", self.access_key)
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in _HOP_BY_HOP:
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        finally:
            conn.close()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    proxy: FaultProxy


class FaultProxy:
    """Forwards to ``upstream`` unless a rule says otherwise.

    Rules apply to the next ``times`` matching requests (``None``: until
    :meth:`clear`), first rule first; ``operations`` restricts a rule to KMS
    operation names such as ``"Decrypt"``.
    """

    def __init__(self, upstream: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.upstream = urllib.parse.urlsplit(upstream)
        self.host = host
        self.port = port
        self._lock = threading.Lock()
        self._state = _State()
        self._released = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Self:
        server = _Server((self.host, self.port), _Handler)
        server.proxy = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        self._released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- faults -------------------------------------------------------------

    def fail(
        self,
        code: str,
        *,
        times: int | None = None,
        operations: Iterable[str] | None = None,
        status: int | None = None,
        message: str = "",
    ) -> None:
        """Answer with a KMS error (``{"__type": code, "message": ...}``)."""
        self._add(
            _Rule(
                "error",
                times,
                _ops(operations),
                status=status if status is not None else KMS_ERRORS.get(code, 400),
                code=code,
                message=message,
            )
        )

    def fail_http(
        self,
        status: int,
        *,
        body: bytes = b"",
        content_type: str = "text/plain",
        times: int | None = None,
        operations: Iterable[str] | None = None,
    ) -> None:
        """Answer with a bare HTTP status, as a load balancer or gateway might."""
        self._add(_Rule("raw", times, _ops(operations), status=status, body=body,
                        content_type=content_type))

    def reset_connections(
        self, *, times: int | None = None, operations: Iterable[str] | None = None
    ) -> None:
        """Read the request, then reset the connection without answering."""
        self._add(_Rule("reset", times, _ops(operations)))

    def hang(self, *, times: int | None = None, operations: Iterable[str] | None = None) -> None:
        """Read the request and never answer (until :meth:`clear`): the client times out."""
        self._released.clear()
        self._add(_Rule("hang", times, _ops(operations)))

    def go_down(self) -> None:
        """Stop listening: new connections are refused, open ones are reset."""
        with self._lock:
            self._state.down = True
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def come_up(self) -> None:
        """Listen again on the same port."""
        with self._lock:
            self._state.down = False
        if self._server is None:
            self.start()

    def clear(self) -> None:
        """Drop every rule and release hanging requests; forward everything."""
        with self._lock:
            self._state.rules.clear()
        self._released.set()

    # --- observation ----------------------------------------------------------

    @property
    def records(self) -> list[Record]:
        with self._lock:
            return list(self._state.records)

    def count(self, operation: str | None = None, outcome: str | None = None) -> int:
        return sum(
            1
            for r in self.records
            if (operation is None or r.operation == operation)
            and (outcome is None or r.outcome == outcome)
        )

    # --- internals -------------------------------------------------------------

    def _add(self, rule: _Rule) -> None:
        with self._lock:
            self._state.rules.append(rule)

    def _take_rule(self, operation: str) -> _Rule | None:
        with self._lock:
            if self._state.down:
                return _Rule("down", None, None)
            for rule in self._state.rules:
                if rule.matches(operation):
                    if rule.times is not None:
                        rule.times -= 1
                        if rule.times <= 0:
                            self._state.rules.remove(rule)
                    return rule
        return None

    def _record(self, operation: str, outcome: str, access_key: str) -> None:
        with self._lock:
            self._state.records.append(Record(operation, outcome, access_key))


def _access_key(authorization: str) -> str:
    """``AWS4-HMAC-SHA256 Credential=AKID/date/region/kms/aws4_request, ...`` -> AKID."""
    marker = "Credential="
    start = authorization.find(marker)
    if start < 0:
        return ""
    return authorization[start + len(marker):].split("/", 1)[0]


def _ops(operations: Iterable[str] | None) -> frozenset[str] | None:
    return None if operations is None else frozenset(operations)
