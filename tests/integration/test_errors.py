"""Bad input against a real server: every refusal is a 4xx (or 503 while
sealed) with Vault's ``{"errors": [...]}`` body, nothing changes, nothing is
a 500, and nothing secret reaches a response body or the server's log.

One server (4 workers, file storage, ``max_request_size = 1024``) is walked
through uninitialised → sealed → unsealed → sealed, and at each stage every
bad request is followed by a check that the server's observable state is
exactly what it was before.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.integration.support import InitResult, Server, ServerFactory, wait_for

SECRET_VALUE = "correct-horse-battery-staple"
MAX_BODY = 1024


class Checker:
    """Sends requests and checks each answer against the rules above."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.count = 0

    def send(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        self.count += 1
        response = self.server.request(method, path, **kwargs)
        text = response.text
        assert response.status_code < 500 or response.status_code == 503, self.server.explain(
            f"{method} {path}: server error {response.status_code}: {text[:500]}"
        )
        assert "Traceback" not in text and 'File "' not in text, f"{method} {path}: traceback in body"
        assert SECRET_VALUE not in text or path.startswith("kv/data/app"), f"{method} {path}: secret in body"
        return response

    def refused(self, method: str, path: str, status: int, *, messages: bool = True, **kwargs: Any) -> list[str]:
        """Assert a refusal with ``status`` and an ``errors`` list."""
        response = self.send(method, path, **kwargs)
        assert response.status_code == status, self.server.explain(
            f"{method} {path} {kwargs}: expected {status}, got {response.status_code}: {response.text[:500]}"
        )
        assert response.headers.get("Content-Type", "").startswith("application/json"), response.headers
        body = response.json()
        assert set(body) == {"errors"}, f"{method} {path}: {body}"
        errors = body["errors"]
        assert isinstance(errors, list) and all(isinstance(e, str) for e in errors), body
        if messages:
            assert errors, f"{method} {path}: empty errors list"
        return errors


@pytest.fixture
def limited(server_factory: ServerFactory) -> Server:
    return server_factory(listener_extra=f"  max_request_size = {MAX_BODY}\n")


@pytest.fixture
def other_init_share(server_factory: ServerFactory) -> Iterator[str]:
    """A well-formed share from a different server's init."""
    other = server_factory(workers=1, storage="inmem", name="other")
    share = other.init().keys[0]
    other.stop()
    yield share


def _snapshot(server: Server, token: str | None) -> dict[str, Any]:
    """Everything a bad request could have changed, as seen from outside."""
    status = server.seal_status()
    state: dict[str, Any] = {"seal": {k: status[k] for k in ("initialized", "sealed", "t", "n", "progress", "nonce")}}
    if token is None or status["sealed"]:
        return state
    mounts = server.call("GET", "sys/mounts", token=token)["data"]
    state["mounts"] = {path: (m["type"], m["options"], m["description"], m["config"]) for path, m in mounts.items()}
    state["key_term"] = server.call("GET", "sys/key-status", token=token)["data"]["term"]
    if "kv/" in mounts:
        meta = server.call("GET", "kv/metadata/app", token=token)["data"]
        meta.pop("updated_time")
        state["kv_meta"] = meta
        state["kv_data"] = server.call("GET", "kv/data/app", token=token)["data"]["data"]
        state["kv_config"] = server.call("GET", "kv/config", token=token)["data"]
    if "kv1/" in mounts:
        state["kv1"] = server.call("LIST", "kv1/", token=token)["data"]["keys"]
    return state


MALFORMED = [b"{bad", b'{"a":', b"\xff\xfe\x00", b"{'single': 'quotes'}", b"[1, 2", b'{"a": 1}{"b": 2}',
             # Python's json takes these, Go's does not (or not as sent): each once ended in a 500.
             b'{"a": NaN}', b'{"a": -Infinity}', b'{"a": 1e400}', b'{"a": "\\ud800"}', b'{"\\udfff": 1}',
             b'{"a": ' + b"[" * 500 + b"]" * 500 + b"}"]
NOT_OBJECTS = [b"[1, 2]", b'"a string"', b"42", b"true"]


def _bodies_that_are_not_objects() -> list[bytes]:
    return MALFORMED + NOT_OBJECTS


def test_bad_input_is_refused_and_changes_nothing(limited: Server, other_init_share: str) -> None:
    server, check = limited, Checker(limited)

    # -- uninitialised -----------------------------------------------------------------------
    before = _snapshot(server, None)
    for body in _bodies_that_are_not_objects():
        check.refused("PUT", "sys/init", 400, data=body)
    for body in (
        {"secret_shares": "5", "secret_threshold": 3},
        {"secret_shares": 5, "secret_threshold": 3.5},
        # An unknown field is ignored (as in Vault), so it cannot hide a bad known one.
        {"secret_shares": 5, "secret_threshold": 6, "bogus": 1},
        {"secret_shares": 5, "secret_threshold": 6},
        {"secret_shares": 0, "secret_threshold": 0},
        {"secret_shares": 256, "secret_threshold": 3},
        {"secret_shares": 5, "secret_threshold": 1},
        {"secret_shares": 5, "secret_threshold": 3, "pgp_keys": "not-a-list"},
    ):
        check.refused("PUT", "sys/init", 400, json_body=body)
    check.refused("PUT", "sys/unseal", 400, json_body={"key": "00" * 33})  # not initialised
    check.refused("PUT", "sys/init", 413, data=json.dumps({"secret_shares": 5, "pad": "x" * MAX_BODY}))
    assert _snapshot(server, None) == before

    init = server.init()
    token = init.root_token

    # -- sealed: bad shares ---------------------------------------------------------------------
    check.send("PUT", "sys/unseal", json_body={"key": init.keys[0]})
    before = _snapshot(server, token)
    assert before["seal"]["progress"] == 1
    share = bytes.fromhex(init.keys[1])
    for key in (
        init.keys[0],  # the same share twice
        init.keys_base64[0],  # ... also when sent in its other encoding
        other_init_share,  # a share from another init
        share[:20].hex(),  # wrong length (too short for a 33-byte share)
        (share + b"\x01").hex(),  # wrong length (one byte too long)
        "ab" * 40,  # longer than any share
        "abcd",  # shorter than 16 bytes
        "zz" * 33,  # neither hex nor base64
        "not base64 at all!",
        share.hex()[:-1],  # odd-length hex
        "",  # empty
    ):
        check.refused("PUT", "sys/unseal", 400, json_body={"key": key})
    for body in ({"key": 5}, {"key": ["a"]}, {"reset": "yes"}, {"key": "zz" * 33, "extra": 1}, {}):
        check.refused("PUT", "sys/unseal", 400, json_body=body)
    for body in _bodies_that_are_not_objects():
        check.refused("PUT", "sys/unseal", 400, data=body)
    check.refused("PUT", "sys/unseal", 413, data=json.dumps({"key": init.keys[1], "pad": "x" * MAX_BODY}))
    assert _snapshot(server, token) == before, "a refused share changed the unseal progress"

    # -- sealed: 503 on everything but the unauthenticated sys endpoints -----------------------------------
    for method, path in (
        ("GET", "sys/mounts"),
        ("POST", "sys/mounts/x"),
        ("GET", "sys/auth"),
        ("GET", "sys/key-status"),
        ("POST", "sys/rotate"),
        ("GET", "sys/internal/ui/mounts/kv/app"),
        ("GET", "auth/token/lookup-self"),
        ("POST", "auth/token/create"),
        ("GET", "kv/data/app"),
        ("GET", "sys/nope"),
        ("GET", "nomount/x"),
        ("PUT", "sys/seal"),
    ):
        for auth in (token, "s.invalid", None):
            check.refused(method, path, 503, token=auth)
    assert check.send("GET", "sys/seal-status").status_code == 200
    assert check.send("GET", "sys/init").json() == {"initialized": True}
    assert check.send("GET", "sys/leader").status_code == 200
    assert check.send("GET", "sys/health").status_code == 503  # sealed, by its own rules
    assert check.send("GET", "sys/health?sealedcode=200").status_code == 200
    assert check.send("HEAD", "sys/health?sealedcode=204").status_code == 204
    # Wrong methods on the unauthenticated handlers are 405 even while sealed.
    for method, path in (("DELETE", "sys/seal-status"), ("POST", "sys/health"), ("GET", "sys/unseal")):
        check.refused(method, path, 405, messages=False)
    assert _snapshot(server, token) == before

    check.send("PUT", "sys/unseal", json_body={"reset": True})
    server.unseal(init.keys[2:5])

    # -- unsealed: set up something to protect ------------------------------------------------------
    server.call("POST", "sys/mounts/kv", 204, token=token, json_body={"type": "kv", "options": {"version": "2"}})
    server.call("POST", "sys/mounts/kv1", 204, token=token, json_body={"type": "kv"})
    server.call("POST", "kv/data/app", token=token, json_body={"data": {"password": SECRET_VALUE}})
    server.call("POST", "kv1/one", 204, token=token, json_body={"password": SECRET_VALUE})
    before = _snapshot(server, token)

    _malformed_and_mistyped(check, token)
    assert _snapshot(server, token) == before, "a refused request changed state"

    _unknown_paths_and_methods(check, token)
    assert _snapshot(server, token) == before

    _oversized(check, token)
    assert _snapshot(server, token) == before

    _tokens(check, server, token)
    assert _snapshot(server, token) == before

    log = server.log_text()
    for secret in [*init.secrets, SECRET_VALUE, other_init_share, *server.known_secrets]:
        assert secret not in log, "a secret reached the server log"
    assert "Traceback" not in log and "internal error" not in log, server.explain("the server logged an error")
    assert check.count > 150


def _malformed_and_mistyped(check: Checker, token: str) -> None:
    writes = ("sys/mounts/new", "sys/mounts/kv/tune", "kv/data/app", "kv/metadata/app", "kv/config", "kv1/one",
              "auth/token/create", "auth/token/lookup", "sys/seal", "sys/rotate")
    for path in writes:
        for body in MALFORMED:
            check.refused("POST", path, 400, token=token, data=body)
        for body in NOT_OBJECTS:
            check.refused("POST", path, 400, token=token, data=body)

    wrong = [
        ("sys/mounts/new", {"type": 5}),
        ("sys/mounts/new", {"type": "kv", "options": "x"}),
        ("sys/mounts/new", {"type": "kv", "config": []}),
        ("sys/mounts/new", {"type": "kv", "description": 5}),
        ("sys/mounts/new", {"type": "kv", "config": {"default_lease_ttl": "soon"}}),
        ("sys/mounts/new", {"type": "kv", "options": {"version": "3"}}),
        ("sys/mounts/new", {"type": "no-such-engine"}),
        ("sys/mounts/new", {"description": "no type"}),
        ("sys/mounts/kv", {"type": "kv"}),  # already mounted
        ("sys/mounts/sys", {"type": "kv"}),  # reserved
        ("sys/mounts/a%00b", {"type": "kv"}),  # unprintable
        ("sys/mounts/..%2Fescape", {"type": "kv"}),  # relative
        ("sys/mounts/kv/tune", {"default_lease_ttl": True}),
        ("sys/mounts/kv/tune", {"options": {"version": [1]}}),
        ("sys/mounts/kv/tune", {"options": {"version": "1"}}),  # kv v2 -> v1 is not a tune
        ("sys/mounts/nomount/tune", {"description": "x"}),
        ("kv/data/app", {"data": "str"}),
        ("kv/data/app", {"data": {"a": 1}, "options": "x"}),
        ("kv/data/app", {"data": {"a": 1}, "options": {"cas": "x"}}),
        ("kv/data/app", {"data": {"a": 1}, "options": {"cas": 0}}),
        ("kv/data/app", {"nodata": {"a": 1}}),
        ("kv/metadata/app", {"max_versions": "abc"}),
        ("kv/metadata/app", {"custom_metadata": "abc"}),
        ("kv/metadata/app", {"custom_metadata": {"k": {"nested": 1}}}),
        ("kv/config", {"max_versions": "lots"}),
        ("kv/delete/app", {"versions": "abc"}),
        ("kv/delete/app", {"versions": [{"a": 1}]}),
        ("kv/undelete/app", {}),
        ("kv/destroy/app", {"versions": []}),
        ("kv1/two", {}),
        ("auth/token/create", {"ttl": [1]}),
        ("auth/token/create", {"ttl": "-5s"}),
        ("auth/token/create", {"policies": "root"}),
        ("auth/token/create", {"policies": [1]}),
        ("auth/token/create", {"num_uses": 1.5}),
        ("auth/token/create", {"num_uses": -1}),
        ("auth/token/create", {"meta": {"a": 1}}),
        ("auth/token/create", {"ttl": "-5s", "bogus": 1}),  # ignored unknown field, bad known one
        ("auth/token/create", {"ttl": "99999999999999d"}),  # beyond Go's int64 nanoseconds
        ("auth/token/create", {"num_uses": 2**63}),
        ("sys/mounts/new", {"type": "kv", "config": {"max_lease_ttl": 9223372037}}),
        ("sys/mounts/kv/tune", {"default_lease_ttl": "2562048h"}),
        ("kv/metadata/app", {"delete_version_after": 100000000000000000}),
        ("kv/config", {"delete_version_after": "99999999999999d"}),
        ("auth/token/lookup", {"token": 5}),
        ("auth/token/lookup", {"token": ["s.x"]}),
        ("auth/token/lookup-accessor", {}),
        ("auth/token/renew", {"token": "s.unknown"}),
        ("auth/token/renew-self", {"increment": "zz"}),
    ]
    for path, body in wrong:
        check.refused("POST", path, 400, token=token, json_body=body)
    for query in ("version=abc", "version=1.5"):
        check.refused("GET", f"kv/data/app?{query}", 400, token=token)
    for query in ("sealedcode=abc", "activecode=9999", "uninitcode=x"):
        check.refused("GET", f"sys/health?{query}", 400)
    # PATCH needs the merge-patch content type, as Vault insists (415).
    check.refused("PATCH", "kv/data/app", 415, token=token, json_body={"data": {"a": "b"}})
    check.refused("PATCH", "kv/data/app", 400, token=token, data=b"{bad",
                  headers={"Content-Type": "application/merge-patch+json"})
    check.refused("PATCH", "kv/data/nothing", 404, token=token, data=b'{"data": {"a": "b"}}',
                  headers={"Content-Type": "application/merge-patch+json"}, messages=False)


def _unknown_paths_and_methods(check: Checker, token: str) -> None:
    for method, path in (("GET", "sys/nope"), ("GET", "auth/token/nope"), ("GET", "nomount/x"),
                         ("GET", "auth/nothing/login"), ("GET", "kv1/missing")):
        check.refused(method, path, 404, token=token, messages=path != "kv1/missing")
    check.refused("GET", "sys/mounts/nomount", 400, token=token)  # Vault: "No secret engine mount at"
    # Without a token, an unknown path is a 403: nothing is revealed.
    for path in ("sys/nope", "nomount/x", "kv/data/app", "sys/mounts"):
        check.refused("GET", path, 403)
    # The raw handlers check the method before anything else.
    for method, path in (("DELETE", "sys/seal-status"), ("POST", "sys/health"), ("PUT", "sys/leader"),
                         ("DELETE", "sys/init"), ("GET", "sys/unseal"), ("GET", "sys/seal"),
                         ("PATCH", "sys/unseal")):
        for auth in (None, token):
            check.refused(method, path, 405, token=auth, messages=False)
    # System-backend paths: 405 for a wrong method, after the token check.
    for method, path in (("PUT", "sys/mounts"), ("DELETE", "sys/key-status"), ("GET", "auth/token/create"),
                         ("DELETE", "auth/token/lookup-self"), ("GET", "sys/rotate")):
        check.refused(method, path, 405, token=token)
        check.refused(method, path, 403)
    # No OPTIONS anywhere (Vault serves none without CORS).
    check.refused("OPTIONS", "sys/seal-status", 405, messages=False)
    check.refused("OPTIONS", "kv/data/app", 405, token=token)
    # Engine paths: 405 for what the engine does not do; unknown methods too.
    check.refused("DELETE", "kv/config", 405, token=token)
    check.refused("PATCH", "kv1/one", 405, token=token, data=b'{"a": "b"}',
                  headers={"Content-Type": "application/merge-patch+json"})
    check.refused("BREW", "kv/data/app", 405, token=token)


def _oversized(check: Checker, token: str) -> None:
    big = json.dumps({"data": {"blob": "x" * (2 * MAX_BODY)}})
    for path in ("kv/data/app", "kv1/one", "sys/mounts/big", "auth/token/create", "sys/unseal", "sys/seal"):
        errors = check.refused("POST", path, 413, token=token, data=big)
        assert "too large" in errors[0]
    # Without a Content-Length (chunked), the limit holds as well.

    def chunks() -> Iterator[bytes]:
        yield b'{"data": {"blob": "'
        for _ in range(8):
            yield b"x" * 512
        yield b'"}}'

    check.refused("POST", "kv/data/app", 413, token=token, data=chunks())
    # Just under the limit is fine, with or without a length (a real write
    # to a scratch key, removed again).
    fits = json.dumps({"data": {"password": SECRET_VALUE, "pad": "y" * (MAX_BODY - 100)}})
    assert len(fits) < MAX_BODY
    for body in (fits, iter([fits[:100].encode(), fits[100:].encode()])):
        written = check.send("POST", "kv/data/scratch", token=token, data=body)
        assert written.status_code == 200, written.text
    assert check.server.call("GET", "kv/data/scratch", token=token)["data"]["metadata"]["version"] == 2
    check.server.call("DELETE", "kv/metadata/scratch", 204, token=token)


def _tokens(check: Checker, server: Server, root: str) -> None:
    # Both header forms carry a token.
    assert check.send("GET", "auth/token/lookup-self", token=root).status_code == 200
    bearer = check.send("GET", "auth/token/lookup-self", headers={"Authorization": f"Bearer {root}"})
    assert bearer.status_code == 200 and bearer.json()["data"]["policies"] == ["root"]
    for header in ({"Authorization": "Bearer s.invalid"}, {"Authorization": f"Basic {root}"},
                   {"X-Vault-Token": "s.invalid"}, {"X-Vault-Token": "x" * 4000}, {}):
        check.refused("GET", "kv/data/app", 403, headers=header)
        check.refused("GET", "auth/token/lookup-self", 403, headers=header)

    child = server.call("POST", "auth/token/create", token=root, json_body={"ttl": "1h"})["auth"]["client_token"]
    server.known_secrets.append(child)
    assert check.send("GET", "kv/data/app", token=child).status_code == 200
    server.call("POST", "auth/token/revoke", 204, token=root, json_body={"token": child})
    check.refused("GET", "kv/data/app", 403, token=child)
    check.refused("GET", "auth/token/lookup-self", 403, token=child)
    check.refused("POST", "auth/token/renew-self", 403, token=child)
    check.refused("POST", "auth/token/lookup", 403, token=root, json_body={"token": child})

    short = server.call("POST", "auth/token/create", token=root, json_body={"ttl": "1s"})["auth"]["client_token"]
    server.known_secrets.append(short)
    wait_for(lambda: check.send("GET", "auth/token/lookup-self", token=short).status_code == 403,
             "the 1s token to expire", timeout=15, interval=0.25)
    check.refused("GET", "kv/data/app", 403, token=short)
    check.refused("POST", "auth/token/create", 403, token=short, json_body={"ttl": "1h"})

    # The default policy does not reach secrets or the system backend.
    weak = server.call("POST", "auth/token/create", token=root,
                       json_body={"policies": ["default"], "ttl": "1h"})["auth"]["client_token"]
    server.known_secrets.append(weak)
    assert check.send("GET", "auth/token/lookup-self", token=weak).status_code == 200
    for method, path in (("GET", "kv/data/app"), ("GET", "sys/mounts"), ("POST", "sys/seal"),
                         ("POST", "sys/mounts/x"), ("POST", "auth/token/create"), ("LIST", "kv1/")):
        check.refused(method, path, 403, token=weak, json_body={"type": "kv"} if path == "sys/mounts/x" else None)


def test_a_sealed_server_refuses_tokens_before_looking_at_them(unsealed: tuple[Server, InitResult]) -> None:
    """After ``sys/seal``, even a valid root token gets 503, and sealing again
    needs the server unsealed first (Vault answers 204 here; see the shape test)."""
    server, init = unsealed
    check = Checker(server)
    server.call("PUT", "sys/seal", 204, token=init.root_token)
    check.refused("PUT", "sys/seal", 503, token=init.root_token)
    check.refused("GET", "auth/token/lookup-self", 503, token=init.root_token)
    server.unseal(init.keys[:3])
    assert check.send("GET", "auth/token/lookup-self", token=init.root_token).status_code == 200
