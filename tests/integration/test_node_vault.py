"""A second client in another language: node-vault (npm), unmodified, against
a real ``vaultd server``.

hvac and the bao CLI share Vault's own habits; node-vault has others (it sends
``mount_point`` in the body of ``POST sys/mounts/<path>``, swaps its token for
the one ``tokenCreate`` returns, sends custom ``LIST`` verbs), and that is
what a new user tries first.  The script, ``tests/node/client.js``, reports
what the client saw; what the server holds afterwards is checked here over
plain HTTP.

node and the pinned node-vault come from ``make test`` (apt's nodejs/npm when
missing, ``npm ci`` in tests/node); run alone, the session fixture does the
``npm ci``.  Without node or npm these tests skip, except under ``CI=true``,
where they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.integration.support import Server, ServerFactory

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "tests" / "node"
SCRIPT = NODE_DIR / "client.js"
INSTALLED = NODE_DIR / "node_modules" / "node-vault" / "package.json"


def _unavailable(why: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"node-vault tests cannot run under CI: {why}")
    pytest.skip(why)


@pytest.fixture(scope="session")
def node() -> str:
    """The node binary, with node-vault installed from the lockfile."""
    node_bin, npm = shutil.which("node"), shutil.which("npm")
    if node_bin is None:
        _unavailable("node is not installed (make test installs Debian's nodejs and npm)")
    if not INSTALLED.exists():
        if npm is None:
            _unavailable("npm is not installed, so node-vault cannot be installed")
        done = subprocess.run(
            [str(npm), "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, capture_output=True, text=True, timeout=600
        )
        if done.returncode != 0 or not INSTALLED.exists():
            _unavailable(f"npm ci in tests/node failed:\n{done.stdout}\n{done.stderr}")
    pinned = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]["node-vault"]
    assert json.loads(INSTALLED.read_text())["version"] == pinned
    return str(node_bin)


@pytest.fixture
def server(server_factory: ServerFactory) -> tuple[Server, str]:
    """An unsealed server (one key share) and its root token."""
    vaultd = server_factory(workers=2)
    result = vaultd.init(shares=1, threshold=1)
    vaultd.unseal(result.keys)
    return vaultd, result.root_token


def run_client(node: str, vaultd: Server, token: str, scenario: str) -> dict[str, Any]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(vaultd.directory),
        "VAULT_ADDR": vaultd.addr,
        "VAULT_TOKEN": token,
    }
    done = subprocess.run(
        [node, str(SCRIPT), scenario], cwd=NODE_DIR, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.stdout.strip(), vaultd.explain(f"node client.js {scenario} printed nothing:\n{done.stderr}")
    report: dict[str, Any] = json.loads(done.stdout)
    failed = [s for s in report["steps"] if not s["ok"]]
    assert done.returncode == 0 and not failed, vaultd.explain(
        f"node-vault ({report.get('node')}) {scenario}: failed steps:\n{json.dumps(failed, indent=2)}"
    )
    return {s["name"]: s["result"] for s in report["steps"]}


def test_node_vault_mounts_secrets_engines(node: str, server: tuple[Server, str]) -> None:
    vaultd, root = server
    seen = run_client(node, vaultd, root, "mount")
    listed = seen["list mounts"]
    assert listed["node-kv1/"]["type"] == "kv"
    assert listed["node-kv2/"] == {"type": "kv", "options": {"version": "2"}}
    for name in ("mount kv v1", "mount kv v2"):
        body = seen[name]
        if body:  # Vault answers 204, or 200 with the ignored parameters named
            assert "mount_point" in " ".join(body.get("warnings") or []), body
    mounts = vaultd.call("GET", "sys/mounts", token=root)["data"]
    assert "node-kv1/" not in mounts  # unmounted by the client
    assert mounts["node-kv2/"]["type"] == "kv" and mounts["node-kv2/"]["options"] == {"version": "2"}


def test_node_vault_writes_and_reads_kv_v1_and_v2(node: str, server: tuple[Server, str]) -> None:
    vaultd, root = server
    vaultd.call("POST", "sys/mounts/kv1", status=204, token=root, json_body={"type": "kv"})
    vaultd.call("POST", "sys/mounts/kv2", status=204, token=root,
                json_body={"type": "kv", "options": {"version": "2"}})
    seen = run_client(node, vaultd, root, "kv")
    assert seen["kv1 read"] == {"password": "node-hunter2", "port": 5432}
    assert seen["kv1 list"] == ["app"]
    assert seen["kv2 write"]["version"] == 1 and seen["kv2 write again"]["version"] == 2
    assert seen["kv2 read"]["data"] == {"password": "node-v2"} and seen["kv2 read"]["metadata"]["version"] == 2
    assert seen["kv2 read version 1"] == {"password": "node-v1"}
    assert seen["kv1 read deleted"]["status"] == 404
    # What node-vault wrote is what the server holds.
    assert vaultd.request("GET", "kv1/app", token=root).status_code == 404
    stored = vaultd.call("GET", "kv2/data/app", token=root)["data"]
    assert stored["data"] == {"password": "node-v2"}
    assert vaultd.call("GET", "kv2/metadata/app", token=root)["data"]["current_version"] == 2


def test_node_vault_manages_tokens(node: str, server: tuple[Server, str]) -> None:
    vaultd, root = server
    seen = run_client(node, vaultd, root, "tokens")
    created = seen["tokenCreate"]
    child = created["client_token"]
    # Vault answers the TTL itself (3600); vaultd the time left, truncated.
    assert created["policies"] == ["default"] and 3599 <= created["lease_duration"] <= 3600 and created["renewable"]
    assert created["client_switched"] is True  # node-vault's tokenSource: it now speaks as the child
    me = seen["tokenLookupSelf as the child"]
    assert me["display_name"] == "token-node" and me["policies"] == ["default"]
    assert me["meta"] == {"app": "node-vault"} and 3500 <= me["ttl"] <= 3600
    renewed = seen["tokenRenewSelf as the child"]
    assert 7199 <= renewed["lease_duration"] <= 7200 and renewed["renewable"] is True
    assert seen["tokenLookup by root"] == "token-node"
    assert 1799 <= seen["tokenRenew by root"] <= 1800
    assert seen["tokenLookup of the revoked token"]["status"] in (400, 403)
    assert seen["the orphan is gone"]["status"] == 403
    # The server agrees: both tokens are dead, root is not.
    for token in (child, seen["tokenCreateOrphan"]["client_token"]):
        assert vaultd.request("GET", "auth/token/lookup-self", token=token).status_code == 403
    assert vaultd.call("GET", "auth/token/lookup-self", token=root)["data"]["policies"] == ["root"]


def test_node_vault_policy_approle_and_wrapping(node: str, server: tuple[Server, str]) -> None:
    """Issue 10's client check: a policy, an AppRole login with a wrapped
    secret-id, and a wrapped read unwrapped once."""
    vaultd, root = server
    vaultd.call("POST", "sys/mounts/kv2", status=204, token=root,
                json_body={"type": "kv", "options": {"version": "2"}})
    vaultd.call("POST", "kv2/data/app", token=root, json_body={"data": {"password": "node-pw"}})
    seen = run_client(node, vaultd, root, "access")
    assert seen["getApproleRoleSecret wrapped"]["data"] is None
    assert seen["getApproleRoleSecret wrapped"]["creation_path"] == "auth/approle/role/node-app/secret-id"
    assert seen["unwrap the secret-id"] == {"got_secret_id": True}
    assert seen["unwrap it again"]["status"] == 400
    login = seen["approleLogin"]
    assert login["policies"] == ["default", "node-app"] and login["metadata"] == {"role_name": "node-app"}
    assert login["client_switched"] is True
    assert seen["read as the app"] == {"password": "node-pw"}
    assert seen["write as the app"]["status"] == 403
    assert seen["wrapped read as the app"]["data"] is None
    assert seen["unwrap the read"] == {"password": "node-pw"}
    assert vaultd.call("GET", "sys/policy/node-app", token=root)["rules"].startswith('path "kv2/data/app"')

