"""Issue 9, "Why" 4 and 6, against a real server (file storage, 2 workers).

Each poison input once got a 500 with a traceback in the log, and the first
two left a key that answered 500 for good.  Now each is a 4xx, the key stays
readable and writable, and the log has no traceback.  Separately: an unknown
body field (node-vault's ``mount_point``) is accepted and, where Vault says
so, named in ``warnings``.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests

from tests.integration.support import InitResult, Server

IGNORED = "Endpoint ignored these unrecognized parameters: [{}]"


@pytest.fixture
def kv(unsealed: tuple[Server, InitResult]) -> tuple[Server, str]:
    """The unsealed server with a KV v2 mount ``kv/`` and one key ``kv/app``."""
    server, init = unsealed
    token = init.root_token
    server.call("POST", "sys/mounts/kv", 204, token=token, json_body={"type": "kv", "options": {"version": "2"}})
    server.call("POST", "kv/data/app", token=token, json_body={"data": {"v": "1"}})
    return server, token


def _refused(server: Server, response: requests.Response, status: int = 400) -> list[str]:
    assert response.status_code == status, server.explain(
        f"{response.request.method} {response.url[:120]}: expected {status}, got {response.status_code}: "
        f"{response.text[:300]}"
    )
    return response.json()["errors"]


def _still_usable(server: Server, token: str, key: str = "app") -> None:
    """The key reads and takes a new version; its metadata and the mount's config read."""
    before = server.call("GET", f"kv/data/{key}", token=token)["data"]["metadata"]["version"]
    server.call("POST", f"kv/data/{key}", token=token, json_body={"data": {"v": "after"}})
    after = server.call("GET", f"kv/data/{key}", token=token)["data"]
    assert after["data"] == {"v": "after"} and after["metadata"]["version"] == before + 1
    assert after["metadata"]["deletion_time"] == ""
    server.call("GET", f"kv/metadata/{key}", token=token)
    server.call("GET", "kv/config", token=token)


def _no_traceback(server: Server) -> None:
    log = server.log_text()
    assert "Traceback" not in log and "internal error" not in log, server.explain("the server logged an error")


def test_huge_delete_version_after_on_a_key_is_refused(kv: tuple[Server, str]) -> None:
    server, token = kv
    meta_before = server.call("GET", "kv/metadata/app", token=token)["data"]
    for value in (100000000000000000, 9223372037, "106752d", "2562048h", "99999999999999999999"):
        errors = _refused(server, server.request("POST", "kv/metadata/app", token=token,
                                                 json_body={"delete_version_after": value}))
        assert "delete_version_after" in errors[0]
    meta_after = server.call("GET", "kv/metadata/app", token=token)["data"]
    assert meta_after == meta_before, "a refused metadata write changed the key"
    _still_usable(server, token)
    # The largest value Go holds (about 292 years) is accepted and works.
    server.call("POST", "kv/metadata/app", 204, token=token, json_body={"delete_version_after": 9223372036})
    server.call("POST", "kv/data/app", token=token, json_body={"data": {"v": "far"}})
    assert server.call("GET", "kv/data/app", token=token)["data"]["metadata"]["deletion_time"].startswith("23")
    _no_traceback(server)


def test_huge_delete_version_after_on_the_mount_is_refused(kv: tuple[Server, str]) -> None:
    server, token = kv
    config_before = server.call("GET", "kv/config", token=token)["data"]
    for value in ("99999999999999d", "-9223372037", 10**30):
        errors = _refused(server, server.request("POST", "kv/config", token=token,
                                                 json_body={"delete_version_after": value}))
        assert errors == [
            'Field validation failed: error converting input for field "delete_version_after": '
            "multiplication of durations resulted in overflow, one operand may be too large"
        ]
    assert server.call("GET", "kv/config", token=token)["data"] == config_before
    _still_usable(server, token)
    _no_traceback(server)


def test_deep_json_on_unauthenticated_unseal_is_a_400(unsealed: tuple[Server, InitResult]) -> None:
    server, _ = unsealed
    before = server.seal_status()
    for body in (b"[" * 100_000 + b"]" * 100_000, b'{"key": ' + b"[" * 501 + b"]" * 501 + b"}"):
        errors = _refused(server, server.request("PUT", "sys/unseal", data=body,
                                                 headers={"Content-Type": "application/json"}))
        assert errors[0].startswith("failed to decode JSON input")
    assert server.seal_status() == before
    _no_traceback(server)


def test_lone_surrogate_in_a_value_is_a_400(kv: tuple[Server, str]) -> None:
    server, token = kv
    for body in (b'{"data": {"v": "\\ud800"}}', b'{"data": {"\\udfff": "v"}}', b'{"data": {"v": ["a\\udc00b"]}}'):
        errors = _refused(server, server.request("POST", "kv/data/app", token=token, data=body,
                                                 headers={"Content-Type": "application/json"}))
        assert "surrogate" in errors[0]
    assert server.call("GET", "kv/data/app", token=token)["data"]["data"] == {"v": "1"}
    # A correctly paired surrogate (an emoji) is just text.
    server.call("POST", "kv/data/app", token=token, data=b'{"data": {"v": "\\ud83d\\ude00"}}',
                headers={"Content-Type": "application/json"})
    assert server.call("GET", "kv/data/app", token=token)["data"]["data"] == {"v": "\N{GRINNING FACE}"}
    _still_usable(server, token)
    _no_traceback(server)


@pytest.mark.parametrize("segment", ["a" * 255, "é" * 43, "_" + "a" * 253])
def test_over_long_path_segment_is_a_400(kv: tuple[Server, str], segment: str) -> None:
    server, token = kv
    for method, path, body in (
        ("POST", f"kv/data/{segment}", {"data": {"v": "x"}}),
        ("GET", f"kv/data/{segment}", None),
        ("POST", f"kv/metadata/dir/{segment}", {"max_versions": 2}),
        ("LIST", f"kv/metadata/{segment}/", None),
        ("DELETE", f"kv/metadata/{segment}", None),
    ):
        errors = _refused(server, server.request(method, path, token=token, json_body=body))
        assert "path segment" in errors[0]
    server.call("LIST", "kv/metadata/", token=token)  # nothing was created
    assert server.call("LIST", "kv/metadata/", token=token)["data"]["keys"] == ["app"]
    _still_usable(server, token)
    _no_traceback(server)


def test_a_segment_at_the_limit_works(kv: tuple[Server, str]) -> None:
    server, token = kv
    key = "a" * 254
    server.call("POST", f"kv/data/{key}", token=token, json_body={"data": {"v": "long"}})
    assert server.call("GET", f"kv/data/{key}", token=token)["data"]["data"] == {"v": "long"}


def test_node_vault_mount_point_field_is_accepted(kv: tuple[Server, str]) -> None:
    """node-vault sends ``mount_point`` in the body of ``POST sys/mounts/<path>``.
    Vault accepts it; its mount handler answers 204 without a body, so no
    warning either (Vault adds it only to a response that has one)."""
    server, token = kv
    response = server.request("POST", "sys/mounts/node", token=token,
                              json_body={"type": "kv", "mount_point": "node", "options": {"version": "2"}})
    assert response.status_code == 204, server.explain(response.text)
    mounts = server.call("GET", "sys/mounts", token=token)["data"]
    assert mounts["node/"]["type"] == "kv" and mounts["node/"]["options"] == {"version": "2"}
    server.call("POST", "node/data/x", token=token, json_body={"data": {"v": "1"}})


def test_unknown_fields_are_named_in_warnings(kv: tuple[Server, str]) -> None:
    server, token = kv
    created: Any = server.call("POST", "auth/token/create", token=token,
                               json_body={"ttl": "1h", "zz": 1, "aa": [1]})
    assert created["warnings"] == [IGNORED.format("aa zz")]
    server.known_secrets.append(created["auth"]["client_token"])
    looked = server.call("POST", "auth/token/lookup", token=token,
                         json_body={"token": created["auth"]["client_token"], "mount_point": "token"})
    assert looked["warnings"] == [IGNORED.format("mount_point")]
    written = server.call("POST", "kv/data/app", token=token, json_body={"data": {"v": "2"}, "extra": 1})
    assert written["warnings"] == [IGNORED.format("extra")]
    # A wrong type of a known field is still a 400, and nothing is created.
    _refused(server, server.request("POST", "auth/token/create", token=token, json_body={"ttl": [1], "zz": 1}))
    _refused(server, server.request("POST", "kv/metadata/app", token=token,
                                    json_body={"max_versions": "lots", "zz": 1}))
    # The raw sys/ handlers ignore extras silently, as Vault's do.
    status = server.call("GET", "sys/seal-status")
    assert "warnings" not in status
    _no_traceback(server)
