"""AppRole through the HTTP API, in process."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from tests.unit.test_sys_policy import Api


@pytest.fixture
def api(tmp_path: Path) -> Api:
    api = Api(tmp_path)
    assert api.call("POST", "sys/auth/approle", body={"type": "approle"})[0] == 204
    api.call("PUT", "sys/policy/app", body={"policy": 'path "secret/data/app" { capabilities = ["read"] }'})
    api.call("POST", "secret/data/app", body={"data": {"k": "v"}})
    assert api.call("POST", "auth/approle/role/web", body={"token_policies": "app", "token_ttl": "10m",
                                                           "secret_id_ttl": "1h"})[0] == 204
    return api


def role_id(api: Api, role: str = "web") -> str:
    return str(api.call("GET", f"auth/approle/role/{role}/role-id")[1]["data"]["role_id"])


def secret_id(api: Api, role: str = "web", **body: object) -> dict:
    status, answer = api.call("POST", f"auth/approle/role/{role}/secret-id", body=body)
    assert status == 200, answer
    return dict(answer["data"])


def login(api: Api, rid: str, sid: str | None) -> tuple[int, dict]:
    body = {"role_id": rid} if sid is None else {"role_id": rid, "secret_id": sid}
    response = api.client.post("/v1/auth/approle/login", json=body)
    return response.status_code, response.get_json()


def test_role_crud(api: Api) -> None:
    status, body = api.call("GET", "auth/approle/role/web")
    assert status == 200
    assert body["data"]["token_policies"] == ["app"] and body["data"]["token_ttl"] == 600
    assert body["data"]["bind_secret_id"] is True and body["data"]["secret_id_ttl"] == 3600
    assert api.call("LIST", "auth/approle/role")[1]["data"]["keys"] == ["web"]
    assert api.call("POST", "auth/approle/role/web/role-id", body={"role_id": "custom-id"})[0] == 204
    assert role_id(api) == "custom-id"
    assert api.call("POST", "auth/approle/role/other", body={"role_id": "custom-id"})[0] == 400  # in use
    assert api.call("DELETE", "auth/approle/role/web")[0] == 204
    assert api.call("GET", "auth/approle/role/web")[0] == 404
    assert login(api, "custom-id", "x")[0] == 400


def test_login_and_token(api: Api) -> None:
    sid = secret_id(api, metadata=json.dumps({"env": "prod"}))
    status, body = login(api, role_id(api), sid["secret_id"])
    assert status == 200, body
    auth = body["auth"]
    assert auth["policies"] == ["app", "default"]
    assert auth["metadata"] == {"env": "prod", "role_name": "web"}
    assert auth["lease_duration"] == 600
    assert api.call("GET", "secret/data/app", auth["client_token"])[0] == 200


@pytest.mark.parametrize("bad", ["wrong-role", "wrong-secret", "no-secret"])
def test_bad_logins(api: Api, bad: str) -> None:
    sid = secret_id(api)["secret_id"]
    rid = role_id(api)
    if bad == "wrong-role":
        status, body = login(api, "nope", sid)
    elif bad == "wrong-secret":
        status, body = login(api, rid, "nope")
    else:
        status, body = login(api, rid, None)
    assert status == 400
    assert body["errors"] in (["invalid role or secret ID"], ["missing secret_id"])


def test_secret_id_uses_are_spent_once_each_even_in_parallel(api: Api) -> None:
    sid = secret_id(api, num_uses=3)["secret_id"]
    rid = role_id(api)
    results: list[int] = []

    def attempt() -> None:
        results.append(login(api, rid, sid)[0])

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200, 200, 200, 400, 400, 400, 400, 400]
    # Gone with its last use: no accessor left either.
    assert api.call("LIST", "auth/approle/role/web/secret-id")[0] == 404


def test_cidr_bindings(api: Api) -> None:
    rid = role_id(api)
    sid = secret_id(api, cidr_list="10.0.0.0/8")["secret_id"]
    status, body = login(api, rid, sid)
    assert status == 400 and "CIDR" in body["errors"][0]
    sid = secret_id(api, cidr_list="127.0.0.0/8")["secret_id"]
    assert login(api, rid, sid)[0] == 200
    api.call("POST", "auth/approle/role/web", body={"secret_id_bound_cidrs": "192.168.0.0/16"})
    sid = secret_id(api)["secret_id"]
    status, body = login(api, rid, sid)
    assert status == 400 and "CIDR restrictions on the role" in body["errors"][0]


def test_secret_id_lookup_list_destroy(api: Api) -> None:
    first = secret_id(api)
    second = secret_id(api)
    status, body = api.call("LIST", "auth/approle/role/web/secret-id")
    assert sorted(body["data"]["keys"]) == sorted([first["secret_id_accessor"], second["secret_id_accessor"]])
    status, body = api.call("POST", "auth/approle/role/web/secret-id/lookup", body={"secret_id": first["secret_id"]})
    assert status == 200 and body["data"]["secret_id_accessor"] == first["secret_id_accessor"]
    assert body["data"]["secret_id_ttl"] == 3600
    status, body = api.call("POST", "auth/approle/role/web/secret-id-accessor/lookup",
                            body={"secret_id_accessor": second["secret_id_accessor"]})
    assert status == 200
    assert api.call("POST", "auth/approle/role/web/secret-id/destroy", body={"secret_id": first["secret_id"]})[0] == 204
    assert api.call("POST", "auth/approle/role/web/secret-id-accessor/destroy",
                    body={"secret_id_accessor": second["secret_id_accessor"]})[0] == 204
    assert login(api, role_id(api), first["secret_id"])[0] == 400
    assert login(api, role_id(api), second["secret_id"])[0] == 400


def test_custom_secret_id_and_limits(api: Api) -> None:
    status, _ = api.call("POST", "auth/approle/role/web/custom-secret-id", body={"secret_id": "my-own-secret"})
    assert status == 200
    assert login(api, role_id(api), "my-own-secret")[0] == 200
    assert api.call("POST", "auth/approle/role/web/custom-secret-id", body={"secret_id": "my-own-secret"})[0] == 400
    assert api.call("POST", "auth/approle/role/web/secret-id", body={"ttl": "2h"})[0] == 400  # over the role's
    assert api.call("POST", "auth/approle/role/web/secret-id", body={"metadata": "not json"})[0] == 400


def test_role_without_any_constraint_is_refused(api: Api) -> None:
    status, body = api.call("POST", "auth/approle/role/loose", body={"bind_secret_id": False})
    assert status == 400 and "constraint" in body["errors"][0]
    assert api.call("GET", "auth/approle/role/loose")[0] == 404


def test_tidy(api: Api) -> None:
    status, body = api.call("POST", "auth/approle/tidy/secret-id")
    assert status == 202 and body["warnings"]
