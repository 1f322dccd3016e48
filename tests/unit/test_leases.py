"""sys/leases for token leases, and the background sweep of expired tokens."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.unit.test_sys_policy import Api


@pytest.fixture
def api(tmp_path: Path) -> Api:
    api = Api(tmp_path)
    api.call("POST", "sys/auth/userpass", body={"type": "userpass"})
    api.call("POST", "auth/userpass/users/bob", body={"password": "pw", "token_ttl": "1h"})
    return api


def login(api: Api) -> dict:
    return dict(api.client.post("/v1/auth/userpass/login/bob", json={"password": "pw"}).get_json()["auth"])


def lease_of(api: Api, token: str) -> str:
    entry = api.core.tokens.lookup(token)
    assert entry is not None
    return f"{entry.path}/{entry.id_hash}"


def test_lookup_renew_revoke(api: Api) -> None:
    auth = login(api)
    lease = lease_of(api, auth["client_token"])
    status, body = api.call("PUT", "sys/leases/lookup", body={"lease_id": lease})
    assert status == 200 and body["data"]["id"] == lease and body["data"]["renewable"] is True
    status, body = api.call("PUT", "sys/leases/renew", body={"lease_id": lease, "increment": "30m"})
    assert status == 200 and body["lease_id"] == lease and body["lease_duration"] == 1800
    assert api.call("PUT", "sys/leases/revoke", body={"lease_id": lease})[0] == 204
    assert api.call("GET", "auth/token/lookup-self", auth["client_token"])[0] == 403
    assert api.call("PUT", "sys/leases/lookup", body={"lease_id": lease})[0] == 400


def test_revoke_prefix_revokes_every_login_of_a_mount(api: Api) -> None:
    tokens = [login(api)["client_token"] for _ in range(3)]
    other = api.token("default")
    status, body = api.call("LIST", "sys/leases/lookup/auth/userpass/login/bob/")
    assert status == 200 and len(body["data"]["keys"]) == 3
    assert api.call("PUT", "sys/leases/revoke-prefix/auth/userpass/")[0] == 204
    for token in tokens:
        assert api.call("GET", "auth/token/lookup-self", token)[0] == 403
    assert api.call("GET", "auth/token/lookup-self", other)[0] == 200
    assert api.call("PUT", "sys/leases/revoke-prefix/auth/userpass/", other)[0] == 403  # sudo


def test_tidy_sweeps_expired_tokens_their_children_and_cubbyholes(api: Api) -> None:
    _, body = api.call("POST", "auth/token/create", body={"ttl": "1s", "policies": ["default"]})
    parent = body["auth"]["client_token"]
    parent_hash = api.core.tokens.hash_token(parent)
    parent_entry = api.core.tokens.lookup(parent)
    assert parent_entry is not None
    child, _ = api.core.tokens.create(parent_entry, {"policies": ["default"]})
    child_hash = api.core.tokens.hash_token(child)
    api.call("POST", "cubbyhole/x", parent, {"a": "b"})
    time.sleep(1.2)
    assert api.core.tokens.tidy() >= 1  # the child expires with its parent
    store = api.core.tokens.storage
    assert store.get(f"id/{parent_hash}") is None
    assert store.get(f"id/{child_hash}") is None
    assert store.list(f"cubbyhole/{parent_hash}/") == []
    assert api.call("PUT", "sys/leases/tidy")[0] == 202
