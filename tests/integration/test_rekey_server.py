"""rekey on a real multi-worker server, driven by clients nobody here wrote:
OpenBao's ``bao operator rekey`` (``-init``, each key, ``-verify``) and hvac,
plus ``vaultctl operator rekey``.  The old keys must be refused after a seal
and after a restart, the new ones must unseal.  Under awskms (moto's KMS) a
recovery-key rekey changes what generate-root accepts, and a barrier rekey
wraps a new unseal key that the real unsealer agent unwraps after a restart."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import hvac
import pytest

from tests.integration.support import BaoRunner, Server, ServerFactory, wait_for
from tests.integration.test_autounseal import AgentProcess
from tests.kms_fixtures import KmsKey

VAULTCTL = Path(sys.executable).parent / "vaultctl"


def _vaultctl(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env["VAULT_ADDR"] = server.addr
    return subprocess.run([str(VAULTCTL), *args], capture_output=True, text=True, env=env, timeout=60, check=False)


def _columns(text: str) -> dict[str, str]:
    """Vault's two-column output: the name, two or more spaces, the value."""
    return dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in text.splitlines()
                if re.search(r"\S\s{2,}\S", line))


def _bao(tmp_path: Path, server: Server) -> BaoRunner:
    home = tmp_path / "bao-home"
    home.mkdir(mode=0o700, exist_ok=True)
    return BaoRunner(home=home, addr=server.addr)


def _refused(server: Server, keys: list[str]) -> None:
    """Every one of ``keys`` is refused by the sealed server."""
    for key in keys:
        response = server.request("PUT", "sys/unseal", json_body={"key": key})
        assert response.status_code == 400, server.explain(f"old key accepted: {response.text}")
    assert server.seal_status()["sealed"] is True


def test_rekey_with_bao_hvac_and_vaultctl(tmp_path: Path, server_factory: ServerFactory) -> None:
    server = server_factory(workers=3, storage="sqlite")
    init = server.init(shares=5, threshold=3)
    server.unseal(init.keys[:3])
    bao = _bao(tmp_path, server)
    root = init.root_token

    # bao, with verification.
    started = json.loads(bao("operator", "rekey", "-init", "-key-shares=3", "-key-threshold=2", "-verify",
                             "-format=json", token=root).stdout)
    assert started["started"] is True and (started["n"], started["t"], started["required"]) == (3, 2, 3)
    assert started["verification_required"] is True
    result: dict[str, object] = {}
    for key in (init.keys[4], init.keys[1], init.keys[0]):
        result = json.loads(bao("operator", "rekey", f"-nonce={started['nonce']}", "-format=json", key,
                                token=root).stdout)
    assert result["complete"] is True and result["verification_required"] is True, result
    new_keys = list(result["keys"])  # type: ignore[call-overload]
    assert len(new_keys) == 3
    vnonce = str(result["verification_nonce"])
    status = json.loads(bao("operator", "rekey", "-status", "-verify", "-format=json", token=root).stdout)
    assert status["nonce"] == vnonce and status["started"] is True
    bao("operator", "rekey", "-verify", f"-nonce={vnonce}", new_keys[2], token=root)
    done = bao("operator", "rekey", "-verify", f"-nonce={vnonce}", new_keys[0], token=root).stdout
    assert "Rekey verification successful" in done, done

    # Sealed: the old keys are refused, the new ones unseal.
    bao("operator", "seal", token=root)
    _refused(server, init.keys[:3])
    server.unseal(new_keys[1:])
    # And after a restart of the whole server.
    server.stop()
    server.start()
    _refused(server, init.keys[2:])
    server.unseal(new_keys[:2])

    # hvac, through Vault's unauthenticated endpoints, with verification.
    client = hvac.Client(url=server.addr)
    attempt = client.sys.start_rekey(secret_shares=4, secret_threshold=3, require_verification=True)
    assert attempt["required"] == 2
    answer = client.sys.rekey_multi(new_keys[1:], nonce=attempt["nonce"])
    assert answer["complete"] is True and len(answer["keys"]) == 4
    assert client.sys.read_rekey_verify_progress()["n"] == 4
    verified = client.sys.rekey_verify_multi(answer["keys_base64"][:3], nonce=answer["verification_nonce"])
    assert verified["complete"] is True
    assert client.sys.read_rekey_progress()["started"] is False
    hvac_keys = list(answer["keys"])

    # vaultctl, in Vault's table output, without verification.
    assert _vaultctl(server, "operator", "rekey", "-status").returncode == 0
    out = _vaultctl(server, "operator", "rekey", "-init", "-key-shares=2", "-key-threshold=2")
    assert out.returncode == 0, out.stderr
    rows = _columns(out.stdout)
    assert rows["Started"] == "true" and rows["Progress"] == "0/3" and rows["New Shares"] == "2", out.stdout
    for key in hvac_keys[:3]:
        last = _vaultctl(server, "operator", "rekey", f"-nonce={rows['Nonce']}", key)
        assert last.returncode == 0, last.stderr
    final = re.findall(r"^Key \d+: (\S+)$", last.stdout, re.M)
    assert len(final) == 2 and "rekeyed to 2 key shares and a key threshold of 2" in last.stdout, last.stdout
    server.call("PUT", "sys/seal", token=root, status=204)
    _refused(server, [*hvac_keys[:3], *new_keys])
    server.unseal(final)
    # No key in clear in the server's log.
    log = server.log.read_text()
    for secret in (*init.keys, *init.keys_base64, *new_keys, *hvac_keys, *final):
        assert secret not in log


def test_awskms_recovery_and_barrier_rekey(
    tmp_path: Path, server_factory: ServerFactory, kms_key: KmsKey,
) -> None:
    server = server_factory(workers=2, storage="sqlite", extra=kms_key.seal_hcl())
    body = server.call("PUT", "sys/init", json_body={"recovery_shares": 5, "recovery_threshold": 3})
    root, old = body["root_token"], body["recovery_keys"]
    bao = _bao(tmp_path, server)

    started = json.loads(bao("operator", "rekey", "-init", "-target=recovery", "-key-shares=3",
                             "-key-threshold=2", "-format=json", token=root).stdout)
    assert (started["n"], started["t"], started["required"]) == (3, 2, 3)
    result: dict[str, object] = {}
    for key in old[1:4]:
        result = json.loads(bao("operator", "rekey", "-target=recovery", f"-nonce={started['nonce']}",
                                "-format=json", key, token=root).stdout)
    assert result["complete"] is True
    new = list(result["keys"])  # type: ignore[call-overload]
    assert len(new) == 3

    # generate-root takes the new recovery keys and not the old ones.
    client = hvac.Client(url=server.addr)
    nonce = client.sys.start_root_token_generation(otp="Y" * 26)["nonce"]
    with pytest.raises(hvac.exceptions.InvalidRequest, match="does not belong"):
        client.sys.generate_root(key=old[0], nonce=nonce)
    answer = {}
    for key in new[:2]:
        answer = client.sys.generate_root(key=key, nonce=nonce)
    assert answer["complete"] is True

    # The barrier: authorised by the (new) recovery keys, no shares back.
    before = server.call("GET", "sys/vaultd/state")
    attempt = client.sys.start_rekey(secret_shares=5, secret_threshold=3)
    assert (attempt["n"], attempt["t"], attempt["required"]) == (0, 0, 2)
    rekeyed = client.sys.rekey_multi(new[1:], nonce=attempt["nonce"])
    assert rekeyed["complete"] is True and rekeyed["keys"] == []
    # After a restart the real agent unwraps the new stored key (kms:Decrypt
    # is its right, not the daemon's) and unseals.
    server.stop()
    agent_config = server.directory / "agent.hcl"
    agent_config.write_text(server.config.read_text()
                            + f'unsealer {{\n  address = "unix://{server.agent_socket}"\n'
                              '  initial_backoff = "100ms"\n  max_backoff = "1s"\n  poll_interval = "200ms"\n}\n')
    server.start()
    assert server.seal_status()["sealed"] is True
    agent = AgentProcess(agent_config, tmp_path / "agent.log")
    agent.start()
    try:
        wait_for(lambda: server.seal_status()["sealed"] is False, "the agent to unseal with the new stored key",
                 timeout=60)
    finally:
        agent.stop()
    assert server.call("GET", "sys/vaultd/state")["boot_id"] != before["boot_id"]
    assert hvac.Client(url=server.addr, token=root).lookup_token()["data"]["policies"] == ["root"]
