"""Seal migration with real processes: ``vaultd server`` (2 workers, sqlite),
the real ``vaultd-unsealer`` agent, moto's KMS behind a fault proxy, and
OpenBao's ``bao`` CLI for ``operator unseal -migrate``.

One server goes shamir -> awskms (key A) -> awskms (key B) -> shamir with a
secret written at the start read back at every stage.  In each migration the
daemon is killed with ``kill -9`` once before the switch (unseal progress
given, the daemon's KMS Encrypt hanging, or the agent's key held) and once
right after it; every restart must unseal with the old seal before the
switch and with the new one after it.  The agent unseals every awskms stage
by itself and stands aside (exit 0) once the server is back on shamir.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.faultproxy import FaultProxy
from tests.integration.socketfront import short_dir as short_dir  # fixture
from tests.integration.support import BAO, BaoRunner, Server, ServerFactory, wait_for
from tests.integration.test_autounseal import AGENT_TUNING, WAIT, AgentProcess
from tests.kms_fixtures import KmsKey, create_kms_key, kms_client
from unsealer import exitcodes

VAULTCTL = Path(sys.executable).parent / "vaultctl"


class Stage:
    """The server, its agent and the config both read, rewritten per stage."""

    def __init__(self, server: Server, socket: Path, proxy: FaultProxy, agent_log: Path, home: Path) -> None:
        self.written: dict[str, int] = {}
        self.server = server
        self.socket = socket
        self.proxy = proxy
        self.agent = AgentProcess(server.config, agent_log)
        self.base = server.config.read_text()
        self.bao = BaoRunner(home=home, addr=server.addr)

    def configure(self, seals: str) -> None:
        unsealer = f'unsealer {{\n  address = "unix://{self.socket}"\n{AGENT_TUNING}}}\n'
        self.server.config.write_text(self.base + unsealer + seals)

    def restart_agent(self) -> None:
        self.agent.stop()
        self.agent.start()

    def kill9_and_start(self) -> None:
        self.server.kill_tree()
        self.server.start()

    def status(self) -> dict[str, object]:
        return self.server.seal_status()

    def unsealed(self) -> bool:
        return self.status()["sealed"] is False

    def migrate(self, key: str, check: int | None = 0) -> subprocess.CompletedProcess[str]:
        return self.bao("operator", "unseal", "-migrate", key, check=check)

    def read_secret(self, token: str) -> str:
        body = self.server.call("GET", "secret/app", token=token)
        return str(body["data"]["password"])

    def rotate_and_write(self, token: str, name: str) -> None:
        """``sys/rotate`` keeps working through every seal (issue 13, item
        5): a new keyring term, and a secret written under it that every
        later stage must read back."""
        before = self.server.call("GET", "sys/key-status", token=token)["term"]
        self.server.call("PUT", "sys/rotate", token=token, status=204)
        assert self.server.call("GET", "sys/key-status", token=token)["term"] == before + 1
        self.server.call("PUT", f"secret/{name}", token=token, json_body={"term": before + 1}, status=204)
        self.written[name] = before + 1

    def read_all(self, token: str) -> None:
        for name, term in self.written.items():
            assert self.server.call("GET", f"secret/{name}", token=token)["data"]["term"] == term, name


def _seal(key: KmsKey, endpoint: str, *, disabled: bool = False) -> str:
    stanza = key.seal_hcl(endpoint)
    return stanza.replace("{\n", '{\n  disabled = "true"\n', 1) if disabled else stanza


def test_shamir_to_kms_a_to_kms_b_to_shamir_surviving_kill_9(
    tmp_path: Path, server_factory: ServerFactory, kms_key: KmsKey, kms_proxy: FaultProxy, short_dir: Path
) -> None:
    assert BAO.exists()
    server = server_factory(workers=2, storage="sqlite", start=False)
    home = tmp_path / "bao-home"
    home.mkdir(mode=0o700)
    st = Stage(server, short_dir / "run" / "unseal.sock", kms_proxy, tmp_path / "agent.log", home)
    key_a, key_b = kms_key, create_kms_key(kms_key.endpoint)
    seal_a, seal_b = _seal(key_a, kms_proxy.url), _seal(key_b, kms_proxy.url)

    # -- shamir, with a secret --------------------------------------------------
    st.configure("")
    server.start()
    init = server.init(shares=3, threshold=2)
    server.unseal(init.keys[:2])
    root = init.root_token
    server.call("PUT", "sys/mounts/secret", token=root, json_body={"type": "kv"}, status=204)
    server.call("PUT", "secret/app", token=root, json_body={"password": "s3cret"}, status=204)
    st.rotate_and_write(root, "shamir")

    # -- shamir -> awskms (key A) ------------------------------------------------
    st.configure(seal_a)
    server.stop()
    server.start()
    status = st.status()
    assert status["migration"] is True and status["type"] == "awskms" and status["sealed"] is True
    st.agent.start()
    st.agent.wait_line(r"is migrating from the shamir seal to awskms")
    refused = st.bao("operator", "unseal", init.keys[0], check=2)
    assert "migrate option not provided and seal migration is pending" in refused.stderr
    # kill -9 before the switch: progress given, then KMS Encrypt hanging.
    st.migrate(init.keys[0])
    kms_proxy.hang(operations=["Encrypt"])
    pending = subprocess.Popen([str(BAO), "operator", "unseal", "-migrate", init.keys[1]],
                               env={"BAO_ADDR": server.addr, "HOME": str(home), "PATH": "/usr/bin:/bin"},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: kms_proxy.count("Encrypt", outcome="hang"), "the daemon's Encrypt to hang", timeout=WAIT)
    st.kill9_and_start()
    pending.kill()
    pending.wait()
    kms_proxy.clear()
    assert st.status()["migration"] is True  # nothing was switched
    assert kms_proxy.count("Decrypt") == 0  # and the agent stood aside
    out = st.migrate(init.keys[2]).stdout
    assert "Seal Migration in Progress" in out and st.status()["sealed"] is True
    st.migrate(init.keys[0])
    assert st.unsealed() and st.status()["migration"] is False
    assert st.read_secret(root) == "s3cret"
    # kill -9 after the switch: the agent unseals the next run.
    st.kill9_and_start()
    wait_for(st.unsealed, "the agent to unseal after shamir -> awskms", timeout=WAIT)
    assert st.read_secret(root) == "s3cret"
    assert kms_proxy.count("Decrypt", outcome="forwarded") >= 1
    # The old unseal keys are the recovery keys now.
    assert st.status()["recovery_seal"] is True and st.status()["n"] == 3
    st.rotate_and_write(root, "after-kms-a")

    # -- awskms key A -> key B -------------------------------------------------------
    st.configure(_seal(key_a, kms_proxy.url, disabled=True) + seal_b)
    kms_proxy.hang(operations=["Encrypt"])
    st.kill9_and_start()
    st.restart_agent()
    wait_for(lambda: kms_proxy.count("Encrypt", outcome="hang"), "the daemon's Encrypt with key B", timeout=WAIT)
    st.kill9_and_start()  # before the switch
    kms_proxy.clear()
    wait_for(st.unsealed, "the agent to complete the move to key B", timeout=WAIT)
    assert st.status()["migration"] is False
    kms_client(key_a.endpoint).disable_key(KeyId=key_a.key_id)  # from now on only B can unwrap
    st.kill9_and_start()  # after the switch
    wait_for(st.unsealed, "the agent to unseal with key B", timeout=WAIT)
    assert st.read_secret(root) == "s3cret"
    assert st.agent.process is not None and st.agent.process.poll() is None
    st.read_all(root)
    st.rotate_and_write(root, "after-kms-b")

    # -- awskms (key B) -> shamir ---------------------------------------------------------
    st.configure(_seal(key_b, kms_proxy.url, disabled=True))
    st.kill9_and_start()
    st.restart_agent()
    st.agent.wait_line(r"handed the disabled awskms seal's key to the daemon")
    status = st.status()
    assert status["migration"] is True and status["type"] == "shamir" and status["sealed"] is True
    st.kill9_and_start()  # before the switch, the agent's key held
    st.agent.wait_line(r"handed the disabled awskms seal's key to the daemon \(boot " + str(
        server.call("GET", "sys/vaultd/state")["boot_id"]))
    # vaultctl's -migrate, with Vault's table (the progress, the migration).
    env = {**os.environ, "VAULT_ADDR": server.addr}
    done = subprocess.run([str(VAULTCTL), "operator", "unseal", "-migrate", init.keys[1]], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert re.search(r"Seal Migration in Progress\s+true", done.stdout), done.stdout
    assert re.search(r"Unseal Progress\s+1/2", done.stdout), done.stdout
    st.migrate(init.keys[2])
    assert st.unsealed() and st.status()["migration"] is False
    st.kill9_and_start()  # after the switch: the recovery keys unseal
    assert st.agent.wait_exit() == exitcodes.OK
    assert st.agent.lines(r"has moved to the shamir seal")
    assert st.status()["sealed"] is True and st.status()["type"] == "shamir"
    out = json.loads(st.bao("operator", "unseal", "-format=json", init.keys[0]).stdout)
    assert out["progress"] == 1
    st.bao("operator", "unseal", init.keys[2])
    assert st.unsealed() and st.read_secret(root) == "s3cret"
    st.read_all(root)
    st.rotate_and_write(root, "after-shamir")
    st.read_all(root)
