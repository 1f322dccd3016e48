"""The buffering worker (``vaultd/httpworker.py``) and its request framing
(``vaultd/httpframe.py``).

The framing tests feed bytes; the worker tests run the real worker's event
loop and thread pool in a thread of this process, on a loopback (or unix)
socket, in front of a small WSGI app, and speak raw HTTP to it.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gunicorn.config import Config
from gunicorn.glogging import Logger

from vaultd.httpframe import HEAD_LIMIT, FrameError, RequestFrame, error_response
from vaultd.httpworker import BufferingWorker

# -- framing -------------------------------------------------------------------


def frame_all(data: bytes, max_body: int | None = 1 << 20) -> int | None:
    return RequestFrame(HEAD_LIMIT, max_body).feed(data)


def frame_bytewise(data: bytes, max_body: int | None = 1 << 20) -> list[int | None]:
    """Feed ``data`` one byte more at a time, as a slow client sends it."""
    frame = RequestFrame(HEAD_LIMIT, max_body)
    return [frame.feed(data[:end]) for end in range(1, len(data) + 1)]


GET = b"GET /v1/sys/health HTTP/1.1\r\nHost: x\r\n\r\n"
POST = b"POST /v1/kv/data/a HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n{\"a\": \"b\"}\n"
CHUNKED = (
    b"PUT /v1/kv/data/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;name=value\r\nhello\r\n1a\r\n" + b"z" * 26 + b"\r\n0\r\nX-Trailer: t\r\n\r\n"
)


@pytest.mark.parametrize("request_bytes", [GET, POST, CHUNKED], ids=["get", "length", "chunked"])
def test_a_request_is_complete_exactly_at_its_last_byte(request_bytes: bytes) -> None:
    results = frame_bytewise(request_bytes)
    assert results[:-1] == [None] * (len(request_bytes) - 1)
    assert results[-1] == len(request_bytes)


def test_pipelined_requests_are_framed_one_by_one() -> None:
    stream = GET + POST + CHUNKED + GET[:10]
    lengths = []
    while (length := frame_all(stream)) is not None:
        lengths.append(length)
        stream = stream[length:]
    assert lengths == [len(GET), len(POST), len(CHUNKED)]
    assert stream == GET[:10]


def test_chunked_without_trailers_and_with_upper_case_sizes() -> None:
    body = b"A\r\n0123456789\r\n0\r\n\r\n"
    head = b"POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n"
    assert frame_all(head + body + GET) == len(head + body)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 0x5\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nX-A: b\r\n Content-Length: 5\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * 2000, 400),
    ],
)
def test_ambiguous_or_malformed_framing_is_refused(request_bytes: bytes, status: int) -> None:
    with pytest.raises(FrameError) as caught:
        frame_all(request_bytes)
    assert caught.value.status == status


def test_a_length_over_the_limit_is_refused_from_the_head_alone() -> None:
    with pytest.raises(FrameError) as caught:
        frame_all(b"PUT / HTTP/1.1\r\nContent-Length: 1001\r\n\r\n", max_body=1000)
    assert caught.value.status == 413
    assert frame_all(b"PUT / HTTP/1.1\r\nContent-Length: 1000\r\n\r\n", max_body=1000) is None


def test_a_chunked_body_is_cut_when_it_passes_the_limit() -> None:
    head = b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    within = head + b"200\r\n" + b"a" * 512 + b"\r\n1e8\r\n" + b"b" * 488 + b"\r\n0\r\n\r\n"
    assert frame_all(within, max_body=1000) == len(within)
    with pytest.raises(FrameError) as caught:
        frame_all(head + b"200\r\n" + b"a" * 512 + b"\r\n1e9\r\n", max_body=1000)
    assert caught.value.status == 413


def test_a_head_over_the_limit_is_a_431() -> None:
    with pytest.raises(FrameError) as caught:
        frame_all(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * HEAD_LIMIT)
    assert caught.value.status == 431
    assert frame_all(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * (HEAD_LIMIT - 200)) is None


def test_expect_continue_is_noticed_on_http_1_1_only() -> None:
    head = b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"
    frame = RequestFrame()
    assert frame.feed(head) is None and frame.expect_continue
    frame = RequestFrame()
    assert frame.feed(head.replace(b"HTTP/1.1", b"HTTP/1.0")) is None and not frame.expect_continue


def test_error_responses_are_vault_shaped() -> None:
    raw = error_response(413, "request body too large")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ")
    assert f"Content-Length: {len(body)}".encode() in head and b"Connection: close" in head
    assert json.loads(body) == {"errors": ["request body too large"]}


# -- the worker, live ------------------------------------------------------------


def echo_app(gate: threading.Event) -> Callable[..., list[bytes]]:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        body = environ["wsgi.input"].read()
        if environ["PATH_INFO"] == "/slow":
            gate.wait(10)
        sock = environ["gunicorn.socket"]
        peer = None
        if sock.family == socket.AF_UNIX:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            peer = int.from_bytes(creds[:4], "little")
        out = json.dumps(
            {
                "method": environ["REQUEST_METHOD"],
                "path": environ["PATH_INFO"],
                "length": len(body),
                "sha256": hashlib.sha256(body).hexdigest(),
                "peer_pid": peer,
            }
        ).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(out)))])
        return [out]

    return app


class Running:
    """A :class:`BufferingWorker` looping in a thread of this process."""

    def __init__(self, listener: socket.socket, **settings: Any) -> None:
        cfg = Config()
        options = {"threads": 1, "keepalive": 5, "graceful_timeout": 5, **settings}
        for key, value in options.items():
            cfg.set(key, value)
        self.gate = threading.Event()
        self.records: list[logging.LogRecord] = []
        log = Logger(cfg)
        collector = logging.Handler(logging.DEBUG)
        collector.emit = self.records.append  # type: ignore[method-assign]
        log.error_log.addHandler(collector)
        log.error_log.setLevel(logging.DEBUG)
        self.worker = BufferingWorker(0, os.getppid(), [listener], None, 30, cfg, log)
        self.worker.wsgi = echo_app(self.gate)
        self.listener = listener
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        self.worker.prepare()
        try:
            while self.worker.alive:
                self.worker.loop_once(0.05)
        finally:
            self.worker.shutdown()

    def log_text(self) -> str:
        return "\n".join(record.getMessage() for record in self.records)


@pytest.fixture
def make_worker() -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def make(listener: socket.socket | None = None, **settings: Any) -> Running:
        if listener is None:
            listener = socket.create_server(("127.0.0.1", 0))
        running = Running(listener, **settings)
        started.append(running)
        return running

    yield make
    for running in started:
        running.gate.set()
        running.worker.alive = False
        running.thread.join(10)
        assert not running.thread.is_alive(), "the worker loop did not stop"


def connect(running: Running, timeout: float = 10) -> socket.socket:
    return socket.create_connection(running.listener.getsockname()[:2], timeout=timeout)


class Reader:
    """Reads HTTP/1.1 responses one after another from a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.head = b""

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("connection closed")
        self.buf += data

    def response(self) -> tuple[int, bytes]:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        self.head = head
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(self.buf) < length:
            self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, body

    def closed(self, wait: float) -> bool:
        """True when the server closes the connection within ``wait`` s;
        what it sent before is added to ``buf``."""
        self.sock.settimeout(wait)
        try:
            while data := self.sock.recv(65536):
                self.buf += data
        except TimeoutError:
            return False
        except OSError:
            pass
        return True


def get(path: str = "/") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


def test_stalled_clients_do_not_hold_the_only_thread(make_worker: Callable[..., Running]) -> None:
    running = make_worker(threads=1)
    running.thread.start()
    stalled = []
    for index in range(40):
        sock = connect(running)
        if index % 2:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Vault-To")
        else:
            sock.sendall(b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nhalf")
        stalled.append(sock)
    try:
        for _ in range(5):
            with connect(running, timeout=2) as sock:
                sock.sendall(get("/probe"))
                status, body = Reader(sock).response()
                assert status == 200 and json.loads(body)["path"] == "/probe"
    finally:
        for sock in stalled:
            sock.close()


def test_keep_alive_and_pipelining_keep_every_request(make_worker: Callable[..., Running]) -> None:
    running = make_worker(threads=2)
    running.thread.start()
    with connect(running) as sock:
        reader = Reader(sock)
        for index in range(3):
            sock.sendall(get(f"/one/{index}"))
            assert json.loads(reader.response()[1])["path"] == f"/one/{index}"
        body = os.urandom(3000)
        chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        sock.sendall(
            get("/a")
            + b"PUT /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunked
            + b"PUT /c HTTP/1.1\r\nHost: x\r\nContent-Length: 3000\r\n\r\n"
            + body
            + get("/d")
        )
        answers = [json.loads(reader.response()[1]) for _ in range(4)]
    assert [a["path"] for a in answers] == ["/a", "/b", "/c", "/d"]
    assert answers[1]["sha256"] == answers[2]["sha256"] == hashlib.sha256(body).hexdigest()


def test_a_body_sent_in_pieces_reaches_the_app_whole(make_worker: Callable[..., Running]) -> None:
    running = make_worker()
    running.thread.start()
    body = os.urandom(200_000)
    with connect(running) as sock:
        sock.sendall(b"PUT /big HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n")
        for start in range(0, len(body), 7000):
            sock.sendall(body[start : start + 7000])
        answer = json.loads(Reader(sock).response()[1])
    assert answer["length"] == 200_000 and answer["sha256"] == hashlib.sha256(body).hexdigest()


def test_expect_100_continue_gets_one_interim_answer(make_worker: Callable[..., Running]) -> None:
    running = make_worker()
    running.thread.start()
    with connect(running) as sock:
        reader = Reader(sock)
        sock.sendall(b"PUT /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
        assert reader.response()[0] == 100
        sock.sendall(b"data")
        status, body = reader.response()
        assert status == 200 and json.loads(body)["length"] == 4
        sock.sendall(get("/after"))
        assert json.loads(reader.response()[1])["path"] == "/after"  # no stray second 100


def test_an_oversized_length_is_answered_413_before_the_body(make_worker: Callable[..., Running]) -> None:
    running = make_worker()
    running.worker.max_body = 1000
    running.thread.start()
    with connect(running) as sock:
        sock.sendall(b"PUT /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n")
        reader = Reader(sock)
        status, body = reader.response()
        assert status == 413 and json.loads(body) == {"errors": ["request body too large"]}
        assert reader.closed(5)


def test_deadlines_close_stalled_connections(make_worker: Callable[..., Running]) -> None:
    running = make_worker()
    running.worker.header_timeout = 0.5
    running.worker.read_timeout = 1.5
    running.thread.start()
    half_head = connect(running)
    half_head.sendall(b"GET / HTTP/1.1\r\nHost")
    half_body = connect(running)
    half_body.sendall(b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345")
    silent = connect(running)
    with half_head, half_body, silent:
        # The whole request is allowed more time than the head alone.
        assert not Reader(half_body).closed(0.8)
        readers = [Reader(sock) for sock in (half_head, half_body, silent)]
        assert all(reader.closed(10) for reader in readers)
    assert readers[0].buf.startswith(b"HTTP/1.1 408 ") and readers[1].buf.startswith(b"HTTP/1.1 408 ")
    assert readers[2].buf == b""  # nothing sent, nothing answered
    assert not running.worker._conns


def test_a_malformed_header_is_a_400_that_never_repeats_the_header(make_worker: Callable[..., Running]) -> None:
    running = make_worker()
    running.thread.start()
    token = "hvs.NOT-TO-BE-LOGGED-1234567890"
    with connect(running) as sock:
        sock.sendall(f"GET / HTTP/1.1\r\nHost: x\r\nX-Vault-Token {token}\r\n\r\n".encode())
        reader = Reader(sock)
        status, body = reader.response()
        assert reader.closed(5)
    assert status == 400 and "errors" in json.loads(body)
    assert token.encode() not in body
    time.sleep(0.2)
    assert "bad request" in running.log_text() and token not in running.log_text()


def test_large_requests_wait_for_the_memory_budget(make_worker: Callable[..., Running]) -> None:
    """Budget for one 150 kB request at a time: the second waits, unread,
    and is served once the first is done."""
    running = make_worker(threads=2)
    running.worker.max_body = 150_000
    running.worker.budget_floor = 200_000
    running.gate.clear()
    running.thread.start()
    first, second = connect(running), connect(running)
    with first, second:
        body = os.urandom(150_000)
        first.sendall(b"PUT /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 150000\r\n\r\n" + body)
        time.sleep(0.3)
        assert running.worker._reserved_total > 150_000
        second.sendall(b"PUT /b HTTP/1.1\r\nHost: x\r\nContent-Length: 150000\r\n\r\n")
        time.sleep(0.3)
        assert len(running.worker._waiting) == 1
        running.gate.set()
        second.sendall(body)
        assert json.loads(Reader(first).response()[1])["length"] == 150_000
        assert json.loads(Reader(second).response()[1])["sha256"] == hashlib.sha256(body).hexdigest()


def test_one_address_cannot_take_every_slot(make_worker: Callable[..., Running]) -> None:
    running = make_worker(worker_connections=64)  # 16 per address
    running.thread.start()
    held = [connect(running) for _ in range(16)]
    try:
        time.sleep(0.3)
        with connect(running) as extra:
            assert Reader(extra).closed(5)
        held.pop().close()
        time.sleep(0.3)
        with connect(running) as sock:
            sock.sendall(get("/ok"))
            assert Reader(sock).response()[0] == 200
    finally:
        for sock in held:
            sock.close()


def test_unix_socket_listener_keeps_the_real_client_socket(
    make_worker: Callable[..., Running], tmp_path: Path
) -> None:
    path = str(tmp_path / "s.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    running = make_worker(listener)
    running.thread.start()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        reader = Reader(sock)
        for _ in range(2):
            sock.sendall(get("/unix"))
            answer = json.loads(reader.response()[1])
            assert answer["peer_pid"] == os.getpid()


def _self_signed(directory: Path) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return str(cert_file), str(key_file)


def test_tls_handshakes_happen_in_the_loop(make_worker: Callable[..., Running], tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    running = make_worker(threads=1, certfile=cert, keyfile=key)
    running.thread.start()
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    stalled = [connect(running) for _ in range(10)]  # TCP up, no ClientHello
    half = client.wrap_socket(connect(running))
    half.sendall(b"GET / HTTP/1.1\r\nHost")
    stalled.append(half)
    try:
        with client.wrap_socket(connect(running, timeout=2)) as sock:
            reader = Reader(sock)
            for index in range(2):
                sock.sendall(get(f"/tls/{index}"))
                assert json.loads(reader.response()[1])["path"] == f"/tls/{index}"
    finally:
        for sock in stalled:
            with contextlib.suppress(OSError):
                sock.close()


def test_graceful_stop_finishes_the_request_under_way(make_worker: Callable[..., Running]) -> None:
    running = make_worker(threads=2)
    running.thread.start()
    with connect(running) as busy, connect(running) as idle:
        idle.sendall(get("/idle"))
        assert Reader(idle).response()[0] == 200
        busy.sendall(get("/slow"))
        time.sleep(0.3)
        running.worker.alive = False
        time.sleep(0.3)
        # An idle keep-alive connection lingers briefly: a request already
        # on its way is answered, with "Connection: close", then it closes.
        idle.sendall(get("/late"))
        reader = Reader(idle)
        assert reader.response()[0] == 200 and b"Connection: close" in reader.head
        assert reader.closed(5)
        running.gate.set()
        status, body = Reader(busy).response()
        assert status == 200 and json.loads(body)["path"] == "/slow"
    running.thread.join(10)
    assert not running.thread.is_alive()
