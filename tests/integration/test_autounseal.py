"""The auto-unseal fault matrix with real processes: ``vaultd server`` (gunicorn
master and workers), ``vaultd-unsealer``, and moto's KMS server, all on
loopback ports chosen at run time.

Two fault proxies sit in the paths: one between boto3 and the KMS emulator
(faults KMS would produce), one between the agent and the daemon (to count
what the agent asks, so "it did not unseal" is checked against "it looked
again", not against a sleep).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.faultproxy import FaultProxy
from tests.kms_fixtures import KmsKey, free_port, isolated_aws_env
from unsealer import exitcodes

ROOT = Path(__file__).resolve().parents[2]
WAIT = 60.0
STATE = "GET /v1/sys/vaultd/state"
UNSEAL = "PUT /v1/sys/vaultd/unseal"


def wait_for(condition: Callable[[], object], what: str, timeout: float = WAIT) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class Daemon:
    config: Path
    port: int
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "vaultd.server", "server", "--config", str(self.config)],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=isolated_aws_env(),
                start_new_session=True,  # its own process group, as a systemd unit's cgroup
            )
        wait_for(self.answering, "the daemon to answer")

    def answering(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"vaultd exited with {self.process.returncode}: {self.log.read_text()[-2000:]}")
        try:
            return requests.get(self.url + "/v1/sys/vaultd/state", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def state(self) -> dict[str, object]:
        return requests.get(self.url + "/v1/sys/vaultd/state", timeout=5).json()

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Signal the whole group (SIGKILL: as systemd does to a unit's cgroup)."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, sig)
        self.process.wait(timeout=WAIT)
        if sig == signal.SIGTERM:
            return
        try:  # after SIGKILL of the group, nothing of it may linger
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def restart(self, sig: signal.Signals = signal.SIGTERM) -> str:
        old = self.state()["boot_id"]
        self.stop(sig)
        self.start()
        new = self.state()["boot_id"]
        assert new != old
        return str(new)

    def init(self) -> str:
        response = requests.put(
            self.url + "/v1/sys/init", json={"recovery_shares": 1, "recovery_threshold": 1}, timeout=30
        )
        assert response.status_code == 200, response.text
        return str(response.json()["root_token"])

    def unsealed(self) -> bool:
        return self.state()["sealed"] is False


@dataclass
class AgentProcess:
    config: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "unsealer", "--config", str(self.config)],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=isolated_aws_env(),
            )

    def text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""

    def lines(self, pattern: str) -> list[str]:
        return [line for line in self.text().splitlines() if re.search(pattern, line)]

    def wait_line(self, pattern: str) -> str:
        return str(wait_for(lambda: (self.lines(pattern) or [None])[-1], f"agent log line /{pattern}/"))

    def wait_exit(self) -> int:
        assert self.process is not None
        return self.process.wait(timeout=WAIT)

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=WAIT)


@dataclass
class Stack:
    daemon: Daemon
    agent: AgentProcess
    kms: FaultProxy
    front: FaultProxy
    """Between the agent and the daemon."""
    key: KmsKey
    tokens: list[str] = field(default_factory=list)


@pytest.fixture
def stack(tmp_path: Path, kms_key: KmsKey, kms_proxy: FaultProxy) -> Iterator[Stack]:
    port = free_port()
    with FaultProxy(f"http://127.0.0.1:{port}") as front:
        config = tmp_path / "vaultd.hcl"
        data = tmp_path / "data"
        config.write_text(
            f'storage "file" {{\n  path = "{data}"\n}}\n'
            f'listener "tcp" {{\n  address = "127.0.0.1:{port}"\n  tls_disable = true\n}}\n'
            + kms_key.seal_hcl(kms_proxy.url)
            + f'unsealer {{\n  address = "{front.url}"\n  initial_backoff = "100ms"\n'
            '  max_backoff = "1s"\n  poll_interval = "200ms"\n  timeout = "5s"\n}\n'
            "disable_mlock = true\nworkers = 2\n"
        )
        daemon = Daemon(config, port, tmp_path / "vaultd.log")
        agent = AgentProcess(config, tmp_path / "agent.log")
        try:
            yield Stack(daemon, agent, kms_proxy, front, kms_key)
        finally:
            agent.stop()
            daemon.stop(signal.SIGKILL)


def _initialised(stack: Stack) -> Stack:
    """Daemon running and initialised (so unsealed: it holds the new key)."""
    stack.daemon.start()
    stack.tokens.append(stack.daemon.init())
    assert stack.daemon.unsealed()
    return stack


# --- restarts ----------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_a_restarted_daemon_is_unsealed_again_without_a_human(stack: Stack, sig: signal.Signals) -> None:
    _initialised(stack)
    stack.agent.start()
    stack.agent.wait_line(r"is unsealed")
    for _ in range(2):
        boot = stack.daemon.restart(sig)
        wait_for(stack.daemon.unsealed, "the daemon to be unsealed by the agent")
        line = stack.agent.wait_line(rf"unsealed the daemon \(boot {boot}\) in [0-9.]+ s")
        assert "INFO" in line
    assert stack.kms.count("Decrypt", outcome="forwarded") == 2
    assert stack.agent.process is not None and stack.agent.process.poll() is None


@pytest.mark.parametrize("order", ["agent-first", "daemon-first"])
def test_both_start_orders_end_unsealed(stack: Stack, order: str) -> None:
    _initialised(stack)
    stack.daemon.stop()
    if order == "agent-first":
        stack.agent.start()
        stack.agent.wait_line(r"attempt 2 failed: daemon not available")
        stack.daemon.start()
    else:
        stack.daemon.start()
        assert not stack.daemon.unsealed()
        stack.agent.start()
    wait_for(stack.daemon.unsealed, "the daemon to be unsealed")
    stack.agent.wait_line(r"unsealed the daemon")


def test_data_written_before_a_restart_reads_back(stack: Stack) -> None:
    _initialised(stack)
    token = stack.tokens[0]
    headers = {"X-Vault-Token": token}
    url = stack.daemon.url
    assert requests.post(url + "/v1/sys/mounts/kv", json={"type": "kv"}, headers=headers, timeout=10).ok
    assert requests.put(url + "/v1/kv/app", json={"password": "hunter2"}, headers=headers, timeout=10).ok
    stack.agent.start()
    stack.daemon.restart()
    wait_for(stack.daemon.unsealed, "the daemon to be unsealed")
    got = requests.get(url + "/v1/kv/app", headers=headers, timeout=10)
    assert got.status_code == 200 and got.json()["data"] == {"password": "hunter2"}


# --- KMS faults ---------------------------------------------------------------------


def test_kms_unreachable_at_start_is_retried_with_growing_delays(stack: Stack) -> None:
    _initialised(stack)
    stack.daemon.stop()
    stack.kms.go_down()
    stack.daemon.start()
    stack.agent.start()
    stack.agent.wait_line(r"attempt 6 failed: KMS not available")
    # The daemon stays up and sealed, and says so.
    status = requests.get(stack.daemon.url + "/v1/sys/seal-status", timeout=5)
    assert status.status_code == 200 and status.json()["sealed"] is True
    assert requests.get(stack.daemon.url + "/v1/sys/health", timeout=5).status_code == 503
    delays = [
        float(m)
        for line in stack.agent.lines(r"KMS not available")
        for m in re.findall(r"retrying in ([0-9.]+) s", line)
    ]
    assert all(0 < d <= 1.0 for d in delays)
    # Equal jitter: attempt n+2 waits at least 2x the ceiling of attempt n, until the cap.
    assert delays[2] > delays[0] and delays[3] > delays[1]
    for line in stack.agent.lines(r"KMS not available"):
        assert "WARNING" in line
    stack.kms.come_up()
    wait_for(stack.daemon.unsealed, "the daemon to be unsealed once KMS is back")
    stack.agent.wait_line(r"unsealed the daemon")


@pytest.mark.parametrize("fault", ["ThrottlingException", "http-429", "KMSInternalException", "reset"])
def test_transient_kms_faults_are_retried_then_unsealed(stack: Stack, fault: str) -> None:
    _initialised(stack)
    stack.daemon.stop()
    if fault == "http-429":
        stack.kms.fail_http(429, body=b"Too Many Requests", times=3, operations={"Decrypt"})
    elif fault == "reset":
        stack.kms.reset_connections(times=3, operations={"Decrypt"})
    else:
        stack.kms.fail(fault, times=3, operations={"Decrypt"})
    stack.daemon.start()
    stack.agent.start()
    wait_for(stack.daemon.unsealed, "the daemon to be unsealed")
    assert stack.kms.count("Decrypt") == 4
    assert stack.kms.count("Decrypt", outcome="forwarded") == 1
    assert len(stack.agent.lines(r"attempt \d failed: KMS not available")) == 3


@pytest.mark.parametrize(
    ("code", "exit_code"),
    [
        ("IncorrectKeyException", exitcodes.WRONG_KEY),
        ("InvalidCiphertextException", exitcodes.WRONG_KEY),
        ("AccessDeniedException", exitcodes.KMS_AUTH),
        ("UnrecognizedClientException", exitcodes.KMS_AUTH),
        ("DisabledException", exitcodes.KEY_UNUSABLE),
        ("KMSInvalidStateException", exitcodes.KEY_UNUSABLE),
    ],
)
def test_permanent_kms_errors_end_the_agent_with_its_code(stack: Stack, code: str, exit_code: int) -> None:
    _initialised(stack)
    stack.daemon.stop()
    stack.kms.fail(code, operations={"Decrypt"})
    stack.daemon.start()
    stack.agent.start()
    assert stack.agent.wait_exit() == exit_code
    errors = stack.agent.lines(r"ERROR")
    assert errors and code in errors[-1]
    assert stack.kms.count("Decrypt") == 1  # nothing retried
    assert stack.daemon.state()["sealed"] is True


# --- operators and init -------------------------------------------------------------


def test_operator_seal_is_respected_until_the_next_start(stack: Stack) -> None:
    _initialised(stack)
    stack.agent.start()
    stack.agent.wait_line(r"is unsealed")
    sealed = requests.put(
        stack.daemon.url + "/v1/sys/seal", headers={"X-Vault-Token": stack.tokens[0]}, timeout=10
    )
    assert sealed.status_code == 204, sealed.text
    line = stack.agent.wait_line(r"sealed by an operator")
    assert "WARNING" in line
    looks = stack.front.count(STATE)
    wait_for(lambda: stack.front.count(STATE) >= looks + 5, "the agent to look at the daemon again")
    assert stack.daemon.state()["sealed"] is True
    assert stack.front.count(UNSEAL) == 0
    assert len(stack.agent.lines(r"sealed by an operator")) == 1  # warned once
    stack.daemon.restart()
    wait_for(stack.daemon.unsealed, "the next run of the daemon to be unsealed")


def test_the_agent_waits_for_init_and_never_initialises(stack: Stack) -> None:
    stack.daemon.start()
    stack.agent.start()
    stack.agent.wait_line(r"not initialised")
    looks = stack.front.count(STATE)
    wait_for(lambda: stack.front.count(STATE) >= looks + 5, "the agent to look at the daemon again")
    assert stack.daemon.state()["initialized"] is False
    assert len(stack.agent.lines(r"not initialised")) == 1  # INFO once, then DEBUG
    stack.tokens.append(stack.daemon.init())
    stack.daemon.restart()
    wait_for(stack.daemon.unsealed, "the daemon to be unsealed after init and restart")


def test_sigterm_stops_the_agent_with_exit_0(stack: Stack) -> None:
    _initialised(stack)
    stack.agent.start()
    stack.agent.wait_line(r"is unsealed")
    assert stack.agent.stop() == exitcodes.OK


def test_the_plaintext_key_never_reaches_the_logs(stack: Stack) -> None:
    _initialised(stack)
    stack.daemon.stop()
    stack.kms.fail("ThrottlingException", times=1, operations={"Decrypt"})
    stack.daemon.start()
    stack.agent.start()
    wait_for(stack.daemon.unsealed, "the daemon to be unsealed")
    stack.agent.stop()
    text = stack.agent.text() + stack.daemon.log.read_text()
    assert stack.tokens[0] not in text
    assert not re.search(r"[A-Za-z0-9+/]{43}=", text)  # no base64 of a 32-byte key
