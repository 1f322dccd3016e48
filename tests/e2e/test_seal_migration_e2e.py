"""Seal migration under a real booted systemd, with the package's units
(issue 13): a shamir install moved to awskms, then ``systemctl restart``
comes back unsealed by the agent with no human.

As an operator does it: ``apt install`` (the shipped config: shamir; the
agent's unit is skipped by its ``ExecCondition=``, not failed, not
restarting), init with 3/2 unseal keys and a secret; then the
``seal "awskms"`` stanza added to /etc/vaultd/vaultd.hcl and the
credentials to /etc/default, ``systemctl restart vaultd``.  The daemon
waits in migration mode (``STATUS=`` says so, ``seal-status`` too), the
agent, pulled in now that the stanza is there, stands aside without a
single ``kms:Decrypt``, ``vaultctl operator unseal -migrate`` with the old
unseal keys completes it (the daemon wraps a new key with ``kms:Encrypt``),
and the next ``systemctl restart vaultd`` blocks until the agent has
unsealed it.  The old unseal keys are the recovery keys from then on: they
authorise a generate-root, whose token works.

Shares the session's .deb and root filesystem with ``test_systemd.py``
(``tests/e2e/conftest.py``); boots its own container.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.nspawn import Container, booted
from tests.e2e.support import (
    DebianImage,
    Report,
    Vaultd,
    assert_unsealed_over_socket,
    journal_text,
    save_journal,
    wait_until,
)
from tests.faultproxy import FaultProxy
from tests.kms_fixtures import ACCESS_KEY, SECRET_KEY, MotoServer, create_kms_key, free_port
from vaultd.core.generate_root import decode_token
from vaultd.logging import EVENTS

pytestmark = pytest.mark.e2e

SECRET_VALUE = "e2e-migrated-secret-7c2e41"
CONFIG = "/etc/vaultd/vaultd.hcl"


def test_shamir_install_migrated_to_awskms_restarts_unsealed(
    tmp_path: Path, debian_image: DebianImage, kms: tuple[MotoServer, FaultProxy], report: Report
) -> None:
    for line in debian_image.describe():
        report(line)
    moto, proxy = kms
    key = create_kms_key(moto.endpoint)
    started = time.monotonic()
    with booted(debian_image.lower, tmp_path / "container") as c:
        report(f"container booted in {time.monotonic() - started:.1f} s")
        v = Vaultd(c, free_port())
        try:
            migrate_shamir_to_awskms(c, v, debian_image.deb, key.key_id, proxy, report)
        finally:
            save_journal(c, tmp_path / "journal.txt", report)


def migrate_shamir_to_awskms(c: Container, v: Vaultd, deb: Path, key_id: str, proxy: FaultProxy,
                             report: Report) -> None:
    # -- a shamir install: the shipped config, on our port ----------------------
    shutil.copy(deb, c.path("/root") / deb.name)
    started = time.monotonic()
    c.run("apt-get", "install", "-y", f"/root/{deb.name}", timeout=600)
    report(f"apt-get install returned in {time.monotonic() - started:.1f} s")
    config = c.path(CONFIG)
    shamir_config = config.read_text().replace("127.0.0.1:8200", v.url.removeprefix("http://"))
    assert not re.search(r"^\s*seal\b", shamir_config, re.M), "the shipped config is not shamir"
    config.write_text(shamir_config)
    state = v.state()
    c.run("systemctl", "restart", "--no-block", "vaultd.service")
    v.wait_state("activating", "uninitialized", new_pid_than=state["MainPID"])
    init = json.loads(v.vaultctl("operator", "init", "-key-shares=3", "-key-threshold=2", "-format=json").stdout)
    keys, root_token = init["unseal_keys_b64"], init["root_token"]
    secrets = [root_token, SECRET_VALUE, SECRET_KEY, *keys, *init["unseal_keys_hex"]]
    v.wait_state("activating", "sealed: 0/2 key shares")
    for share in keys[:2]:
        v.vaultctl("operator", "unseal", share)
    state = v.wait_state("active", "unsealed")
    headers = {"X-Vault-Token": root_token}
    requests.post(f"{v.url}/v1/sys/mounts/secret", json={"type": "kv", "options": {"version": "2"}},
                  headers=headers, timeout=10).raise_for_status()
    requests.post(f"{v.url}/v1/secret/data/app", json={"data": {"value": SECRET_VALUE}},
                  headers=headers, timeout=10).raise_for_status()

    def data_intact(token: str = root_token) -> None:
        response = requests.get(f"{v.url}/v1/secret/data/app", headers={"X-Vault-Token": token}, timeout=10)
        assert response.status_code == 200, response.text
        assert response.json()["data"]["data"] == {"value": SECRET_VALUE}

    data_intact()
    # Without a seal "awskms" stanza the agent's unit is skipped each time
    # vaultd pulls it in: inactive, never failed, never restarted.
    agent = v.state("vaultd-unsealer.service")
    assert (agent["ActiveState"], agent["Result"], agent["NRestarts"]) == ("inactive", "exec-condition", "0"), agent
    report("shamir install: initialised 3/2, unsealed by hand, secret written; the agent skipped (exec-condition)")

    # -- the operator adds seal "awskms" and the credentials, and restarts ------
    credentials = (f"AWS_ACCESS_KEY_ID={ACCESS_KEY}\nAWS_SECRET_ACCESS_KEY={SECRET_KEY}\n"
                   "AWS_EC2_METADATA_DISABLED=true\n")
    for name in ("/etc/default/vaultd", "/etc/default/vaultd-unsealer"):
        c.path(name).write_text(credentials)  # keeps the file's 0600
    config.write_text(shamir_config + f"""
seal "awskms" {{
  region     = "us-east-1"
  kms_key_id = "{key_id}"
  endpoint   = "{proxy.url}"
}}
""")
    assert c.run("stat", "-c", "%a %U %G", CONFIG).stdout.split() == ["640", "root", "vaultd"]
    cursor = v.cursor()
    c.run("systemctl", "restart", "--no-block", "vaultd.service")
    state = v.wait_state("activating", "sealed: seal migration, 0/2 keys", new_pid_than=state["MainPID"])
    v.wait_state("active", unit="vaultd-unsealer.service")  # pulled in, its condition met now
    stood_aside = wait_until(lambda: [e for e in v.current_run("vaultd-unsealer.service")
                                      if e.get("MESSAGE_ID") == EVENTS["unsealer_stood_aside"].message_id],
                             "the agent to stand aside", timeout=30)
    seal_status = requests.get(f"{v.url}/v1/sys/seal-status", timeout=10).json()
    assert {k: seal_status.get(k) for k in ("type", "sealed", "migration", "t", "n", "recovery_seal")} == {
        "type": "awskms", "sealed": True, "migration": True, "t": 2, "n": 3, "recovery_seal": True}, seal_status
    status = c.run("vaultctl", "status", env={"VAULT_ADDR": v.url}, check=False)
    assert status.returncode == 2 and "Seal Migration in Progress" in status.stdout, status
    plain = c.run("vaultctl", "operator", "unseal", keys[0], env={"VAULT_ADDR": v.url}, check=False)
    assert plain.returncode != 0 and "seal migration is pending" in plain.stdout + plain.stderr, plain
    report(f"seal \"awskms\" added, restarted: {state['StatusText']!r}; agent active, stood aside: "
           f"{journal_text(stood_aside[0].get('MESSAGE', ''))!r}")

    # -- unseal -migrate with the old unseal keys ---------------------------------
    v.vaultctl("operator", "unseal", "-migrate", keys[1])
    v.wait_state("activating", "sealed: seal migration, 1/2 keys")
    v.vaultctl("operator", "unseal", "-migrate", keys[2])
    state = v.wait_state("active", "unsealed")
    data_intact()
    seal_status = requests.get(f"{v.url}/v1/sys/seal-status", timeout=10).json()
    assert (seal_status["type"], seal_status["sealed"], seal_status["recovery_seal"]) == ("awskms", False, True)
    assert not seal_status.get("migration"), seal_status
    assert proxy.count("Encrypt") >= 1 and proxy.count("Decrypt") == 0, [r.operation for r in proxy.records]
    agent = v.state("vaultd-unsealer.service")
    assert agent["ActiveState"] == "active" and agent["NRestarts"] == "0", agent  # still watching, no loop
    daemon = v.current_run("vaultd.service")
    events = {e.get("VAULTD_EVENT"): e for e in daemon if e.get("VAULTD_EVENT")}
    for event in ("seal_migration_pending", "seal_migration_completed"):
        assert event in events, sorted(events)
        entry = events[event]
        assert entry["MESSAGE_ID"] == EVENTS[event].message_id and entry["PRIORITY"] == "4", entry
        assert (entry.get("SEAL_MIGRATION_FROM"), entry.get("SEAL_MIGRATION_TO")) == ("shamir", "awskms"), entry
    unsealed = [e for e in daemon if e.get("MESSAGE_ID") == EVENTS["unsealed"].message_id]
    assert [e.get("UNSEALED_BY") for e in unsealed] == ["shares"], unsealed
    aside = stood_aside[0]
    assert (aside.get("SYSLOG_IDENTIFIER"), aside.get("PRIORITY"), aside.get("SEAL_MIGRATION_FROM")) == (
        "vaultd-unsealer", "4", "shamir"), aside
    report(f"unseal -migrate x2: {state['StatusText']!r}, seal awskms, data intact; "
           f"KMS Encrypt {proxy.count('Encrypt')}, Decrypt 0")

    # -- systemctl restart: back unsealed by the agent, no human ------------------
    started = time.monotonic()
    c.run("systemctl", "restart", "vaultd.service", timeout=120)  # returns at READY=1
    took = time.monotonic() - started
    after = v.state()
    assert after["ActiveState"] == "active" and after["MainPID"] != state["MainPID"], after
    assert after["StatusText"].startswith("unsealed"), after
    assert requests.get(f"{v.url}/v1/sys/seal-status", timeout=10).json()["sealed"] is False
    line = assert_unsealed_over_socket(c, v)  # UNSEALED_BY=unsealer in this run's journal
    assert proxy.count("Decrypt") >= 1
    data_intact()
    report(f"systemctl restart vaultd -> READY, unsealed by the agent in {took:.2f} s: {line!r}")
    assert not [e for e in v.current_run("vaultd.service") if e.get("VAULTD_EVENT", "").startswith("seal_migration")]

    # -- the old unseal keys are the recovery keys now -----------------------------
    seal_status = requests.get(f"{v.url}/v1/sys/seal-status", timeout=10).json()
    assert {k: seal_status.get(k) for k in ("type", "recovery_seal", "t", "n")} == {
        "type": "awskms", "recovery_seal": True, "t": 2, "n": 3}, seal_status
    new_root = generate_root(v.url, keys[:2])
    secrets.append(new_root)
    data_intact(new_root)
    report("the old unseal keys are recovery keys: seal-status recovery_seal, and 2 of them generated a root token")

    # -- the journal: every stop since was clean, and no secret anywhere -------------
    units = v.journal("-u", "vaultd.service", "-u", "vaultd-unsealer.service", f"--after-cursor={cursor}",
                      "-o", "cat")
    assert "Traceback" not in units and "Failed with result" not in units, units[-3000:]
    raw = c.run("journalctl", "--no-pager", "-o", "export", errors="replace").stdout
    for secret in secrets:
        assert secret not in raw, "a secret is in the journal"


def generate_root(url: str, keys: list[str]) -> str:
    """A root token from a quorum of ``keys`` (Vault's unauthenticated
    ``sys/generate-root`` flow): it completes only with the right keys."""
    started: dict[str, Any] = requests.put(f"{url}/v1/sys/generate-root/attempt", json={}, timeout=10).json()
    result: dict[str, Any] = {}
    for share in keys:
        response = requests.put(f"{url}/v1/sys/generate-root/update",
                                json={"key": share, "nonce": started["nonce"]}, timeout=10)
        assert response.status_code == 200, response.text
        result = response.json()
    assert result.get("complete") is True, result
    return decode_token(result["encoded_token"], started["otp"])
