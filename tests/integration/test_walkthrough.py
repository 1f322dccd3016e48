"""HashiCorp's "Vault 1.0 auto-unseal with AWS KMS" walkthrough, run as
written, against ``vaultd server`` with the awskms seal and moto's KMS.

The walkthrough's config is used verbatim (``endpoint = ""``, credentials
in the stanza) with ``AWS_KMS_ENDPOINT`` pointing at the emulator, then its
commands: ``status``, ``operator init -stored-shares=1 -recovery-shares=1
-recovery-threshold=1 -key-shares=1 -key-threshold=1``, ``status``,
``login``, a restart of the server, ``status`` again.  Vault unseals itself
after the restart; vaultd's unsealer agent does it here.

Once with vaultctl and once with OpenBao's ``bao``, and the printed lines are
checked as an operator following the guide would compare them.  ``bao`` has
dropped ``-stored-shares`` (Vault 1.3 removed it), so the bao run checks that
refusal and then runs the same command without that one flag.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.socketfront import short_dir as short_dir  # fixture
from tests.integration.support import BAO, BIN, Server, ServerFactory, wait_for
from tests.integration.test_bao_cli import _table as table
from tests.kms_fixtures import ACCESS_KEY, SECRET_KEY, KmsKey, MotoServer, isolated_aws_env

ROOT = Path(__file__).resolve().parents[2]
VAULTCTL = BIN / "vaultctl"
WAIT = 60.0
INIT_FLAGS = ["-recovery-shares=1", "-recovery-threshold=1", "-key-shares=1", "-key-threshold=1"]

# The walkthrough's config, verbatim but for the data path, the port (loopback,
# picked at run time) and the id of the emulator's key.
WALKTHROUGH_CONFIG = """\
storage "file" {{
  path = "{data}"
}}

listener "tcp" {{
  address     = "127.0.0.1:{port}"
  tls_disable = 1
}}

seal "awskms" {{
  region     = "us-east-1"
  access_key = "{access_key}"
  secret_key = "{secret_key}"
  kms_key_id = "{key_id}"
  endpoint   = ""
}}

ui = true
"""

# vaultd's own addition: the unix socket the daemon serves the unsealer agent
# on (a private one per test, not the shared default), and short retry
# intervals so the test does not wait on the defaults.
UNSEALER_STANZA = """
unsealer {{
  address         = "unix://{socket}"
  initial_backoff = "100ms"
  max_backoff     = "1s"
  poll_interval   = "200ms"
  timeout         = "5s"
}}
"""

# What Vault prints after that init command (its CLI wraps at 78 columns).
INIT_OUTPUT = [
    r"Recovery Key 1: [A-Za-z0-9+/]{43}=",
    r"",
    r"Initial Root Token: \S+",
    r"",
    r"Success! Vault is initialized",
    r"",
    r"Recovery key initialized with 1 key shares and a key threshold of 1\. Please",
    r"securely distribute the key shares printed above\.",
]

@dataclass
class Walkthrough:
    server: Server
    key: KmsKey
    env: dict[str, str]
    """For the CLI: HOME (its token file), the address, nothing else."""
    agent_log: Path
    agent: subprocess.Popen[bytes] | None = None

    def start_agent(self) -> None:
        env = isolated_aws_env() | {"AWS_KMS_ENDPOINT": self.key.endpoint}
        with open(self.agent_log, "ab") as log:
            self.agent = subprocess.Popen(
                [sys.executable, "-m", "unsealer", "--config", str(self.server.config)],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
            )

    def stop_agent(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            self.agent.send_signal(signal.SIGTERM)
            self.agent.wait(timeout=WAIT)

    def explain(self, message: str) -> str:
        agent = self.agent_log.read_text(errors="replace")[-3000:] if self.agent_log.exists() else ""
        return self.server.explain(message) + f"\n--- agent output ---\n{agent}"


@pytest.fixture
def walkthrough(
    tmp_path: Path, moto_kms: MotoServer, kms_key: KmsKey, aws_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch, server_factory: ServerFactory, short_dir: Path,
) -> Iterator[Walkthrough]:
    server = server_factory(workers=2, start=False)
    server.config.write_text(
        WALKTHROUGH_CONFIG.format(data=server.directory / "data", port=server.port, access_key=ACCESS_KEY,
                                  secret_key=SECRET_KEY, key_id=kms_key.key_id)
        + UNSEALER_STANZA.format(socket=short_dir / "run" / "unseal.sock")
    )
    # The stanza's empty endpoint leaves it to the environment, as in Vault.
    monkeypatch.setenv("AWS_KMS_ENDPOINT", moto_kms.endpoint)
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "NO_COLOR": "1",
           "VAULT_ADDR": server.addr, "BAO_ADDR": server.addr}
    run = Walkthrough(server, kms_key, env, tmp_path / "agent.log")
    server.start()
    try:
        yield run
    finally:
        run.stop_agent()


class Cli:
    """One CLI binary with the walkthrough's environment (its own HOME, so
    ``login`` stores the token in ``$HOME/.vault-token`` there)."""

    def __init__(self, binary: Path, walkthrough: Walkthrough) -> None:
        self.binary = binary
        self.walkthrough = walkthrough
        self.home = Path(walkthrough.env["HOME"])

    def __call__(self, *args: str, check: int | None = 0) -> subprocess.CompletedProcess[str]:
        """Run it; ``check`` is the exit status required (None: any)."""
        done = subprocess.run([str(self.binary), *args], env=self.walkthrough.env, capture_output=True,
                              text=True, timeout=60, cwd=self.home, check=False)
        assert check is None or done.returncode == check, self.walkthrough.explain(
            f"{self.binary.name} {' '.join(args)}: exit {done.returncode}, expected {check}\n"
            f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
        )
        return done



def check_banner(walkthrough: Walkthrough) -> None:
    """Vault's configuration block, first in the server's output, and no
    credential anywhere in it."""
    text = walkthrough.server.log_text()
    start = text.index("==> vaultd server configuration:")
    banner = text[start:text.index("==> vaultd server started!", start)]
    lines = {line.split(": ", 1)[0].strip(): line.split(": ", 1)[1] for line in banner.splitlines() if ": " in line}
    assert lines["Seal Type"] == "awskms"
    assert lines["AWS KMS KeyID"] == walkthrough.key.key_id
    assert lines["AWS KMS Region"] == "us-east-1"
    assert lines["AWS KMS Endpoint"] == walkthrough.key.endpoint  # from AWS_KMS_ENDPOINT
    assert lines["Storage"] == "file"
    assert lines["Listener 1"] == (
        f'tcp (addr: "127.0.0.1:{walkthrough.server.port}", max_request_size: "33554432", tls: "disabled")'
    )
    assert lines["Version"].startswith("vaultd v") and lines["Mlock"].startswith("supported: ")
    assert re.search(r"^ {15}Seal Type: awskms$", banner, re.M), banner  # right-aligned at 24, as Vault does
    for secret in (SECRET_KEY, ACCESS_KEY):
        assert secret not in text


def init_and_check(cli: Cli, walkthrough: Walkthrough, *flags: str) -> str:
    """The init command; its output line by line.  Returns the root token."""
    done = cli("operator", "init", *flags, *INIT_FLAGS)
    lines = done.stdout.rstrip("\n").splitlines()
    assert len(lines) == len(INIT_OUTPUT), done.stdout
    for line, pattern in zip(lines, INIT_OUTPUT, strict=True):
        assert re.fullmatch(pattern, line), f"{line!r} !~ {pattern!r}\n{done.stdout}"
    recovery_key = lines[0].split(": ", 1)[1]
    root = lines[2].split(": ", 1)[1]
    walkthrough.server.known_secrets.extend([recovery_key, root])
    return root


def status_after_init(cli: Cli, *, sealed: bool = False) -> dict[str, str]:
    rows = table(cli("status", check=2 if sealed else 0).stdout)
    assert rows["Seal Type"] == "awskms"
    assert rows["Recovery Seal Type"] == "shamir"
    assert rows["Initialized"] == "true" and rows["Sealed"] == str(sealed).lower()
    assert rows["Total Recovery Shares"] == "1" and rows["Threshold"] == "1"
    return rows


def login_and_check(cli: Cli, root: str) -> None:
    done = cli("login", root)
    preamble, _, rest = done.stdout.partition("\n\n")
    product = "OpenBao" if cli.binary == BAO else "Vault"
    assert " ".join(preamble.split()) == (
        "Success! You are now authenticated. The token information displayed below is already stored in the "
        f'token helper. You do NOT need to run "{cli.binary.name} login" again. Future {product} requests '
        "will automatically use this token."
    ), done.stdout
    assert rest.splitlines()[:3] == ["Key                  Value", "---                  -----",
                                     f"token                {root}"], done.stdout
    rows = table(rest)
    assert rows["token_duration"] == "∞" and rows["token_renewable"] == "false"
    assert rows["token_policies"] == '["root"]' and rows["policies"] == '["root"]'
    assert rows["identity_policies"] == "[]" and rows["token_accessor"] not in ("", "n/a")
    assert (cli.home / ".vault-token").read_text().strip() == root


def restart_comes_back_unsealed(cli: Cli, walkthrough: Walkthrough) -> None:
    """``systemctl restart vault``: the agent, not a person, unseals it."""
    walkthrough.start_agent()
    walkthrough.server.stop()
    walkthrough.server.start()
    wait_for(lambda: cli("status", check=None).returncode == 0, "the restarted server to be unsealed", WAIT)
    status_after_init(cli)
    log = walkthrough.agent_log.read_text(errors="replace")
    assert re.search(r"unsealed the daemon \(boot \S+\) in [0-9.]+ s", log), walkthrough.explain("no unseal")
    # The token stored by login still works after the restart.
    assert "root" in cli("token", "lookup").stdout


def test_walkthrough_with_vaultctl(walkthrough: Walkthrough) -> None:
    check_banner(walkthrough)
    cli = Cli(VAULTCTL, walkthrough)
    before = table(cli("status", check=2).stdout)
    assert before["Seal Type"] == "awskms" and before["Recovery Seal Type"] == "shamir"
    assert before["Initialized"] == "false"

    root = init_and_check(cli, walkthrough, "-stored-shares=1")
    status_after_init(cli)
    login_and_check(cli, root)
    restart_comes_back_unsealed(cli, walkthrough)


def test_walkthrough_with_bao(walkthrough: Walkthrough) -> None:
    cli = Cli(BAO, walkthrough)
    before = table(cli("status", check=2).stdout)
    assert before["Seal Type"] == "awskms" and before["Recovery Seal Type"] == "shamir"

    refused = cli("operator", "init", "-stored-shares=1", *INIT_FLAGS, check=1)
    assert "flag provided but not defined: -stored-shares" in refused.stderr
    root = init_and_check(cli, walkthrough)
    status_after_init(cli)
    login_and_check(cli, root)
    restart_comes_back_unsealed(cli, walkthrough)
