"""ACL policies through the HTTP API, in process: the policy endpoints, the
capabilities endpoints, and that a token's policies really gate requests
(through Flask and through the fast read path alike)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from vaultd.api.app import create_app
from vaultd.core.core import Core, CoreSettings
from vaultd.core.seal_state import SharedSealState
from vaultd.server import dev_bootstrap
from vaultd.storage.file import FileStorage

APP_POLICY = """
path "secret/data/app/*" {
  capabilities = ["read", "list"]
}
path "secret/data/app/admin" {
  capabilities = ["deny"]
}
path "secret/data/+/shared" {
  capabilities = ["read"]
}
path "secret/metadata/app/*" {
  capabilities = ["list"]
}
"""


class Api:
    def __init__(self, tmp_path: Path, shared: SharedSealState | None = None) -> None:
        self.shared = shared or SharedSealState.create(lock_memory=False)
        self.core = Core(FileStorage(str(tmp_path / "data")), self.shared, CoreSettings(storage_type="file"))
        _, self.root = dev_bootstrap(self.core)
        self.client: FlaskClient = create_app(self.core).test_client()

    def call(self, method: str, path: str, token: str | None = None, body: Any = None) -> tuple[int, Any]:
        headers = {"X-Vault-Token": token or self.root}
        response = self.client.open(f"/v1/{path}", method=method, headers=headers, json=body)
        return response.status_code, (response.get_json(silent=True) if response.data else None)

    def token(self, *policies: str) -> str:
        status, body = self.call("POST", "auth/token/create", body={"policies": list(policies)})
        assert status == 200, body
        return str(body["auth"]["client_token"])


@pytest.fixture
def api(tmp_path: Path) -> Api:
    return Api(tmp_path)


def test_write_read_list_delete(api: Api) -> None:
    assert api.call("PUT", "sys/policies/acl/App", body={"policy": APP_POLICY})[0] == 204
    status, body = api.call("GET", "sys/policies/acl/app")
    assert status == 200
    assert body["data"] == {"name": "app", "policy": APP_POLICY}
    status, body = api.call("GET", "sys/policy/app")
    assert body["rules"] == APP_POLICY and body["data"]["rules"] == APP_POLICY
    status, body = api.call("LIST", "sys/policies/acl")
    assert body["data"]["keys"] == ["app", "default", "root"]
    status, body = api.call("GET", "sys/policy")
    assert body["policies"] == ["app", "default", "root"]
    assert api.call("DELETE", "sys/policy/app")[0] == 204
    assert api.call("GET", "sys/policies/acl/app")[0] == 404


def test_root_and_default_are_protected(api: Api) -> None:
    status, body = api.call("PUT", "sys/policy/root", body={"policy": 'path "x" { capabilities = ["read"] }'})
    assert status == 400 and body["errors"] == ['cannot update "root" policy']
    assert api.call("DELETE", "sys/policy/root")[0] == 400
    status, body = api.call("DELETE", "sys/policy/default")
    assert status == 400 and body["errors"] == ["cannot delete default policy"]
    # default can be edited, and the edit applies to tokens holding it.
    assert "cubbyhole/*" in api.call("GET", "sys/policy/default")[1]["rules"]
    open_policy = 'path "secret/data/open" { capabilities = ["read"] }'
    assert api.call("PUT", "sys/policy/default", body={"policy": open_policy})[0] == 204
    api.call("POST", "secret/data/open", body={"data": {"a": "1"}})
    plain = api.token()
    assert api.call("GET", "secret/data/open", plain)[0] == 200


def test_a_bad_policy_is_a_400_naming_the_line_and_stores_nothing(api: Api) -> None:
    status, body = api.call("PUT", "sys/policy/bad", body={"policy": 'path "a" {\n  capabilities = ["fly"]\n}'})
    assert status == 400
    assert 'invalid capability "fly"' in body["errors"][0] and "line 1" in body["errors"][0]
    status, body = api.call("PUT", "sys/policy/bad", body={"policy": 'path "a" {\n  capabilitys = ["read"]\n}'})
    assert status == 400 and "line 2" in body["errors"][0]
    assert api.call("GET", "sys/policy/bad")[0] == 404
    assert api.call("PUT", "sys/policy/bad", body={})[0] == 400


def test_a_token_reads_only_what_its_policy_grants(api: Api) -> None:
    for path in ("app/one", "app/admin", "team/shared", "other/x"):
        assert api.call("POST", f"secret/data/{path}", body={"data": {"v": path}})[0] == 200
    api.call("PUT", "sys/policy/app", body={"policy": APP_POLICY})
    token = api.token("app")
    assert api.call("GET", "secret/data/app/one", token)[1]["data"]["data"] == {"v": "app/one"}
    assert api.call("GET", "secret/data/app/admin", token)[0] == 403  # deny beats the glob
    assert api.call("GET", "secret/data/team/shared", token)[0] == 200  # "+"
    assert api.call("GET", "secret/data/other/x", token)[0] == 403
    assert api.call("POST", "secret/data/app/one", token, {"data": {"v": "x"}})[0] == 403
    assert api.call("LIST", "secret/metadata/app/", token)[0] == 200
    # A policy change applies at once.
    api.call("PUT", "sys/policy/app", body={"policy": 'path "secret/data/other/*" { capabilities = ["read"] }'})
    assert api.call("GET", "secret/data/app/one", token)[0] == 403
    assert api.call("GET", "secret/data/other/x", token)[0] == 200
    # Deleting it takes everything away.
    api.call("DELETE", "sys/policy/app")
    assert api.call("GET", "secret/data/other/x", token)[0] == 403


def test_a_change_in_one_worker_reaches_another(tmp_path: Path) -> None:
    shared = SharedSealState.create(lock_memory=False)
    first = Api(tmp_path, shared)
    first.call("POST", "secret/data/app/one", body={"data": {"v": "1"}})
    first.call("PUT", "sys/policy/app", body={"policy": APP_POLICY})
    token = first.token("app")
    # A second core over the same storage and shared state: another worker.
    other = Core(FileStorage(str(tmp_path / "data")), shared, CoreSettings(storage_type="file"))
    client = create_app(other).test_client()
    assert client.get("/v1/secret/data/app/one", headers={"X-Vault-Token": token}).status_code == 200
    first.call("PUT", "sys/policy/app", body={"policy": 'path "nothing" { capabilities = ["read"] }'})
    assert client.get("/v1/secret/data/app/one", headers={"X-Vault-Token": token}).status_code == 403


def test_capabilities_endpoints(api: Api) -> None:
    api.call("PUT", "sys/policy/app", body={"policy": APP_POLICY})
    token = api.token("app")
    paths = ["secret/data/app/x", "secret/data/app/admin"]
    status, body = api.call("POST", "sys/capabilities-self", token, {"paths": paths})
    assert status == 200
    assert body["data"] == {"secret/data/app/x": ["read", "list"], "secret/data/app/admin": ["deny"]}
    status, body = api.call("POST", "sys/capabilities", body={"token": token, "path": "secret/data/team/shared"})
    assert body["capabilities"] == ["read"] and body["data"]["capabilities"] == ["read"]
    accessor = api.call("POST", "auth/token/lookup", body={"token": token})[1]["data"]["accessor"]
    status, body = api.call("POST", "sys/capabilities-accessor", body={"accessor": accessor, "paths": ["sys/seal"]})
    assert body["data"]["capabilities"] == ["deny"]
    assert api.call("POST", "sys/capabilities", body={"token": "nope", "path": "x"})[0] == 400
    assert api.call("POST", "sys/capabilities-accessor", body={"accessor": "nope", "path": "x"})[0] == 400
    assert api.call("POST", "sys/capabilities-self", body={"path": "x"})[1]["capabilities"] == ["root"]
    # Asking about others needs a grant on sys/capabilities.
    assert api.call("POST", "sys/capabilities", token, {"token": api.root, "path": "x"})[0] == 403


def test_resultant_acl(api: Api) -> None:
    api.call("PUT", "sys/policy/app", body={"policy": APP_POLICY})
    token = api.token("app")
    status, body = api.call("GET", "sys/internal/ui/resultant-acl", token)
    assert status == 200
    assert body["data"]["glob_paths"]["secret/data/app/"]["capabilities"] == ["list", "read"]
    assert body["data"]["exact_paths"]["secret/data/app/admin"]["capabilities"] == ["deny"]
    assert api.call("GET", "sys/internal/ui/resultant-acl")[1]["data"] == {"root": True}


def test_sudo_paths_need_sudo(api: Api) -> None:
    api.call("PUT", "sys/policy/ops", body={"policy": 'path "sys/mounts/*" { capabilities = ["create", "update"] }'})
    token = api.token("ops")
    assert api.call("POST", "sys/mounts/kv2", token, {"type": "kv"})[0] == 403
    with_sudo = 'path "sys/mounts/*" { capabilities = ["create", "update", "sudo"] }'
    api.call("PUT", "sys/policy/ops", body={"policy": with_sudo})
    assert api.call("POST", "sys/mounts/kv2", token, {"type": "kv"})[0] == 204


def test_parameter_constraints_gate_writes(api: Api) -> None:
    api.call("PUT", "sys/policy/p", body={"policy": """
        path "kv1/app" {
          capabilities = ["create", "update"]
          allowed_parameters = { "color" = ["red", "blue"] }
        }"""})
    api.call("POST", "sys/mounts/kv1", body={"type": "kv"})
    token = api.token("p")
    assert api.call("POST", "kv1/app", token, {"color": "red"})[0] == 204
    assert api.call("POST", "kv1/app", token, {"color": "green"})[0] == 403
    assert api.call("POST", "kv1/app", token, {"size": "big"})[0] == 403


@pytest.mark.parametrize(
    "path",
    [
        "secret/data/app/../../config",
        "secret/data/app/./../../config",
        "secret//config",
        "secret/data/app/%2E%2E/%2E%2E/config",
    ],
)
def test_dot_segments_cannot_get_past_a_policy(api: Api, path: str) -> None:
    """The policy and the engine see one cleaned path: a grant on
    secret/data/app/* gives nothing on the mount's config."""
    api.call("PUT", "sys/policy/app", body={"policy": APP_POLICY})
    token = api.token("app")
    assert api.call("GET", "secret/config")[0] == 200
    status, _ = api.call("GET", path, token)
    assert status == 403
