"""Access control with real clients nobody here wrote: OpenBao's ``bao`` CLI
and hvac, against a 4-worker ``vaultd server``.

Policies from an HCL file, a token that reads only what they grant,
capabilities, userpass and AppRole logins (secret-id uses and CIDR binds),
a wrapped read unwrapped once, a wrapped secret-id used to log in, cubbyhole
isolation; then a restart, after which all of it still holds.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import hvac
import pytest
import requests

from tests.integration.support import BaoRunner, InitResult, Server
from tests.integration.test_bao_cli import _table

APP_POLICY = """
# What the app may read, and one thing it may not.
path "secret/data/app/*" {
  capabilities = ["read", "list"]
}
path "secret/metadata/app/*" {
  capabilities = ["list", "read"]
}
path "secret/data/app/admin" {
  capabilities = ["deny"]
}
path "secret/data/+/shared" {
  capabilities = ["read"]
}
"""


def _json(text: str) -> dict:
    return json.loads(text)


def test_access_control_with_the_openbao_cli(unsealed: tuple[Server, InitResult], bao: BaoRunner,
                                              tmp_path: Path) -> None:
    server, init = unsealed
    root = init.root_token
    bao("login", root)
    bao("secrets", "enable", "-path=secret", "-version=2", "kv")
    for path, value in (("app/db", "pw1"), ("app/admin", "pw2"), ("team/shared", "pw3"), ("other/x", "pw4")):
        bao("kv", "put", f"secret/{path}", f"value={value}")

    # -- policies from an HCL file --------------------------------------------------
    policy_file = tmp_path / "app.hcl"
    policy_file.write_text(APP_POLICY)
    bao("policy", "write", "app", str(policy_file))
    assert "app" in bao("policy", "list").stdout.split()
    assert bao("policy", "read", "app").stdout.strip() == APP_POLICY.strip()
    bad = tmp_path / "bad.hcl"
    bad.write_text('path "x" {\n  capabilities = ["fly"]\n}\n')
    result = bao("policy", "write", "bad", str(bad), check=2)
    assert 'invalid capability "fly"' in result.stderr
    assert "bad" not in bao("policy", "list").stdout.split()

    token = _json(bao("token", "create", "-policy=app", "-format=json").stdout)["auth"]["client_token"]
    server.known_secrets.append(token)
    assert bao("kv", "get", "-field=value", "secret/app/db", token=token).stdout.strip() == "pw1"
    assert bao("kv", "get", "-field=value", "secret/team/shared", token=token).stdout.strip() == "pw3"
    assert "permission denied" in bao("kv", "get", "secret/app/admin", token=token, check=2).stderr
    assert "permission denied" in bao("kv", "get", "secret/other/x", token=token, check=2).stderr
    assert "permission denied" in bao("kv", "put", "secret/app/db", "value=x", token=token, check=2).stderr
    assert bao("token", "capabilities", token, "secret/data/app/db").stdout.strip() == "list, read"
    assert bao("token", "capabilities", token, "secret/data/app/admin").stdout.strip() == "deny"

    # -- userpass -------------------------------------------------------------------
    bao("auth", "enable", "userpass")
    bao("write", "auth/userpass/users/alice", "password=correct horse", "token_policies=app")
    login = _json(bao("login", "-method=userpass", "-format=json", "-no-store", "username=alice",
                      "password=correct horse").stdout)
    alice = login["auth"]["client_token"]
    server.known_secrets.append(alice)
    assert login["auth"]["policies"] == ["app", "default"]
    assert bao("kv", "get", "-field=value", "secret/app/db", token=alice).stdout.strip() == "pw1"
    failed = bao("login", "-method=userpass", "-no-store", "username=alice", "password=wrong", check=2)
    assert "invalid username or password" in failed.stderr

    # -- AppRole, with a wrapped secret-id --------------------------------------------
    bao("auth", "enable", "approle")
    bao("write", "auth/approle/role/web", "token_policies=app", "secret_id_num_uses=2", "secret_id_ttl=10m")
    role_id = _json(bao("read", "-format=json", "auth/approle/role/web/role-id").stdout)["data"]["role_id"]
    wrapped = _json(bao("write", "-wrap-ttl=2m", "-format=json", "-f", "auth/approle/role/web/secret-id").stdout)
    wrapping_token = wrapped["wrap_info"]["token"]
    unwrapped = _json(bao("unwrap", "-format=json", wrapping_token).stdout)
    secret_id = unwrapped["data"]["secret_id"]
    server.known_secrets.append(secret_id)
    assert "wrapping token is not valid" in bao("unwrap", wrapping_token, check=2).stderr
    for _ in range(2):
        answer = _json(bao("write", "-format=json", "auth/approle/login", f"role_id={role_id}",
                           f"secret_id={secret_id}").stdout)
        assert answer["auth"]["metadata"]["role_name"] == "web"
    spent = bao("write", "auth/approle/login", f"role_id={role_id}", f"secret_id={secret_id}", check=2)
    assert "invalid role or secret ID" in spent.stderr
    bound = _json(bao("write", "-format=json", "auth/approle/role/web/secret-id", "cidr_list=10.9.0.0/16").stdout)
    refused = bao("write", "auth/approle/login", f"role_id={role_id}", f"secret_id={bound['data']['secret_id']}",
                  check=2)
    assert "CIDR" in refused.stderr

    # -- kv get -wrap-ttl, unwrapped once ----------------------------------------------
    wrapped_read = _json(bao("kv", "get", "-wrap-ttl=5m", "-format=json", "secret/app/db").stdout)
    wrap_token = wrapped_read["wrap_info"]["token"]
    assert _json(bao("unwrap", "-format=json", wrap_token).stdout)["data"]["data"]["value"] == "pw1"
    bao("unwrap", wrap_token, check=2)

    # -- cubbyhole --------------------------------------------------------------------
    bao("write", "cubbyhole/note", "text=alice-only", token=alice)
    assert bao("read", "-field=text", "cubbyhole/note", token=alice).stdout.strip() == "alice-only"
    bao("read", "cubbyhole/note", token=token, check=2)

    # -- a token role with a period, making orphans ----------------------------------------
    bao("write", "auth/token/roles/svc", "allowed_policies=app", "orphan=true", "token_period=30m")
    role_token = _json(bao("token", "create", "-role=svc", "-format=json").stdout)["auth"]
    server.known_secrets.append(role_token["client_token"])
    assert role_token["orphan"] is True and role_token["lease_duration"] == 1800
    assert role_token["policies"] == ["app", "default"]
    looked = _json(bao("token", "lookup", "-format=json", role_token["client_token"]).stdout)["data"]
    assert looked["period"] == 1800 and looked["path"] == "auth/token/create/svc"
    renewed = _json(bao("token", "renew", "-format=json", "-increment=5h", role_token["client_token"]).stdout)
    assert renewed["auth"]["lease_duration"] == 1800
    periodic = _json(bao("token", "create", "-period=1h", "-policy=app", "-format=json").stdout)["auth"]
    assert periodic["lease_duration"] == 3600

    # -- all of it after a restart ------------------------------------------------------
    server.stop()
    server.start()
    server.unseal(init.keys[:3])
    assert bao("kv", "get", "-field=value", "secret/app/db", token=token).stdout.strip() == "pw1"
    assert "permission denied" in bao("kv", "get", "secret/app/admin", token=token, check=2).stderr
    assert bao("read", "-field=text", "cubbyhole/note", token=alice).stdout.strip() == "alice-only"
    again = _json(bao("login", "-method=userpass", "-format=json", "-no-store", "username=alice",
                      "password=correct horse").stdout)
    assert again["auth"]["policies"] == ["app", "default"]
    assert _table(bao("read", "sys/auth/approle/tune").stdout)["default_lease_ttl"]
    assert _json(bao("read", "-format=json", "auth/token/roles/svc").stdout)["data"]["token_period"] == 1800
    assert bao("kv", "get", "-field=value", "secret/app/db", token=role_token["client_token"]).stdout.strip() == "pw1"
    log = server.log_text()
    for secret in [*server.known_secrets, "correct horse", "pw1"]:
        assert secret not in log


def test_access_control_with_hvac(unsealed: tuple[Server, InitResult]) -> None:
    server, init = unsealed
    client = hvac.Client(url=server.addr, token=init.root_token)
    client.sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})
    client.secrets.kv.v2.create_or_update_secret("app/db", secret={"value": "pw1"}, mount_point="secret")

    client.sys.create_or_update_acl_policy("app", APP_POLICY)
    assert client.sys.read_acl_policy("app")["data"]["policy"] == APP_POLICY
    assert "app" in client.sys.list_acl_policies()["data"]["keys"]

    client.sys.enable_auth_method("approle")
    client.auth.approle.create_or_update_approle("web", token_policies=["app"], token_ttl="10m")
    role_id = client.auth.approle.read_role_id("web")["data"]["role_id"]
    secret = client.auth.approle.generate_secret_id("web")["data"]
    accessors = client.auth.approle.list_secret_id_accessors("web")["data"]["keys"]
    assert accessors == [secret["secret_id_accessor"]]
    app = hvac.Client(url=server.addr)
    app.auth.approle.login(role_id=role_id, secret_id=secret["secret_id"])
    assert app.is_authenticated()
    read = app.secrets.kv.v2.read_secret_version("app/db", mount_point="secret", raise_on_deleted_version=True)
    assert read["data"]["data"] == {"value": "pw1"}
    with pytest.raises(hvac.exceptions.Forbidden):
        app.secrets.kv.v2.create_or_update_secret("app/db", secret={"value": "x"}, mount_point="secret")
    caps = client.sys.get_capabilities(paths=["secret/data/app/db"], token=app.token)
    assert caps["capabilities"] == ["read", "list"]

    client.sys.enable_auth_method("userpass")
    client.auth.userpass.create_or_update_user("bob", "pw", policies=["app"])
    user = hvac.Client(url=server.addr)
    user.auth.userpass.login("bob", "pw")
    assert user.is_authenticated()

    wrap = client.auth.approle.generate_secret_id("web", wrap_ttl="60s")["wrap_info"]
    unwrapped = client.sys.unwrap(wrap["token"])
    assert unwrapped["data"]["secret_id"]
    with pytest.raises(hvac.exceptions.InvalidRequest):
        client.sys.unwrap(wrap["token"])

    # Token roles, periodic tokens and leases.
    client.auth.token.create_or_update_role("svc", allowed_policies=["app"], orphan=True, token_period="1h")
    assert client.auth.token.read_role("svc")["data"]["token_period"] == 3600
    assert "svc" in client.auth.token.list_roles()["data"]["keys"]
    made = client.auth.token.create(role_name="svc")["auth"]
    assert made["orphan"] is True and made["lease_duration"] == 3600
    periodic = client.auth.token.create(policies=["app"], period="30m")["auth"]
    assert client.auth.token.renew(periodic["client_token"], increment="10h")["auth"]["lease_duration"] == 1800
    leases = client.sys.list_leases("auth/userpass/login/bob/")["data"]["keys"]
    assert len(leases) == 1
    lease = f"auth/userpass/login/bob/{leases[0]}"
    assert client.sys.read_lease(lease)["data"]["id"] == lease
    client.sys.revoke_prefix("auth/userpass/")
    assert not user.is_authenticated()

    client.sys.delete_policy("app")
    with pytest.raises(hvac.exceptions.Forbidden):
        app.secrets.kv.v2.read_secret_version("app/db", mount_point="secret", raise_on_deleted_version=True)


def test_unknown_user_costs_what_a_wrong_password_costs(unsealed: tuple[Server, InitResult]) -> None:
    """The acceptance asks for no timing difference beyond noise: measured
    over alternating logins, an unknown user's median must be within a
    factor of two of a wrong password's (bcrypt dominates both; without the
    stand-in hash an unknown user answered about fifty times faster)."""
    server, init = unsealed
    headers = {"X-Vault-Token": init.root_token}
    requests.post(server.url("sys/auth/userpass"), json={"type": "userpass"}, headers=headers, timeout=10)
    requests.post(server.url("auth/userpass/users/carol"), json={"password": "right"}, headers=headers, timeout=10)
    session = requests.Session()
    timings: dict[str, list[float]] = {"wrong": [], "unknown": []}
    for _ in range(12):
        for kind, user in (("wrong", "carol"), ("unknown", "nobody")):
            started = time.perf_counter()
            answer = session.post(server.url(f"auth/userpass/login/{user}"), json={"password": "bad"}, timeout=10)
            timings[kind].append(time.perf_counter() - started)
            assert answer.status_code == 400
            assert answer.json() == {"errors": ["invalid username or password"]}
    ratio = statistics.median(timings["unknown"]) / statistics.median(timings["wrong"])
    assert 0.5 < ratio < 2.0, timings
