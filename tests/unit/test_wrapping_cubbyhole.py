"""Cubbyhole and response wrapping through the HTTP API, in process."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.unit.test_sys_policy import Api


@pytest.fixture
def api(tmp_path: Path) -> Api:
    api = Api(tmp_path)
    api.call("POST", "secret/data/app", body={"data": {"password": "s3cr3t"}})
    return api


def wrapped(api: Api, method: str, path: str, ttl: str = "5m", token: str | None = None, body: dict | None = None):
    response = api.client.open(f"/v1/{path}", method=method, json=body,
                               headers={"X-Vault-Token": token or api.root, "X-Vault-Wrap-TTL": ttl})
    return response.status_code, response.get_json()


def unwrap(api: Api, wrapping_token: str, *, as_client: bool = True) -> tuple[int, dict]:
    if as_client:
        response = api.client.post("/v1/sys/wrapping/unwrap", headers={"X-Vault-Token": wrapping_token})
    else:
        response = api.client.post("/v1/sys/wrapping/unwrap", json={"token": wrapping_token},
                                   headers={"X-Vault-Token": api.root})
    return response.status_code, response.get_json()


def test_cubbyhole_is_private_to_each_token(api: Api) -> None:
    one, two = api.token("default"), api.token("default")
    assert api.call("POST", "cubbyhole/note", one, {"text": "mine"})[0] == 204
    assert api.call("GET", "cubbyhole/note", one)[1]["data"] == {"text": "mine"}
    assert api.call("GET", "cubbyhole/note", two)[0] == 404
    assert api.call("LIST", "cubbyhole/", one)[1]["data"]["keys"] == ["note"]
    assert "cubbyhole/" in api.call("GET", "sys/mounts")[1]["data"]
    # Destroyed with its token.
    assert api.call("POST", "auth/token/revoke", body={"token": one})[0] == 204
    assert not any(api.core.tokens.storage.list("cubbyhole/"))


def test_wrap_a_secret_read_and_unwrap_once(api: Api) -> None:
    status, body = wrapped(api, "GET", "secret/data/app")
    assert status == 200
    assert body["data"] is None and body["auth"] is None
    info = body["wrap_info"]
    assert info["ttl"] == 300 and info["creation_path"] == "secret/data/app"
    status, body = unwrap(api, info["token"])
    assert status == 200
    assert body["data"]["data"] == {"password": "s3cr3t"}
    status, body = unwrap(api, info["token"])
    assert status in (400, 403)


def test_a_third_party_unwrap_and_lookup(api: Api) -> None:
    info = wrapped(api, "GET", "secret/data/app")[1]["wrap_info"]
    lookup = api.client.post("/v1/sys/wrapping/lookup", json={"token": info["token"]}).get_json()
    assert lookup["data"]["creation_path"] == "secret/data/app" and lookup["data"]["creation_ttl"] == 300
    assert unwrap(api, info["token"], as_client=False)[1]["data"]["data"] == {"password": "s3cr3t"}
    status, body = unwrap(api, info["token"], as_client=False)
    assert status == 400 and body["errors"] == ["wrapping token is not valid or does not exist"]


def test_only_one_of_many_racing_unwraps_gets_the_secret(api: Api) -> None:
    info = wrapped(api, "GET", "secret/data/app")[1]["wrap_info"]
    results: list[int] = []

    def attempt() -> None:
        results.append(unwrap(api, info["token"], as_client=False)[0])

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200] + [400] * 7


def test_wrap_token_creation_and_wrap_endpoint(api: Api) -> None:
    _, body = wrapped(api, "POST", "auth/token/create", body={"policies": ["default"]})
    info = body["wrap_info"]
    assert info["wrapped_accessor"]
    token = unwrap(api, info["token"])[1]["auth"]["client_token"]
    assert api.call("GET", "auth/token/lookup-self", token)[1]["data"]["accessor"] == info["wrapped_accessor"]
    _, body = wrapped(api, "POST", "sys/wrapping/wrap", body={"a": "b"})
    assert unwrap(api, body["wrap_info"]["token"])[1]["data"] == {"a": "b"}
    assert api.call("POST", "sys/wrapping/wrap", body={"a": "b"})[0] == 400  # needs a wrap TTL


def test_rewrap(api: Api) -> None:
    first = wrapped(api, "GET", "secret/data/app")[1]["wrap_info"]
    response = api.client.post("/v1/sys/wrapping/rewrap", json={"token": first["token"]},
                               headers={"X-Vault-Token": api.root})
    second = response.get_json()["wrap_info"]
    assert second["token"] != first["token"]
    assert unwrap(api, first["token"], as_client=False)[0] == 400
    assert unwrap(api, second["token"])[1]["data"]["data"] == {"password": "s3cr3t"}


def test_policy_wrapping_ttl_bounds(api: Api) -> None:
    api.call("PUT", "sys/policy/w", body={"policy": """
        path "secret/data/app" {
          capabilities = ["read"]
          min_wrapping_ttl = "1m"
          max_wrapping_ttl = "10m"
        }"""})
    token = api.token("w")
    assert api.call("GET", "secret/data/app", token)[0] == 403  # must be wrapped
    assert wrapped(api, "GET", "secret/data/app", "30s", token)[0] == 403
    assert wrapped(api, "GET", "secret/data/app", "1h", token)[0] == 403
    status, body = wrapped(api, "GET", "secret/data/app", "5m", token)
    assert status == 200 and body["wrap_info"]["ttl"] == 300


def test_bad_wrap_ttl_header(api: Api) -> None:
    assert wrapped(api, "GET", "secret/data/app", "soon")[0] == 400
    assert wrapped(api, "GET", "secret/data/app", "0")[0] == 400
