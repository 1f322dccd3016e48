"""Request decoding (vaultd/api/http.py) and the ignored-field warning,
in-process against the real app and core (issue 9, items 6 and 8)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flask import Flask

from vaultd.api.app import create_app
from vaultd.api.http import MAX_JSON_DEPTH, decode_json
from vaultd.core.core import Core, CoreSettings
from vaultd.core.seal_state import SharedSealState
from vaultd.errors import BadRequest
from vaultd.server import dev_bootstrap
from vaultd.storage.inmem import InmemStorage

IGNORED = "Endpoint ignored these unrecognized parameters: [{}]"


@pytest.mark.parametrize(
    "raw",
    [b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH, b'{"a": "\\ud83d\\ude00"}', b'{"a": 1e308}', b'{"n": 1' +
     b"0" * 400 + b"}"],
)
def test_decode_json_accepts(raw: bytes) -> None:
    decode_json(raw)


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), "nested deeper than 500"),
        (b"[" * 100_000 + b"]" * 100_000, "nested deeper than 500"),
        (b'{"a": ' * 600 + b"1" + b"}" * 600, "nested deeper than 500"),
        (b'{"a": "\\ud800"}', "surrogate"),
        (b'{"\\udc00": 1}', "surrogate"),
        (b'["\\ud83d"]', "surrogate"),
        (b'{"a": NaN}', "invalid character 'N'"),
        (b'{"a": -Infinity}', "invalid character '-'"),
        (b'{"a": 1e400}', "out of range"),
        (b'{"a": ' + b"9" * 5000 + b"}", "failed to decode JSON input"),
    ],
)
def test_decode_json_refuses(raw: bytes, words: str) -> None:
    with pytest.raises(BadRequest) as info:
        decode_json(raw)
    assert info.value.messages[0].startswith("failed to decode JSON input: ")
    assert words in info.value.messages[0]


@pytest.fixture
def app(tmp_path: Path) -> tuple[Flask, str]:
    core = Core(InmemStorage(), SharedSealState.create(lock_memory=False), CoreSettings())
    _, root = dev_bootstrap(core)
    return create_app(core), root


def test_unknown_fields_become_a_warning(app: tuple[Flask, str]) -> None:
    flask_app, root = app
    client = flask_app.test_client()
    answer = client.post("/v1/auth/token/create", json={"ttl": "1h", "zz": 1, "aa": 2},
                         headers={"X-Vault-Token": root})
    assert answer.status_code == 200
    body = answer.get_json()
    assert body["warnings"] == [IGNORED.format("aa zz")]
    assert int(answer.headers["Content-Length"]) == len(answer.get_data())
    # No warning on a 204 (Vault has no response to put it on), and the
    # mount's nested config drops unknown keys silently.
    mounted = client.post("/v1/sys/mounts/node", json={"type": "kv", "mount_point": "node", "config": {"x": 1}},
                          headers={"X-Vault-Token": root})
    assert mounted.status_code == 204 and mounted.get_data() == b""
    # The next request starts clean.
    plain = client.post("/v1/auth/token/create", json={"ttl": "1h"}, headers={"X-Vault-Token": root})
    assert plain.get_json()["warnings"] is None


def test_known_fields_are_still_checked(app: tuple[Flask, str]) -> None:
    flask_app, root = app
    client = flask_app.test_client()
    for body in ({"ttl": [1], "zz": 1}, {"num_uses": 2**63, "zz": 1}, {"ttl": "99999999999999d"}):
        answer = client.post("/v1/auth/token/create", json=body, headers={"X-Vault-Token": root})
        assert answer.status_code == 400, answer.get_data()
        assert set(answer.get_json()) == {"errors"}


def test_raw_handlers_ignore_extras_silently(app: tuple[Flask, str]) -> None:
    flask_app, _ = app
    answer = flask_app.test_client().put("/v1/sys/unseal", data=json.dumps({"reset": True, "zz": 1}))
    assert answer.status_code == 200
    assert "warnings" not in answer.get_json()


def test_invalid_utf8_in_a_path_is_stored_safely(app: tuple[Flask, str]) -> None:
    """A path or query string is bytes; Werkzeug decodes it with U+FFFD for
    what is not UTF-8 (a lone surrogate's bytes included), so nothing that
    reaches storage is unencodable, and the key reads back."""
    flask_app, root = app
    client = flask_app.test_client()
    headers = {"X-Vault-Token": root}
    written = client.post("/v1/secret/data/a%ED%A0%80b?x=%ED%A0%80", json={"data": {"v": 1}}, headers=headers)
    assert written.status_code == 200
    listed = client.get("/v1/secret/metadata/?list=true", headers=headers).get_json()["data"]["keys"]
    assert listed == ["a\ufffd\ufffd\ufffdb"]
    assert client.get("/v1/secret/data/a%ED%A0%80b", headers=headers).get_json()["data"]["data"] == {"v": 1}
