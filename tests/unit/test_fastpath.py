"""The fast path answers exactly what the Flask handlers answer.

Each request is sent twice to the same core: once through the app as
served (``app.wsgi_app`` is the fast path) and once straight to the Flask
app behind it.  Status line, headers and JSON body must match, apart from
``request_id``, which is new on every response.  Requests the fast path
must leave alone are checked to reach Flask.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from vaultd.api.app import create_app
from vaultd.api.fastpath import FastPath
from vaultd.core.core import Core, CoreSettings
from vaultd.core.seal_state import SharedSealState
from vaultd.logical import Operation, Request
from vaultd.server import dev_bootstrap
from vaultd.storage.file import FileStorage

Answer = tuple[str, list[tuple[str, str]], bytes]


class Server:
    def __init__(self, tmp_path: Path) -> None:
        self.core = Core(FileStorage(str(tmp_path)), SharedSealState.create(lock_memory=False),
                         CoreSettings(storage_type="file"))
        _, self.root = dev_bootstrap(self.core)
        self.app = create_app(self.core)
        outer: Any = self.app.wsgi_app
        while not isinstance(outer, FastPath):  # under the audit and metrics middleware
            outer = outer.app
        self.fast: FastPath = outer
        self.flask_calls = 0
        flask_app = self.fast.app

        def counting(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            self.flask_calls += 1
            return flask_app(environ, start_response)

        self.fast.app = counting
        self.flask = flask_app

    def write(self, path: str, data: dict[str, Any]) -> None:
        self.core.handle(self.root, Request(operation=Operation.UPDATE, path=path, data=data))

    def token(self, **params: Any) -> str:
        token, _ = self.core.tokens.create(self.core.authenticate(self.root), params)
        return token


def _environ(method: str, path: str, headers: dict[str, str], query: str = "", body: bytes = b"") -> dict[str, Any]:
    environ = {
        "REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query, "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8200", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr, "REMOTE_ADDR": "127.0.0.1",
    }
    if body:
        environ["CONTENT_LENGTH"] = str(len(body))
        environ["CONTENT_TYPE"] = "application/json"
    for name, value in headers.items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    return environ


def _call(app: Callable[..., Iterable[bytes]], environ: dict[str, Any]) -> Answer:
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        seen["status"], seen["headers"] = status, headers

    body = b"".join(app(environ, start_response))
    return seen["status"], sorted(seen["headers"]), body


def _comparable(answer: Answer) -> tuple[str, list[tuple[str, str]], Any]:
    status, headers, body = answer
    if not body:
        return status, headers, None
    parsed = json.loads(body)
    if "request_id" in parsed:
        assert len(parsed.pop("request_id")) == 36
    # Content-Length differs only if request_id's length did: it is fixed.
    return status, headers, parsed


@pytest.fixture
def server(tmp_path: Path) -> Server:
    s = Server(tmp_path)
    s.write("secret/data/app", {"data": {"user": "svc", "password": "hunter2"}})
    s.write("secret/data/app", {"data": {"user": "svc", "password": "hunter3"}})
    s.core.handle(s.root, Request(operation=Operation.UPDATE, path="secret/delete/app", data={"versions": [1]}))
    s.core.enable_mount(s.root, "kv1/", "kv", "", {}, {})
    s.write("kv1/plain", {"a": "b"})
    return s


def _same(server: Server, path: str, headers: dict[str, str]) -> tuple[str, Any]:
    calls = server.flask_calls
    fast = _comparable(_call(server.fast, _environ("GET", path, headers)))
    assert server.flask_calls == calls, "the fast path handed this request to Flask"
    slow = _comparable(_call(server.flask, _environ("GET", path, headers)))
    assert fast == slow
    return fast[0], fast[2]


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v1/secret/data/app", "200 OK"),
        ("/v1/secret/data/missing", "404 NOT FOUND"),
        ("/v1/secret/metadata/app", "200 OK"),
        ("/v1/secret/subkeys/app", "200 OK"),
        ("/v1/secret/config", "200 OK"),
        ("/v1/secret/data/", "404 NOT FOUND"),
        ("/v1/secret/data/app/", "200 OK"),
        ("/v1/secret/nonsense/app", "404 NOT FOUND"),
        ("/v1/secret/", "404 NOT FOUND"),
        ("/v1/kv1/plain", "200 OK"),
        ("/v1/kv1/absent", "404 NOT FOUND"),
        ("/v1/nomount/x", "404 NOT FOUND"),
        ("/v1/auth/token/lookup-self", "200 OK"),
        ("/v1/auth/approle/login", "404 NOT FOUND"),
    ],
)
def test_reads_match_flask(server: Server, path: str, status: str) -> None:
    got, body = _same(server, path, {"X-Vault-Token": server.root})
    assert got == status
    if got == "200 OK":
        assert body["data"]


def test_a_bearer_token_works_the_same(server: Server) -> None:
    status, body = _same(server, "/v1/secret/data/app", {"Authorization": f"Bearer {server.root}"})
    assert (status, body["data"]["data"]["password"]) == ("200 OK", "hunter3")


def test_a_deleted_version_is_404_with_its_metadata(server: Server) -> None:
    server.core.handle(server.root, Request(operation=Operation.DELETE, path="secret/data/app"))
    status, body = _same(server, "/v1/secret/data/app", {"X-Vault-Token": server.root})
    assert status == "404 NOT FOUND" and body["data"]["metadata"]["deletion_time"]


@pytest.mark.parametrize("headers", [{}, {"X-Vault-Token": "hvs.wrong"}, {"Authorization": "Basic eDp5"}])
@pytest.mark.parametrize("path", ["/v1/secret/data/app", "/v1/nomount/x", "/v1/auth/token/lookup-self"])
def test_missing_or_bad_tokens_match_flask(server: Server, headers: dict[str, str], path: str) -> None:
    status, body = _same(server, path, headers)
    assert status == "403 FORBIDDEN" and body == {"errors": ["permission denied"]}


def test_a_token_without_the_policy_is_refused_the_same(server: Server) -> None:
    token = server.token(policies=["default"])
    status, _ = _same(server, "/v1/secret/data/app", {"X-Vault-Token": token})
    assert status == "403 FORBIDDEN"
    status, body = _same(server, "/v1/auth/token/lookup-self", {"X-Vault-Token": token})
    assert status == "200 OK" and body["data"]["policies"] == ["default"]


def test_a_token_without_the_default_policy_may_not_look_itself_up(server: Server) -> None:
    token = server.token(policies=["nothing"], no_default_policy=True)
    status, _ = _same(server, "/v1/auth/token/lookup-self", {"X-Vault-Token": token})
    assert status == "403 FORBIDDEN"


def test_sealed_is_503_on_both(server: Server) -> None:
    server.core.seal(server.root)
    for path in ("/v1/secret/data/app", "/v1/auth/token/lookup-self"):
        status, body = _same(server, path, {"X-Vault-Token": server.root})
        assert status == "503 SERVICE UNAVAILABLE" and body == {"errors": ["Vault is sealed"]}


def test_a_limited_use_token_loses_one_use_per_request_on_either_path(server: Server) -> None:
    token = server.token(policies=["default"], num_uses=4)
    headers = {"X-Vault-Token": token}
    _, first = _comparable(_call(server.fast, _environ("GET", "/v1/auth/token/lookup-self", headers)))[::2]
    _, second = _comparable(_call(server.flask, _environ("GET", "/v1/auth/token/lookup-self", headers)))[::2]
    assert (first["data"]["num_uses"], second["data"]["num_uses"]) == (3, 2)


def test_a_broken_stored_value_is_the_same_500_without_its_text(server: Server, tmp_path: Path) -> None:
    mount = server.core.router.route("secret/data/app")[0]
    key = f"logical/{mount.uuid}/versions/app/2"
    server.core.physical.put(key, b"\x00\x00\x00\x01\x01" + b"x" * 40)
    status, body = _same(server, "/v1/secret/data/app", {"X-Vault-Token": server.root})
    assert status == "500 INTERNAL SERVER ERROR"
    assert "hunter" not in json.dumps(body)


@pytest.mark.parametrize(
    ("method", "path", "query", "body"),
    [
        ("GET", "/v1/secret/data/app", "version=1", b""),
        ("GET", "/v1/secret/metadata/", "list=true", b""),
        ("HEAD", "/v1/secret/data/app", "", b""),
        ("POST", "/v1/secret/data/app", "", b'{"data": {"a": "b"}}'),
        ("GET", "/v1/secret/data/app", "", b'{"ignored": true}'),
        ("GET", "/v1/sys/mounts", "", b""),
        ("GET", "/v1/sys/health", "", b""),
        ("GET", "/v1/auth/token/lookup", "", b""),
        ("GET", "/v1/secret//data/app", "", b""),
        ("GET", "/v1/secret/data/../data/app", "", b""),
        ("GET", "/v1/secret/data/\xc3\xa9", "", b""),
        ("GET", "/v1/", "", b""),
        ("GET", "/v2/secret/data/app", "", b""),
    ],
)
def test_everything_else_goes_to_flask(server: Server, method: str, path: str, query: str, body: bytes) -> None:
    calls = server.flask_calls
    _call(server.fast, _environ(method, path, {"X-Vault-Token": server.root}, query, body))
    assert server.flask_calls == calls + 1
