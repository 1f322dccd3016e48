"""The auto-unseal fault matrix with real processes: ``vaultd server`` (gunicorn
master and workers), ``vaultd-unsealer``, and moto's KMS server, all on
loopback ports chosen at run time.

Two fault proxies sit in the paths: one between boto3 and the KMS emulator
(faults KMS would produce), one between the agent and the daemon (to count
what the agent asks, so "it did not unseal" is checked against "it looked
again", not against a sleep).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.faultproxy import FaultProxy
from tests.integration.socketfront import SocketFront
from tests.integration.socketfront import short_dir as short_dir  # fixture
from tests.integration.support import Server, ServerFactory, wait_for
from tests.kms_fixtures import KmsKey, isolated_aws_env
from unsealer import exitcodes

ROOT = Path(__file__).resolve().parents[2]
WAIT = 60.0
STATE = "GET /v1/sys/vaultd/state"
UNSEAL = "PUT /v1/sys/vaultd/unseal"


class Daemon:
    """The lead's :class:`Server` plus what the auto-unseal tests ask of it."""

    def __init__(self, server: Server) -> None:
        self.server = server

    @property
    def url(self) -> str:
        return self.server.addr

    @property
    def log(self) -> Path:
        return self.server.log

    def start(self) -> None:
        self.server.start()

    def state(self) -> dict[str, object]:
        return requests.get(self.url + "/v1/sys/vaultd/state", timeout=5).json()

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if sig == signal.SIGKILL:
            self.server.kill_tree()
        else:
            self.server.stop()

    def restart(self, sig: signal.Signals = signal.SIGTERM) -> str:
        old = self.state()["boot_id"]
        self.stop(sig)
        self.start()
        new = self.state()["boot_id"]
        assert new != old
        return str(new)

    def init(self) -> str:
        body = self.server.call(
            "PUT", "sys/init", json_body={"recovery_shares": 1, "recovery_threshold": 1}, timeout=30
        )
        self.server.known_secrets.extend([*body["recovery_keys"], *body["recovery_keys_base64"], body["root_token"]])
        return str(body["root_token"])

    def unsealed(self) -> bool:
        return self.state()["sealed"] is False


@dataclass
class AgentProcess:
    config: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self, *python_flags: str) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, *python_flags, "-m", "unsealer", "--config", str(self.config)],
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
        return str(wait_for(lambda: (self.lines(pattern) or [None])[-1], f"agent log line /{pattern}/", timeout=WAIT))

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
    front: SocketFront
    """Between the agent and the daemon's socket."""
    key: KmsKey
    tokens: list[str] = field(default_factory=list)


AGENT_TUNING = '  initial_backoff = "100ms"\n  max_backoff = "1s"\n  poll_interval = "200ms"\n  timeout = "5s"\n'


@pytest.fixture
def stack(
    tmp_path: Path, kms_key: KmsKey, kms_proxy: FaultProxy, server_factory: ServerFactory, short_dir: Path
) -> Iterator[Stack]:
    """The daemon serves the agent on its socket; the agent reads a copy of
    the daemon's config whose unsealer.address is a counting relay to it."""
    daemon_socket = short_dir / "run" / "unseal.sock"
    server = server_factory(
        workers=2, start=False, extra=kms_key.seal_hcl(kms_proxy.url)
        + f'unsealer {{\n  address = "unix://{daemon_socket}"\n{AGENT_TUNING}}}\n'
    )
    with SocketFront(daemon_socket, short_dir / "front") as front:
        agent_config = server.directory / "agent.hcl"
        agent_config.write_text(
            server.config.read_text().replace(f"unix://{daemon_socket}", f"unix://{front.path}")
        )
        agent = AgentProcess(agent_config, tmp_path / "agent.log")
        try:
            yield Stack(Daemon(server), agent, kms_proxy, front, kms_key)
        finally:
            agent.stop()


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
        wait_for(stack.daemon.unsealed, "the daemon to be unsealed by the agent", timeout=WAIT)
        line = stack.agent.wait_line(rf"unsealed the daemon \(boot {boot}\) in [0-9.]+ s")
        assert "INFO" in line
    assert stack.kms.count("Decrypt", outcome="forwarded") == 2
    assert stack.agent.process is not None and stack.agent.process.poll() is None


def _children(pid: int) -> list[str]:
    with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as children:
        return children.read().split()


def test_the_agent_never_loads_the_aws_sdk_and_its_kms_helper_ends_after_each_unseal(stack: Stack) -> None:
    """boto3 costs a process about 20 MiB it never gives back, so only a
    short-lived child (unsealer.kms_process) imports it.  ``-X importtime``
    makes the agent's interpreter list every module it imports on stderr
    (the log); the child is started without the flag and lists none."""
    _initialised(stack)
    stack.agent.start("-X", "importtime")
    stack.agent.wait_line(r"is unsealed")
    assert stack.agent.process is not None
    pid = stack.agent.process.pid
    wait_for(lambda: not _children(pid), "the KMS helper started at the agent's start to end")
    for _ in range(2):
        boot = stack.daemon.restart(signal.SIGKILL)
        wait_for(stack.daemon.unsealed, "the daemon to be unsealed by the agent", timeout=WAIT)
        stack.agent.wait_line(rf"unsealed the daemon \(boot {boot}\)")
        wait_for(lambda: not _children(pid), "the KMS helper to end after the unseal")
    assert stack.kms.count("Decrypt", outcome="forwarded") == 2
    imported = [line.rsplit("|", 1)[-1].strip() for line in stack.agent.lines(r"^import time:")]
    assert "tenacity" in imported, "no -X importtime lines: this test would see nothing"
    assert not [name for name in imported if name.split(".")[0] in ("boto3", "botocore")]


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
    wait_for(stack.daemon.unsealed, "the daemon to be unsealed", timeout=WAIT)
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
    wait_for(stack.daemon.unsealed, "the daemon to be unsealed", timeout=WAIT)
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
    wait_for(stack.daemon.unsealed, "the daemon to be unsealed once KMS is back", timeout=WAIT)
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
    wait_for(stack.daemon.unsealed, "the daemon to be unsealed", timeout=WAIT)
    assert stack.kms.count("Decrypt") == 4
    assert stack.kms.count("Decrypt", outcome="forwarded") == 1
    assert len(stack.agent.lines(r"attempt \d failed: KMS not available")) == 3


def test_the_agent_s_textfile_counts_kms_calls_errors_retries_and_the_unseal(stack: Stack, tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    textfile = tmp_path / "vaultd-unsealer.prom"
    config = stack.agent.config
    config.write_text(config.read_text().replace("unsealer {\n", f'unsealer {{\n  metrics_textfile = "{textfile}"\n'))
    _initialised(stack)
    stack.daemon.stop()
    stack.kms.fail("ThrottlingException", times=2, operations={"Decrypt"})
    stack.daemon.start()
    stack.agent.start()
    wait_for(stack.daemon.unsealed, "the daemon to be unsealed", timeout=WAIT)

    def values() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = textfile.read_text() if textfile.exists() else ""
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    seen = wait_for(lambda: (v := values()).get(("vaultd_unsealer_unseals_total", ())) == 1 and v,
                    "the textfile to show the unseal", timeout=WAIT)
    assert seen[("vaultd_unsealer_kms_calls_total", ())] == 3
    assert seen[("vaultd_unsealer_kms_errors_total", (("code", "ThrottlingException"),))] == 2
    assert seen[("vaultd_unsealer_retries_total", (("cause", "kms"),))] == 2
    assert seen[("vaultd_unsealer_failing", ())] == 0
    assert seen[("vaultd_unsealer_unseal_duration_seconds", ())] > 0
    assert textfile.stat().st_mode & 0o777 == 0o644  # node_exporter runs as another user


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
    wait_for(lambda: stack.front.count(STATE) >= looks + 5, "the agent to look at the daemon again", timeout=WAIT)
    assert stack.daemon.state()["sealed"] is True
    assert stack.front.count(UNSEAL) == 0
    assert len(stack.agent.lines(r"sealed by an operator")) == 1  # warned once
    stack.daemon.restart()
    wait_for(stack.daemon.unsealed, "the next run of the daemon to be unsealed", timeout=WAIT)


def test_the_agent_waits_for_init_and_never_initialises(stack: Stack) -> None:
    stack.daemon.start()
    stack.agent.start()
    stack.agent.wait_line(r"not initialised")
    looks = stack.front.count(STATE)
    wait_for(lambda: stack.front.count(STATE) >= looks + 5, "the agent to look at the daemon again", timeout=WAIT)
    assert stack.daemon.state()["initialized"] is False
    assert len(stack.agent.lines(r"not initialised")) == 1  # INFO once, then DEBUG
    stack.tokens.append(stack.daemon.init())
    stack.daemon.restart()
    wait_for(stack.daemon.unsealed, "the daemon to be unsealed after init and restart", timeout=WAIT)


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
    wait_for(stack.daemon.unsealed, "the daemon to be unsealed", timeout=WAIT)
    stack.agent.stop()
    text = stack.agent.text() + stack.daemon.log.read_text()
    assert stack.tokens[0] not in text
    assert not re.search(r"[A-Za-z0-9+/]{43}=", text)  # no base64 of a 32-byte key


# --- the seed scenario, with OpenBao's CLI ---------------------------------------------


def test_seed_scenario_with_the_bao_cli(stack: Stack, tmp_path: Path) -> None:
    """Issue 3's acceptance: bao init with one recovery share, restart, unsealed."""
    from tests.integration.support import BaoRunner

    bao = BaoRunner(tmp_path, stack.daemon.url)
    stack.daemon.start()
    stack.agent.start()
    init = json.loads(bao("operator", "init", "-recovery-shares=1", "-recovery-threshold=1", "-format=json").stdout)
    stack.daemon.server.known_secrets.extend([*init["recovery_keys_b64"], init["root_token"]])
    status = json.loads(bao("status", "-format=json").stdout)
    assert status["sealed"] is False and status["type"] == "awskms" and status["recovery_seal"] is True
    assert "Recovery Seal Type" in bao("status").stdout
    bao("login", init["root_token"])
    bao("secrets", "enable", "-version=2", "kv")
    bao("kv", "put", "kv/app", "password=hunter2")
    stack.daemon.restart()
    wait_for(stack.daemon.unsealed, "the daemon to be unsealed", timeout=WAIT)
    assert "Sealed                   false" in bao("status").stdout
    bao("login", init["root_token"])
    got = json.loads(bao("kv", "get", "-format=json", "kv/app").stdout)
    assert got["data"]["data"] == {"password": "hunter2"}


# --- break-glass -----------------------------------------------------------------------


def _init_with(stack: Stack, **params: object) -> dict[str, Any]:
    body = stack.daemon.server.call("PUT", "sys/init", json_body=params, timeout=30)
    stack.daemon.server.known_secrets.extend(
        [*body["recovery_keys"], *body["recovery_keys_base64"], body["root_token"]]
    )
    return body


def test_break_glass_recovery_shares_unseal_when_the_kms_key_is_gone(stack: Stack) -> None:
    stack.daemon.start()
    init = _init_with(stack, recovery_shares=3, recovery_threshold=2, break_glass=True)
    token = str(init["root_token"])
    headers = {"X-Vault-Token": token}
    url = stack.daemon.url
    assert requests.post(url + "/v1/sys/mounts/kv", json={"type": "kv"}, headers=headers, timeout=10).ok
    assert requests.put(url + "/v1/kv/app", json={"password": "hunter2"}, headers=headers, timeout=10).ok
    stack.kms.fail("NotFoundException")  # the key is gone: every KMS call fails
    stack.daemon.restart()
    assert stack.daemon.state()["sealed"] is True
    keys = init["recovery_keys"]
    first = requests.put(url + "/v1/sys/unseal", json={"key": keys[2]}, timeout=10)
    assert first.status_code == 200 and first.json()["progress"] == 1
    second = requests.put(url + "/v1/sys/unseal", json={"key": keys[0]}, timeout=10)
    assert second.status_code == 200 and second.json()["sealed"] is False
    got = requests.get(url + "/v1/kv/app", headers=headers, timeout=10)
    assert got.status_code == 200 and got.json()["data"] == {"password": "hunter2"}
    assert stack.kms.count("Decrypt") == 0  # nobody asked KMS: the shares did it


def test_without_break_glass_recovery_keys_cannot_unseal(stack: Stack) -> None:
    stack.daemon.start()
    init = _init_with(stack, recovery_shares=1, recovery_threshold=1)
    stack.kms.fail("NotFoundException")
    stack.daemon.restart()
    refused = requests.put(stack.daemon.url + "/v1/sys/unseal", json={"key": init["recovery_keys"][0]}, timeout=10)
    assert refused.status_code == 400
    assert "cannot unseal" in refused.json()["errors"][0]
    assert "break_glass" in refused.json()["errors"][0]
    assert stack.daemon.state()["sealed"] is True


def test_init_names_an_unusable_kms_key_and_stays_uninitialised(stack: Stack) -> None:
    stack.daemon.start()
    stack.kms.fail("NotFoundException", times=1, operations={"DescribeKey"})
    refused = requests.put(
        stack.daemon.url + "/v1/sys/init", json={"recovery_shares": 1, "recovery_threshold": 1}, timeout=30
    )
    assert refused.status_code == 400 and "NotFoundException" in refused.json()["errors"][0]
    assert stack.kms.count("Encrypt") == 0  # no KEK was wrapped with a key that is not there
    assert stack.daemon.state()["initialized"] is False
    stack.daemon.init()  # the next try, with the key back, initialises
    assert stack.daemon.unsealed()


def test_the_worker_that_called_kms_at_init_is_replaced(stack: Stack) -> None:
    """``sys/init`` under awskms has the worker serving it import the AWS SDK
    to wrap the new key (about 20 MiB a worker would otherwise keep for its
    whole life, the agent doing every later KMS call).  The worker answers,
    then stands down, and the master forks a replacement without it; the
    server stays unsealed and serving throughout."""
    server = stack.daemon.server
    stack.daemon.start()
    before = server.worker_pids()
    token = stack.daemon.init()
    now = wait_for(lambda: (lambda pids: pids if len(pids) == 2 and pids != before else None)(server.worker_pids()),
                   "the worker that called KMS to be replaced", timeout=30)
    assert len(before - now) == 1, f"one worker (the one that served init) is replaced: {before} -> {now}"
    assert "replacing this worker: it loaded the AWS SDK for a KMS call" in server.log_text()
    assert stack.daemon.unsealed()
    server.call("PUT", "sys/mounts/kv", 204, token=token, json_body={"type": "kv", "options": {"version": "2"}})
    server.call("POST", "kv/data/after-init", token=token, json_body={"data": {"v": "1"}})
    assert server.call("GET", "kv/data/after-init", token=token)["data"]["data"] == {"v": "1"}
