"""``vaultd server`` speaking sd_notify to a real datagram socket, as systemd
would see it: what it says, when, and that only the master says it.

The socket has SO_PASSCRED on, so each message arrives with its sender's
PID (as systemd checks with NotifyAccess=main)."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.integration.support import free_port, wait_for

VAULTD = Path(sys.executable).parent / "vaultd"
TIMEOUT = 30.0


class FakeSystemd:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.setblocking(False)
        self.messages: list[tuple[int, str]] = []

    def drain(self) -> list[tuple[int, str]]:
        while True:
            try:
                data, ancillary, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except BlockingIOError:
                return self.messages
            pid = 0
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("iII", payload[:12])[0]
            self.messages.append((pid, data.decode()))

    def texts(self) -> list[str]:
        return [text for _pid, text in self.drain()]

    def saw(self, line: str) -> bool:
        return any(line in text.split("\n") for text in self.texts())


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(tmp_path / "notify")
    yield fake
    fake.sock.close()


def test_ready_only_when_unsealed_reload_and_stop(tmp_path: Path, systemd: FakeSystemd) -> None:
    port = free_port()
    config = tmp_path / "vaultd.hcl"
    config.write_text(
        f'storage "file" {{\n  path = "{tmp_path / "data"}"\n}}\n'
        f'listener "tcp" {{\n  address = "127.0.0.1:{port}"\n  tls_disable = true\n}}\n'
        'log_level = "info"\nworkers = 2\ndisable_mlock = true\n'
    )
    log = tmp_path / "vaultd.log"
    env = {**os.environ, "NOTIFY_SOCKET": str(systemd.path)}
    env.pop("JOURNAL_STREAM", None)
    with open(log, "wb") as out:
        process = subprocess.Popen([str(VAULTD), "server", "--config", str(config)], stdout=out,
                                   stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: systemd.saw("STATUS=uninitialized: run vaultctl operator init"), "the first status")
        assert systemd.saw("EXTEND_TIMEOUT_USEC=30000000")
        wait_for(lambda: _answers(url), "the listener")
        init = requests.put(f"{url}/v1/sys/init", json={"secret_shares": 3, "secret_threshold": 2}, timeout=10)
        init.raise_for_status()
        keys = init.json()["keys"]
        wait_for(lambda: systemd.saw("STATUS=sealed: 0/2 key shares"), "sealed, 0/2")
        requests.put(f"{url}/v1/sys/unseal", json={"key": keys[0]}, timeout=10).raise_for_status()
        wait_for(lambda: systemd.saw("STATUS=sealed: 1/2 key shares"), "sealed, 1/2")
        assert not any("READY=1" in t for _p, t in systemd.messages)
        requests.put(f"{url}/v1/sys/unseal", json={"key": keys[1]}, timeout=10).raise_for_status()
        wait_for(lambda: systemd.saw("STATUS=unsealed, 2 workers"), "unsealed")
        assert systemd.messages[-1][1] == "READY=1\nSTATUS=unsealed, 2 workers"

        config.write_text(config.read_text().replace('log_level = "info"', 'log_level = "debug"'))
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: systemd.saw("RELOADING=1"), "RELOADING=1")
        wait_for(lambda: systemd.texts().count("READY=1\nSTATUS=unsealed, 2 workers") == 2,
                 "READY=1 after the reload")
        wait_for(lambda: b"log level debug" in log.read_bytes(), "the new log level")
        wait_for(lambda: _answers(url), "the new workers")

        requests.put(f"{url}/v1/sys/seal", headers={"X-Vault-Token": init.json()["root_token"]},
                     timeout=10).raise_for_status()
        wait_for(lambda: systemd.saw("STATUS=sealed by operator"), "sealed by operator")
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=TIMEOUT)
        systemd.drain()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    texts = [t for _p, t in systemd.messages]
    assert texts[-1] == "STOPPING=1\nSTATUS=stopping", texts
    assert texts.count("READY=1\nSTATUS=unsealed, 2 workers") == 2  # first unseal, end of the reload
    assert not any("Gunicorn" in t for t in texts)  # gunicorn's own READY=1 never went out
    assert {pid for pid, _t in systemd.messages} == {process.pid}  # the master only, never a worker


def _answers(url: str) -> bool:
    try:
        return requests.get(f"{url}/v1/sys/seal-status", timeout=2).status_code == 200
    except requests.RequestException:
        return False
