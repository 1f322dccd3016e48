"""Auth methods through the HTTP API, in process: sys/auth and userpass."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.test_sys_policy import Api


@pytest.fixture
def api(tmp_path: Path) -> Api:
    api = Api(tmp_path)
    assert api.call("POST", "sys/auth/userpass", body={"type": "userpass"})[0] == 204
    return api


def login(api: Api, user: str, password: str) -> tuple[int, dict]:
    response = api.client.post(f"/v1/auth/userpass/login/{user}", json={"password": password})
    return response.status_code, response.get_json()


def test_enable_list_tune_disable(api: Api) -> None:
    status, body = api.call("GET", "sys/auth")
    assert status == 200
    assert set(body["data"]) == {"token/", "userpass/"}
    assert body["data"]["userpass/"]["type"] == "userpass"
    assert body["data"]["userpass/"]["accessor"].startswith("auth_userpass_")
    assert "userpass/" not in api.call("GET", "sys/mounts")[1]["data"]
    assert api.call("POST", "sys/auth/userpass/tune", body={"default_lease_ttl": "1h", "max_lease_ttl": "2h"})[0] == 204
    status, body = api.call("GET", "sys/auth/userpass/tune")
    assert body["data"]["default_lease_ttl"] == 3600 and body["data"]["max_lease_ttl"] == 7200
    assert api.call("POST", "sys/auth/other", body={"type": "nosuch"})[0] == 400
    assert api.call("POST", "sys/auth/token", body={"type": "token"})[0] == 400
    assert api.call("POST", "sys/auth/userpass", body={"type": "userpass"})[0] == 400  # in use
    assert api.call("DELETE", "sys/auth/userpass")[0] == 204
    assert set(api.call("GET", "sys/auth")[1]["data"]) == {"token/"}
    assert api.client.post("/v1/auth/userpass/login/bob", json={"password": "x"}).status_code in (403, 404)


def test_users_and_login(api: Api) -> None:
    api.call("PUT", "sys/policy/app", body={"policy": 'path "secret/data/app" { capabilities = ["read"] }'})
    api.call("POST", "secret/data/app", body={"data": {"k": "v"}})
    assert api.call("POST", "auth/userpass/users/Bob", body={"password": "pw1", "token_policies": "app"})[0] == 204
    status, body = api.call("GET", "auth/userpass/users/bob")
    assert status == 200
    assert body["data"]["token_policies"] == ["app"]
    assert "password" not in json.dumps(body)
    assert api.call("LIST", "auth/userpass/users")[1]["data"]["keys"] == ["bob"]

    status, body = login(api, "bob", "pw1")
    assert status == 200, body
    auth = body["auth"]
    assert auth["policies"] == ["app", "default"]
    assert auth["metadata"] == {"username": "bob"}
    assert auth["lease_duration"] == 768 * 3600
    token = auth["client_token"]
    assert api.call("GET", "secret/data/app", token)[0] == 200
    status, body = api.call("GET", "auth/token/lookup-self", token)
    assert body["data"]["path"] == "auth/userpass/login/bob"
    assert body["data"]["display_name"] == "userpass-bob"


def test_bad_logins_are_the_same_400(api: Api) -> None:
    api.call("POST", "auth/userpass/users/bob", body={"password": "pw1"})
    wrong = login(api, "bob", "nope")
    unknown = login(api, "nobody", "pw1")
    assert wrong == unknown == (400, {"errors": ["invalid username or password"]})
    assert login(api, "bob", "")[0] == 400
    assert login(api, "bob", "x" * 100)[0] == 400


def test_password_and_policy_updates(api: Api) -> None:
    api.call("POST", "auth/userpass/users/bob", body={"password": "pw1"})
    assert api.call("POST", "auth/userpass/users/bob/password", body={"password": "pw2"})[0] == 204
    assert login(api, "bob", "pw1")[0] == 400
    assert login(api, "bob", "pw2")[0] == 200
    assert api.call("POST", "auth/userpass/users/bob/policies", body={"policies": ["a", "b"]})[0] == 204
    assert login(api, "bob", "pw2")[1]["auth"]["policies"] == ["a", "b", "default"]
    assert api.call("POST", "auth/userpass/users/nobody/password", body={"password": "x"})[0] == 400
    assert api.call("DELETE", "auth/userpass/users/bob")[0] == 204
    assert login(api, "bob", "pw2")[0] == 400


@pytest.mark.parametrize(
    "body",
    [
        {},  # a new user needs a password
        {"password": "x" * 73},
        {"password": "p", "token_ttl": "2h", "token_max_ttl": "1h"},
        {"password": "p", "token_num_uses": -1},
        {"password": "p", "token_bound_cidrs": ["not-a-cidr"]},
        {"password": "p", "token_ttl": "soon"},
        {"password": "p", "token_type": "batch"},
    ],
)
def test_bad_user_settings_store_nothing(api: Api, body: dict) -> None:
    status, answer = api.call("POST", "auth/userpass/users/carol", body=body)
    assert status == 400, answer
    assert api.call("GET", "auth/userpass/users/carol")[0] == 404


def test_token_settings_apply(api: Api) -> None:
    api.call("POST", "auth/userpass/users/bob", body={"password": "pw", "token_ttl": "1m", "token_num_uses": 3,
                                                     "token_no_default_policy": True, "token_policies": ["x"]})
    auth = login(api, "bob", "pw")[1]["auth"]
    assert auth["lease_duration"] == 60
    assert auth["num_uses"] == 3
    assert auth["policies"] == ["x"]


def test_login_from_outside_the_bound_cidrs_is_refused(api: Api) -> None:
    api.call("POST", "auth/userpass/users/bob", body={"password": "pw", "token_bound_cidrs": "10.0.0.0/8"})
    status, body = login(api, "bob", "pw")  # the test client comes from 127.0.0.1
    assert status == 400 and "CIDR" in body["errors"][0]


def test_managing_users_needs_a_grant(api: Api) -> None:
    token = api.token("default")
    assert api.call("POST", "auth/userpass/users/eve", token, {"password": "x"})[0] == 403
    assert api.call("POST", "sys/auth/more", token, {"type": "userpass"})[0] == 403
