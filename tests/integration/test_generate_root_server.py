"""generate-root on a real multi-worker server, driven by clients nobody here
wrote: OpenBao's ``bao`` CLI (``operator generate-root -init``, each key,
``-decode``) and hvac.  Under shamir the unseal keys authorise; under awskms
(moto's KMS server) the recovery keys do, and an unseal key cannot."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import hvac
import pytest

from tests.integration.support import BaoRunner, Server, ServerFactory
from tests.kms_fixtures import KmsKey
from vaultd.core.generate_root import decode_token

VAULTCTL = Path(sys.executable).parent / "vaultctl"


def _vaultctl(server: Server, *args: str, token: str) -> str:
    env = {**os.environ, "VAULT_ADDR": server.addr, "VAULT_TOKEN": token}
    done = subprocess.run([str(VAULTCTL), *args], capture_output=True, text=True, env=env, timeout=60, check=False)
    assert done.returncode == 0, f"vaultctl {args}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _columns(text: str) -> dict[str, str]:
    """Vault's two-column output: the name, two or more spaces, the value."""
    return dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in text.splitlines() if line.strip())


def _bao(tmp_path: Path, server: Server) -> BaoRunner:
    home = tmp_path / "bao-home"
    home.mkdir(mode=0o700, exist_ok=True)
    return BaoRunner(home=home, addr=server.addr)


def _generate_with_bao(bao: BaoRunner, keys: list[str], token: str) -> str:
    """The documented CLI flow; returns the decoded new root token."""
    started = json.loads(bao("operator", "generate-root", "-init", "-format=json", token=token).stdout)
    otp, nonce = started["otp"], started["nonce"]
    assert started["started"] is True and len(otp) == started["otp_length"]
    encoded = ""
    for key in keys:
        out = bao("operator", "generate-root", f"-nonce={nonce}", "-format=json", key, token=token).stdout
        encoded = json.loads(out).get("encoded_token", "")
    assert encoded, "the last key did not complete the attempt"
    decoded = bao("operator", "generate-root", f"-decode={encoded}", f"-otp={otp}", token=token).stdout.strip()
    assert re.fullmatch(r"s\.[A-Za-z0-9]{24}", decoded), decoded
    return decoded


def test_shamir_generate_root_with_bao_and_hvac(tmp_path: Path, server_factory: ServerFactory) -> None:
    server = server_factory(workers=3, storage="sqlite")
    init = server.init(shares=5, threshold=3)
    server.unseal(init.keys[:3])
    bao = _bao(tmp_path, server)

    new_root = _generate_with_bao(bao, [init.keys[4], init.keys[0], init.keys[2]], init.root_token)
    assert new_root != init.root_token
    lookup = bao("token", "lookup", "-format=json", token=new_root).stdout
    assert json.loads(lookup)["data"]["policies"] == ["root"]
    bao("secrets", "enable", "-path=kv", "kv", token=new_root)

    # hvac, through Vault's unauthenticated endpoints.
    client = hvac.Client(url=server.addr)
    otp = "Z" * 26
    started = client.sys.start_root_token_generation(otp=otp)
    assert started["started"] is True and started["otp"] == ""
    result: dict[str, object] = {}
    for key in init.keys_base64[1:4]:
        result = client.sys.generate_root(key=key, nonce=started["nonce"])
    assert result["complete"] is True
    token = decode_token(str(result["encoded_token"]), otp)
    assert hvac.Client(url=server.addr, token=token).lookup_token()["data"]["policies"] == ["root"]
    # vaultctl, in Vault's table output.
    started_text = _vaultctl(server, "operator", "generate-root", "-init", token=new_root)
    rows = _columns(started_text)
    assert rows["Started"] == "true" and rows["Progress"] == "0/3" and rows["OTP"], started_text
    otp_text = _vaultctl(server, "operator", "generate-root", "-status", token=new_root)
    status = _columns(otp_text)
    assert "OTP" not in status and status["Progress"] == "0/3", otp_text  # the OTP is shown once
    for key in init.keys[:3]:
        last = _vaultctl(server, "operator", "generate-root", f"-nonce={rows['Nonce']}", key, token=new_root)
    finished = _columns(last)
    assert finished["Complete"] == "true" and finished["Progress"] == "3/3", last
    encoded_token = finished["Encoded Token"]
    third = _vaultctl(server, "operator", "generate-root", f"-decode={encoded_token}", f"-otp={rows['OTP']}",
                      token=new_root).strip()
    assert hvac.Client(url=server.addr, token=third).lookup_token()["data"]["policies"] == ["root"]

    # Cancel through hvac; the status says so on every worker.
    client.sys.start_root_token_generation(otp=otp)
    client.sys.cancel_root_generation()
    for _ in range(6):
        assert client.sys.read_root_generation_progress()["started"] is False
    # No key in clear in the server's log.
    log = server.log.read_text()
    for secret in (*init.keys, *init.keys_base64, token, new_root):
        assert secret not in log


def test_awskms_generate_root_takes_recovery_keys(
    tmp_path: Path, server_factory: ServerFactory, kms_key: KmsKey,
) -> None:
    server = server_factory(workers=2, storage="sqlite", extra=kms_key.seal_hcl())
    body = server.call("PUT", "sys/init", json_body={"recovery_shares": 5, "recovery_threshold": 3})
    root, recovery = body["root_token"], body["recovery_keys"]
    assert server.seal_status()["sealed"] is False  # it holds the key it made
    bao = _bao(tmp_path, server)

    status = json.loads(bao("operator", "generate-root", "-status", "-format=json", token=root).stdout)
    assert status["required"] == 3
    new_root = _generate_with_bao(bao, recovery[2:5], root)
    assert json.loads(bao("token", "lookup", "-format=json", token=new_root).stdout)["data"]["policies"] == ["root"]

    # Shares of another server's recovery key are refused as they come.
    other = server_factory(workers=1, storage="sqlite", extra=kms_key.seal_hcl(), name="other")
    foreign = other.call("PUT", "sys/init", json_body={"recovery_shares": 5, "recovery_threshold": 3})
    client = hvac.Client(url=server.addr)
    nonce = client.sys.start_root_token_generation(otp="Y" * 26)["nonce"]
    with pytest.raises(hvac.exceptions.InvalidRequest, match="does not belong"):
        client.sys.generate_root(key=foreign["recovery_keys"][0], nonce=nonce)
    assert client.sys.read_root_generation_progress()["progress"] == 0
