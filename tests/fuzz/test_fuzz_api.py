"""Property-based tests of the HTTP API (issue 9, item 10): every
unauthenticated endpoint, the token endpoints and any request at all get a
4xx or a success, never a 5xx or a logged error, and a refused request
changes nothing.  See fuzz_support.py for the harness and the profiles;
each ``@example`` is an input that once broke vaultd."""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.fuzz.fuzz_support import (
    ErrorLog,
    Harness,
    any_text,
    check,
    dumps,
    durations,
    json_values,
    long_paths,
    nested,
    raw_bodies,
)


@pytest.fixture(scope="module")
def unsealed(tmp_path_factory: pytest.TempPathFactory) -> Harness:
    return Harness(tmp_path_factory.mktemp("unsealed"))


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory) -> Harness:
    harness = Harness(tmp_path_factory.mktemp("sealed"))
    assert harness.send("PUT", "sys/seal", token=harness.root).status_code == 204
    return harness


class Uninitialised:
    """A server that was never initialised; replaced when a fuzzed body
    happens to be a valid ``sys/init`` (a success, so allowed to change state)."""

    def __init__(self, factory: pytest.TempPathFactory) -> None:
        self.factory = factory
        self.harness = Harness(factory.mktemp("uninit"), initialised=False)

    def renew(self) -> None:
        self.harness = Harness(self.factory.mktemp("uninit"), initialised=False)


@pytest.fixture(scope="module")
def uninitialised(tmp_path_factory: pytest.TempPathFactory) -> Uninitialised:
    return Uninitialised(tmp_path_factory)


header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=60)
"""What an HTTP header value can carry (latin-1, no line breaks)."""
bodies = st.one_of(st.none(), raw_bodies, json_values.map(dumps),
                   st.dictionaries(any_text, json_values, max_size=4).map(dumps))
HEALTH_PARAMS = ["activecode", "standbycode", "drsecondarycode", "performancestandbycode", "sealedcode",
                 "uninitcode", "standbyok", "perfstandbyok", "list"]
queries = st.dictionaries(st.one_of(st.sampled_from(HEALTH_PARAMS), any_text),
                          st.one_of(any_text, st.integers().map(str)), max_size=3).map(
    lambda q: urllib.parse.urlencode({k.encode("utf-8", "surrogatepass"): v.encode("utf-8", "surrogatepass")
                                      for k, v in q.items()}))
UNAUTHENTICATED = [
    ("GET", "sys/init"), ("PUT", "sys/init"), ("POST", "sys/init"),
    ("PUT", "sys/unseal"), ("POST", "sys/unseal"), ("GET", "sys/seal-status"),
    ("GET", "sys/health"), ("HEAD", "sys/health"), ("GET", "sys/leader"),
    ("GET", "sys/vaultd/state"), ("GET", "sys/vaultd/stored-key"), ("PUT", "sys/vaultd/unseal"),
    ("PUT", "sys/seal"), ("DELETE", "sys/seal-status"), ("OPTIONS", "sys/health"), ("PATCH", "sys/unseal"),
]


@given(endpoint=st.sampled_from(UNAUTHENTICATED), body=bodies, query=queries, token=st.none() | header_text)
@example(endpoint=("PUT", "sys/unseal"), body=nested(100_000), query="", token=None)
@example(endpoint=("PUT", "sys/unseal"), body=b'{"key": "\\ud800"}', query="", token=None)
@example(endpoint=("PUT", "sys/unseal"), body=b'{"key": NaN}', query="", token=None)
@example(endpoint=("GET", "sys/health"), body=None, query="sealedcode=" + "9" * 5000, token=None)
@example(endpoint=("GET", "sys/health"), body=None, query="activecode=%D9%A2%D9%A0%D9%A0", token=None)
def test_unauthenticated_endpoints_unsealed(
    unsealed: Harness, errors: ErrorLog, endpoint: tuple[str, str], body: bytes | None, query: str, token: str | None
) -> None:
    method, path = endpoint
    if path == "sys/seal" and token == unsealed.root:
        return
    check(unsealed, errors, method, path, body=body, query=query, token=token)


@given(endpoint=st.sampled_from(UNAUTHENTICATED), body=bodies, query=queries, token=st.none() | header_text)
@example(endpoint=("PUT", "sys/unseal"), body=nested(100_000, '"x"'), query="", token=None)
@example(endpoint=("PUT", "sys/unseal"), body=b'{"key": "' + b"ab" * 33 + b'", "zz": 1}', query="", token=None)
def test_unauthenticated_endpoints_sealed(
    sealed: Harness, errors: ErrorLog, endpoint: tuple[str, str], body: bytes | None, query: str, token: str | None
) -> None:
    method, path = endpoint
    check(sealed, errors, method, path, body=body, query=query, token=token)


INIT_FIELDS = ["secret_shares", "secret_threshold", "recovery_shares", "recovery_threshold", "stored_shares",
               "pgp_keys", "recovery_pgp_keys", "root_token_pgp_key", "break_glass"]


@given(known=st.dictionaries(st.sampled_from(INIT_FIELDS), st.one_of(st.integers(-3, 300), json_values), max_size=5),
       extra=st.dictionaries(any_text, json_values, max_size=2))
@example(known={"secret_shares": 2**64, "secret_threshold": 1}, extra={})
@example(known={"secret_shares": 1, "secret_threshold": 1}, extra={"\ud800": 1})
def test_init_bodies(uninitialised: Uninitialised, errors: ErrorLog, known: dict[str, Any],
                     extra: dict[str, Any]) -> None:
    response = check(uninitialised.harness, errors, "PUT", "sys/init", body=dumps({**extra, **known}))
    if response.status_code == 200:
        uninitialised.renew()


TOKEN_FIELDS: dict[str, Any] = {
    "ttl": durations, "explicit_max_ttl": durations, "period": durations, "lease": durations,
    "increment": durations, "num_uses": st.one_of(st.integers(), st.sampled_from([2**63, -(2**63) - 1, 10**30])),
    "policies": json_values, "meta": json_values, "no_parent": json_values, "no_default_policy": json_values,
    "renewable": json_values, "type": json_values, "display_name": any_text, "id": json_values,
    "role_name": json_values, "entity_alias": json_values, "token": st.one_of(any_text, json_values),
    "accessor": st.one_of(any_text, json_values),
}
TOKEN_ENDPOINTS = [
    ("POST", "auth/token/create"), ("POST", "auth/token/create-orphan"), ("POST", "auth/token/lookup"),
    ("GET", "auth/token/lookup"), ("GET", "auth/token/lookup-self"), ("POST", "auth/token/lookup-accessor"),
    ("POST", "auth/token/renew"), ("POST", "auth/token/renew-self"), ("POST", "auth/token/revoke"),
    ("POST", "auth/token/revoke-accessor"), ("POST", "auth/token/nope"), ("DELETE", "auth/token/create"),
]
token_bodies = st.fixed_dictionaries({}, optional={name: value for name, value in TOKEN_FIELDS.items()})


@given(endpoint=st.sampled_from(TOKEN_ENDPOINTS), body=token_bodies,
       extra=st.dictionaries(any_text, json_values, max_size=2), as_root=st.booleans(), junk_token=header_text)
@example(endpoint=("POST", "auth/token/create"), body={"ttl": "99999999999999d"}, extra={}, as_root=True,
         junk_token="")
@example(endpoint=("POST", "auth/token/create"), body={"explicit_max_ttl": 9223372037}, extra={}, as_root=True,
         junk_token="")
@example(endpoint=("POST", "auth/token/create"), body={"num_uses": 10**30}, extra={}, as_root=True, junk_token="")
@example(endpoint=("POST", "auth/token/renew-self"), body={"increment": "2562048h"}, extra={}, as_root=True,
         junk_token="")
@example(endpoint=("POST", "auth/token/lookup"), body={"token": "\ud800"}, extra={}, as_root=True, junk_token="")
@example(endpoint=("GET", "auth/token/lookup-self"), body={}, extra={}, as_root=False, junk_token="s.\xff\x80")
def test_token_endpoints(unsealed: Harness, errors: ErrorLog, endpoint: tuple[str, str], body: dict[str, Any],
                         extra: dict[str, Any], as_root: bool, junk_token: str) -> None:
    method, path = endpoint
    payload = dumps({**extra, **body}) if method != "GET" else None
    check(unsealed, errors, method, path, body=payload, token=unsealed.root if as_root else junk_token)
    # The root token still works: nothing above may have revoked or spent it.
    assert unsealed.send("GET", "auth/token/lookup-self", token=unsealed.root).status_code == 200


METHODS = ["GET", "POST", "PUT", "DELETE", "LIST", "PATCH", "HEAD", "OPTIONS"]


@given(method=st.sampled_from(METHODS), path=st.one_of(long_paths, any_text, long_paths.map("secret/data/".__add__),
                                                       long_paths.map("secret/metadata/".__add__)),
       body=bodies, query=queries, as_root=st.booleans())
@example(method="POST", path="secret/data/" + "a" * 300, body=b'{"data": {"a": 1}}', query="", as_root=True)
@example(method="POST", path="secret/data/" + "é" * 43, body=b'{"data": {"a": 1}}', query="", as_root=True)
@example(method="GET", path="secret/metadata/" + "a" * 300 + "/", body=None, query="list=true", as_root=True)
@example(method="POST", path="secret/data/x", body=b'{"data": {"a": "\\ud800"}}', query="", as_root=True)
@example(method="POST", path="secret/data/x", body=b'{"data": {"a": 1e400}}', query="", as_root=True)
@example(method="POST", path="secret/data/x", body=b'{"data": ' + nested(600) + b"}", query="", as_root=True)
def test_any_request(unsealed: Harness, errors: ErrorLog, method: str, path: str, body: bytes | None, query: str,
                     as_root: bool) -> None:
    headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else None
    if path.startswith(("sys/seal", "sys/rotate")) or "revoke" in path:
        return  # would seal or rotate on purpose; covered above
    if body is not None and method in ("GET", "DELETE", "LIST"):
        body = None
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return  # no HTTP client can send it: a URL is bytes
    check(unsealed, errors, method, urllib.parse.quote(path, safe="/"), body=body, query=query,
          token=unsealed.root if as_root else None, headers=headers)


def test_fuzz_profiles_are_registered() -> None:
    """``make fuzz`` selects the long profile by name; a typo there would
    silently run the bounded one."""
    from hypothesis import settings

    assert settings.get_profile("fuzz").max_examples > settings.get_profile("bounded").max_examples


def test_harness_sees_a_change(tmp_path: Path) -> None:
    """The property can fail: a write shows in the snapshot."""
    harness = Harness(tmp_path)
    before = harness.snapshot()
    assert harness.send("POST", "secret/data/x", body=b'{"data": {"a": 1}}', token=harness.root).status_code == 200
    assert harness.snapshot() != before
