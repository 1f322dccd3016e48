"""``vaultd/httpplain.py`` against gunicorn itself.

The module answers plain requests without gunicorn's parser, environ and
``Response``; it is only right if, for every request it takes, gunicorn
would have taken the same request and built the same environ, and if its
answer bytes are gunicorn's.  Hypothesis writes the requests (ordinary
ones, and ones with the odd details that must be left to gunicorn); each
is parsed both ways and compared.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from gunicorn import http as ghttp
from gunicorn.config import Config
from gunicorn.http import wsgi as gwsgi
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vaultd import httpplain

CLIENT = ("127.0.0.1", 40123)
SERVER = ("127.0.0.1", 8200)


def gunicorn_config(**values: Any) -> Config:
    cfg = Config()
    cfg.set("workers", 2)
    for name, value in values.items():
        cfg.set(name, value)
    return cfg


CFG = gunicorn_config()
LIMITS = httpplain.Limits.from_config(CFG)
MAKER = httpplain.EnvironMaker(CFG)


@pytest.fixture(scope="module")
def sock() -> Iterator[socket.socket]:
    """gunicorn's ``create`` wants a socket (it would send ``100 Continue``
    on it); nothing taken here ever makes it write."""
    left, right = socket.socketpair()
    yield left
    left.close()
    right.close()


def comparable(environ: dict[str, Any]) -> dict[str, Any]:
    """The environ's values, with the body read out and per-process objects
    named by type."""
    out: dict[str, Any] = {}
    for key, value in environ.items():
        if key == "wsgi.input":
            out[key] = value.read()
        elif key in ("wsgi.errors", "gunicorn.socket"):
            out[key] = type(value).__name__
        elif key in ("wsgi.early_hints", "wsgi.multithread"):
            continue  # gunicorn 27 only; set by the worker for gunicorn's path
        else:
            out[key] = value
    return out


def gunicorn_view(data: bytes, sock: socket.socket) -> tuple[dict[str, Any], bool]:
    req = next(ghttp.RequestParser(CFG, [data], CLIENT))
    _resp, environ = gwsgi.create(req, sock, CLIENT, SERVER, CFG)
    return comparable(environ), req.should_close()


# -- what clients send -----------------------------------------------------------

TOKEN = "hvs.CAESIJf0exampleexampleexampleexampleexample"
ORDINARY = [
    # hvac (requests)
    b"GET /v1/secret/data/app HTTP/1.1\r\nHost: 127.0.0.1:8200\r\nUser-Agent: python-requests/2.32.3\r\n"
    b"Accept-Encoding: gzip, deflate\r\nAccept: */*\r\nConnection: keep-alive\r\nX-Vault-Token: " + TOKEN.encode()
    + b"\r\nX-Vault-Request: true\r\n\r\n",
    # the bao CLI (Go's net/http)
    b"PUT /v1/secret/data/app HTTP/1.1\r\nHost: 127.0.0.1:8200\r\nUser-Agent: Go-http-client/1.1\r\n"
    b"Content-Length: 26\r\nX-Vault-Request: true\r\nX-Vault-Token: " + TOKEN.encode()
    + b"\r\nAccept-Encoding: gzip\r\n\r\n{\"data\":{\"password\":\"s3\"}}",
    b"LIST /v1/secret/metadata/?list=true HTTP/1.1\r\nHost: vault.example:8200\r\nX-Vault-Token: t\r\n\r\n",
    b"DELETE /v1/sys/audit/file%2Fone HTTP/1.1\r\nHost: h\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    b"GET /v1/sys/health?standbyok=true&perfstandbyok=true HTTP/1.1\r\nHost: h\r\n\r\n",
    b"POST /v1/auth/token/create HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
    b"Authorization: Bearer " + TOKEN.encode() + b"\r\n\r\n{}",
]


@pytest.mark.parametrize("data", ORDINARY, ids=range(len(ORDINARY)))
def test_what_clients_send_is_taken_with_gunicorns_environ(data: bytes, sock: socket.socket) -> None:
    req = httpplain.parse(data, LIMITS)
    assert req is not None
    expected, should_close = gunicorn_view(data, sock)
    assert comparable(MAKER.make(req, sock, CLIENT, SERVER)) == expected
    assert req.should_close() == should_close


LEFT_TO_GUNICORN = [
    b"GET /v1/x HTTP/1.0\r\nHost: h\r\n\r\n",
    b"GET http://h/v1/x HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET //v1/x HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /v1/x#frag HTTP/1.1\r\nHost: h\r\n\r\n",
    b"get /v1/x HTTP/1.1\r\nHost: h\r\n\r\n",
    b"TRACE /v1/x HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /v1/x HTTP/1.1\r\nX_Vault_Token: t\r\n\r\n",
    b"GET /v1/x HTTP/1.1\r\nX-Forwarded-Proto: https\r\n\r\n",
    b"GET /v1/x HTTP/1.1\r\nForwarded: for=1.2.3.4\r\n\r\n",
    b"GET /v1/x HTTP/1.1\r\nHost : h\r\n\r\n",
    b"GET /v1/x HTTP/1.1\r\nHost: h\r\nHost: i\r\n\r\n",
    b"GET /v1/x HTTP/1.1\r\nConnection: upgrade\r\n\r\n",
    b"GET /v1/x HTTP/1.1\r\nX-Vault-Token: caf\xc3\xa9\r\n\r\n",
    b"GET /v1/x HTTP/1.1\r\nX-Vault-Token: a\x00b\r\n\r\n",
    b"GET /v1/x HTTP/1.1\r\nX-A: 1\r\n  folded\r\n\r\n",
    b"PUT /v1/x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}",
    b"PUT /v1/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    b"PUT /v1/x HTTP/1.1\r\nContent-Length: +2\r\n\r\n{}",
    b"PUT /v1/x HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
    b"GET /v1/" + b"a" * 5000 + b" HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /v1/x HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(101)) + b"\r\n",
]


@pytest.mark.parametrize("data", LEFT_TO_GUNICORN, ids=range(len(LEFT_TO_GUNICORN)))
def test_anything_unusual_is_left_to_gunicorn(data: bytes) -> None:
    assert httpplain.parse(data, LIMITS) is None


def test_a_script_name_in_the_environment_turns_plain_parsing_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert httpplain.EnvironMaker.usable()
    monkeypatch.setenv("SCRIPT_NAME", "/vault")
    assert not httpplain.EnvironMaker.usable()


# -- everything taken is what gunicorn makes of it ----------------------------------

_PATH_CHARS = st.sampled_from([*list("abcXYZ019-._~!$&'()*+,;=:@/"), "%20", "%2F", "%2f", "%00", "%zz", "%", "%C3%A9"])
_NAMES = st.sampled_from(
    [
        "Host", "host", "HOST", "X-Vault-Token", "x-vault-token", "Content-Type", "Accept", "User-Agent",
        "X-Vault-Request", "X-Vault-Wrap-TTL", "Connection", "Authorization", "X-Vault-Namespace",
        "X-Forwarded-For", "X-Forwarded-Proto",
        "X-Forwarded-Ssl", "Forwarded",
        "X_Vault_Token", "Expect", "Accept-Encoding", "Keep-Alive", "Script-Name", "Content-Length", "X-A.b~c!",
    ]
)
_VALUES = st.one_of(
    st.sampled_from(["close", "keep-alive", "Keep-Alive", "CLOSE", "upgrade", "", "100-continue", "3", "https", "on"]),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20),
    st.text(st.characters(min_codepoint=0x00, max_codepoint=0xFF), max_size=6),
)

_MEANINGFUL = st.sampled_from(
    [
        ("X-Forwarded-Proto", "https"), ("X-Forwarded-Ssl", "on"), ("X-Forwarded-Protocol", "ssl"),
        ("Connection", "close"), ("Expect", "100-continue"), ("Script-Name", "/v1"), ("Transfer-Encoding", "chunked"),
    ]
)
"""Headers with the values that change what gunicorn does."""


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(["GET", "PUT", "POST", "DELETE", "LIST", "HEAD", "PATCH", "OPTIONS", "TRACE", "Get"]))
    path = "/" + "".join(draw(st.lists(_PATH_CHARS, max_size=12)))
    if draw(st.booleans()):
        path += "?" + "".join(draw(st.lists(st.sampled_from([*list("ab=&%2F+?/"), "list=true"]), max_size=6)))
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.0"]))
    headers: list[tuple[str, str]] = []
    for name, value in draw(st.lists(st.one_of(st.tuples(_NAMES, _VALUES), _MEANINGFUL), max_size=6)):
        if name.lower() != "content-length":
            pad = draw(st.sampled_from(["", " ", "  ", "\t", " \t"]))
            headers.append((name, pad + value + draw(st.sampled_from(["", " ", "\t"]))))
    body = draw(st.binary(max_size=40))
    if body or draw(st.booleans()):
        headers.insert(draw(st.integers(0, len(headers))), ("Content-Length", str(len(body))))
    head = f"{method} {path} {version}\r\n" + "".join(f"{n}:{v}\r\n" for n, v in headers) + "\r\n"
    return head.encode("latin-1") + body


@given(requests())
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_every_request_taken_gets_gunicorns_environ(sock: socket.socket, data: bytes) -> None:
    req = httpplain.parse(data, LIMITS)
    if req is None:
        return
    expected, should_close = gunicorn_view(data, sock)  # raises if gunicorn would refuse it
    assert comparable(MAKER.make(req, sock, CLIENT, SERVER)) == expected
    assert req.should_close() == should_close


def test_the_generated_requests_are_mostly_taken() -> None:
    """So that the comparison above compares: most generated requests are
    plain (an over-strict parser would pass it by taking none)."""
    taken = 0

    @given(requests())
    @settings(max_examples=300, deadline=None, database=None)
    def count(data: bytes) -> None:
        nonlocal taken
        taken += httpplain.parse(data, LIMITS) is not None

    count()
    assert taken >= 30


def test_a_unix_socket_server_is_named_from_the_host_header(sock: socket.socket) -> None:
    data = b"GET /v1/sys/health HTTP/1.1\r\nHost: vault.internal:8200\r\n\r\n"
    req = httpplain.parse(data, LIMITS)
    assert req is not None
    greq = next(ghttp.RequestParser(CFG, [data], ""))
    _resp, expected = gwsgi.create(greq, sock, "", "/run/vaultd/agent.sock", CFG)
    assert comparable(MAKER.make(req, sock, "", "/run/vaultd/agent.sock")) == comparable(expected)


# -- answers ----------------------------------------------------------------------

_DATE = re.compile(rb"\r\nDate: [^\r]*\r\n")


def _answer(response_of: Any, data: bytes, status: str, headers: list[tuple[str, str]], chunks: list[bytes],
            force_close: bool) -> tuple[bytes, bool]:
    """What one response object writes for an app answer, and whether it
    would keep the connection."""
    left, right = socket.socketpair()
    received = bytearray()

    def drain() -> None:
        while chunk := right.recv(65536):
            received.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        resp = response_of(data, left)
        if force_close:
            resp.force_close()
        write = resp.start_response(status, list(headers))
        for chunk in chunks:
            write(chunk)
        resp.close()
        keep = not resp.should_close()
    finally:
        left.shutdown(socket.SHUT_WR)
        reader.join()
        left.close()
        right.close()
    return _DATE.sub(b"\r\nDate: -\r\n", bytes(received)), keep


def gunicorn_response(data: bytes, sock: socket.socket) -> Any:
    req = next(ghttp.RequestParser(CFG, [data], CLIENT))
    return gwsgi.Response(req, sock, CFG)


def plain_response(data: bytes, sock: socket.socket) -> Any:
    req = httpplain.parse(data, LIMITS)
    assert req is not None
    return httpplain.PlainResponse(req, sock)


@given(
    method=st.sampled_from(["GET", "HEAD", "PUT"]),
    connection=st.sampled_from(["", "Connection: close\r\n", "Connection: keep-alive\r\n"]),
    status=st.sampled_from(["200 OK", "204 NO CONTENT", "304 NOT MODIFIED", "307 TEMPORARY REDIRECT",
                            "404 NOT FOUND", "500 INTERNAL SERVER ERROR", "101 SWITCHING PROTOCOLS"]),
    chunks=st.lists(st.binary(max_size=30), max_size=3),
    length=st.sampled_from(["exact", "none", "short", "long"]),
    extra=st.lists(st.sampled_from([("Content-Type", "application/json"), ("Cache-Control", "no-store"),
                                    ("Location", "http://127.0.0.1:8201/v1/x"), ("X-Padded", "  v \t"),
                                    ("Connection", "keep-alive"), ("Keep-Alive", "timeout=5")]), max_size=3),
    force_close=st.booleans(),
)
@settings(max_examples=300, deadline=None)
def test_answers_are_gunicorns_bytes(
    method: str, connection: str, status: str, chunks: list[bytes], length: str,
    extra: list[tuple[str, str]], force_close: bool,
) -> None:
    data = f"{method} /v1/x HTTP/1.1\r\nHost: h\r\n{connection}\r\n".encode()
    headers = list(extra)
    size = sum(map(len, chunks))
    if length != "none":
        headers.append(("Content-Length", str({"exact": size, "short": max(0, size - 3), "long": size + 3}[length])))
    ours = _answer(plain_response, data, status, headers, chunks, force_close)
    theirs = _answer(gunicorn_response, data, status, headers, chunks, force_close)
    assert ours == theirs


def test_a_fixed_length_answer_leaves_in_one_send() -> None:
    """The point of the module's response: head and body in one segment."""
    sent: list[bytes] = []

    class Recorder:
        def sendall(self, data: bytes) -> None:
            sent.append(data)

    req = httpplain.parse(b"GET /v1/x HTTP/1.1\r\nHost: h\r\n\r\n", LIMITS)
    assert req is not None
    resp = httpplain.PlainResponse(req, Recorder())
    resp.start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", "2")])(b"{}")
    resp.close()
    assert len(sent) == 1
    assert sent[0].startswith(b"HTTP/1.1 200 OK\r\n") and sent[0].endswith(b"\r\n\r\n{}")


@pytest.mark.parametrize(
    "header",
    [("X-Bad", "s3cr3t\r\nSet-Cookie: x"), ("X-Bad", "s3cr3t\nb"), ("X Bad", "s3cr3t"), ("X-Bad", "s3cr3t\x00")],
)
def test_a_header_that_would_split_the_answer_is_refused(header: tuple[str, str]) -> None:
    """Refused before anything is sent, and without the value in the error
    (a header value can be a token)."""
    req = httpplain.parse(b"GET /v1/x HTTP/1.1\r\nHost: h\r\n\r\n", LIMITS)
    assert req is not None
    resp = httpplain.PlainResponse(req, None)
    with pytest.raises(ValueError) as caught:
        resp.start_response("200 OK", [header])
    assert "s3cr3t" not in str(caught.value)
    assert not resp.headers_sent


@pytest.mark.parametrize("status", ["200 OK\r\nSet-Cookie: x", "20 OK", "OK", "200\tOK"])
def test_a_status_line_that_would_split_the_answer_is_refused(status: str) -> None:
    req = httpplain.parse(b"GET /v1/x HTTP/1.1\r\nHost: h\r\n\r\n", LIMITS)
    assert req is not None
    with pytest.raises(ValueError):
        httpplain.PlainResponse(req, None).start_response(status, [])
