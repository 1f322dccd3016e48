"""Token roles, periodic tokens, CIDR-bound tokens and the accessor list."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_sys_policy import Api


@pytest.fixture
def api(tmp_path: Path) -> Api:
    api = Api(tmp_path)
    api.call("PUT", "sys/policy/app", body={"policy": 'path "secret/data/app" { capabilities = ["read"] }'})
    api.call("POST", "secret/data/app", body={"data": {"k": "v"}})
    return api


def create(api: Api, path: str, token: str | None = None, **body: object) -> tuple[int, dict]:
    return api.call("POST", path, token, body)


def test_role_crud_and_create(api: Api) -> None:
    assert create(api, "auth/token/roles/web", allowed_policies="app", orphan=True, token_period="1h",
                  path_suffix="v1")[0] == 204
    status, body = api.call("GET", "auth/token/roles/web")
    assert status == 200
    assert body["data"]["allowed_policies"] == ["app"] and body["data"]["token_period"] == 3600
    assert body["data"]["period"] == 3600 and body["data"]["orphan"] is True
    assert api.call("LIST", "auth/token/roles")[1]["data"]["keys"] == ["web"]
    status, body = create(api, "auth/token/create/web")
    assert status == 200, body
    auth = body["auth"]
    assert auth["policies"] == ["app", "default"]
    assert auth["orphan"] is True and auth["lease_duration"] == 3600
    lookup = api.call("POST", "auth/token/lookup", body={"token": auth["client_token"]})[1]["data"]
    assert lookup["period"] == 3600 and lookup["role"] == "web"
    assert lookup["path"] == "auth/token/create/webv1"
    assert api.call("DELETE", "auth/token/roles/web")[0] == 204
    assert api.call("GET", "auth/token/roles/web")[0] == 404
    assert create(api, "auth/token/create/web")[0] == 400


def test_a_role_lets_a_plain_token_mint_what_it_allows(api: Api) -> None:
    minter_policy = 'path "auth/token/create/app-role" { capabilities = ["update"] }'
    api.call("PUT", "sys/policy/minter", body={"policy": minter_policy})
    create(api, "auth/token/roles/app-role", allowed_policies=["app"])
    minter = api.token("minter")
    status, body = create(api, "auth/token/create/app-role", minter)
    assert status == 200, body
    child = body["auth"]["client_token"]
    assert api.call("GET", "secret/data/app", child)[0] == 200
    status, body = create(api, "auth/token/create/app-role", minter, policies=["root"])
    assert status == 400
    status, body = create(api, "auth/token/create/app-role", minter, policies=["other"])
    assert status == 400 and "allowed policies" in body["errors"][0]
    # Without the role it may not.
    assert create(api, "auth/token/create", minter, policies=["app"])[0] == 403


def test_disallowed_policies(api: Api) -> None:
    create(api, "auth/token/roles/no-app", disallowed_policies="app")
    status, body = create(api, "auth/token/create/no-app", policies=["app"])
    assert status == 400 and "disallowed" in body["errors"][0]
    assert create(api, "auth/token/create/no-app", policies=["other"])[0] == 200


def test_periodic_tokens_renew_to_their_period_past_max_ttl(api: Api) -> None:
    status, body = create(api, "auth/token/create", period="30m", policies=["app"])
    assert status == 200 and body["auth"]["lease_duration"] == 1800
    token = body["auth"]["client_token"]
    status, body = api.call("POST", "auth/token/renew-self", token, {"increment": "5h"})
    assert status == 200 and body["auth"]["lease_duration"] == 1800
    # Only root or sudo may create periodic tokens without a role.
    plain = api.token("default")
    assert create(api, "auth/token/create", plain, period="1h", policies=["default"])[0] == 403


def test_cidr_bound_token_is_refused_elsewhere(api: Api) -> None:
    create(api, "auth/token/roles/bound", token_bound_cidrs="10.0.0.0/8", allowed_policies="app")
    token = create(api, "auth/token/create/bound")[1]["auth"]["client_token"]
    assert api.call("GET", "secret/data/app", token)[0] == 403  # the test client is 127.0.0.1
    assert api.call("GET", "auth/token/lookup-self", token)[0] == 403
    create(api, "auth/token/roles/local", token_bound_cidrs="127.0.0.0/8", allowed_policies="app")
    token = create(api, "auth/token/create/local")[1]["auth"]["client_token"]
    assert api.call("GET", "secret/data/app", token)[0] == 200


def test_accessors_list_needs_sudo(api: Api) -> None:
    child = create(api, "auth/token/create", policies=["app"])[1]["auth"]
    status, body = api.call("LIST", "auth/token/accessors")
    assert status == 200 and child["accessor"] in body["data"]["keys"]
    assert api.call("LIST", "auth/token/accessors", child["client_token"])[0] == 403


def test_bad_roles(api: Api) -> None:
    assert create(api, "auth/token/roles/x", token_type="batch")[0] == 400
    assert create(api, "auth/token/roles/x", token_num_uses=-1)[0] == 400
    assert create(api, "auth/token/roles/x", token_bound_cidrs="nope")[0] == 400
    assert create(api, "auth/token/roles/x", token_period="soon")[0] == 400
    assert api.call("GET", "auth/token/roles/x")[0] == 404


def test_response_wrapping_policy_cannot_be_assigned(api: Api) -> None:
    assert create(api, "auth/token/create", policies=["response-wrapping"])[0] == 400
    text = 'path "x" {capabilities=["read"]}'
    assert api.call("PUT", "sys/policy/response-wrapping", body={"policy": text})[0] == 400


def test_a_role_without_allowed_policies_keeps_children_within_the_parent(api: Api) -> None:
    """Only a role that names allowed policies may grant beyond the parent."""
    minter_policy = 'path "auth/token/create/open" { capabilities = ["update"] }'
    api.call("PUT", "sys/policy/minter", body={"policy": minter_policy})
    create(api, "auth/token/roles/open", disallowed_policies="root")
    minter = api.token("minter")
    status, body = create(api, "auth/token/create/open", minter, policies=["app"])
    assert status == 403 and "subset of parent" in body["errors"][0]
    assert create(api, "auth/token/create/open", minter, policies=["minter"])[0] == 200
