"""What the e2e tests share: the .deb and the cached root filesystem they
boot (made once per session, in parallel), the measurements they print, and
``Vaultd``, what a test does to vaultd inside a booted container.

Used by ``tests/e2e/conftest.py`` (fixtures) and the test modules beside it.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.nspawn import Container, control_depends, host_mirror, mirror_reachable, rootfs
from tests.integration.support import wait_for
from vaultd.logging import EVENTS

ROOT = Path(__file__).resolve().parents[2]
AGENT_SOCKET = "/run/vaultd/unseal.sock"
"""The default agent channel: the tests' configs have no ``unsealer.address``."""
TEST_PACKAGES = ("logrotate",)
"""Installed in the container beside the .deb's dependencies: the package
ships /etc/logrotate.d/vaultd, and the test runs it as cron would."""


def requirements() -> str | None:
    """Why the e2e tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (debootstrap, overlay mounts, systemd-nspawn)"
    for tool in ("debootstrap", "systemd-nspawn", "nsenter", "mount", "make"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (make e2e-deps installs it)"
    return None


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 90.0, interval: float = 0.2) -> Any:
    """The integration tests' ``wait_for``, with the slower pace a booted
    container needs."""
    return wait_for(condition, what, timeout=timeout, interval=interval)


def journal_text(value: object) -> str:
    """A journal field's text: ``journalctl -o json`` gives a value that is
    not UTF-8 as a byte array."""
    if isinstance(value, list):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


class Report:
    """Prints each measurement at once (past pytest's capture), so a run
    shows its numbers whether or not it passes."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys
        self.started = time.monotonic()

    def __call__(self, text: str) -> None:
        with self.capsys.disabled():
            print(f"\n[e2e {time.monotonic() - self.started:6.1f}s] {text}", flush=True)


def build_deb(out: Path, build_dir: Path, log: Path) -> Path:
    with open(log, "wb") as output:
        subprocess.run(
            ["make", "-C", str(ROOT), "--no-print-directory", "deb", f"DEB_OUT={out}", f"DEB_BUILD_DIR={build_dir}"],
            stdout=output, stderr=subprocess.STDOUT, check=True, timeout=900,
        )
    debs = sorted(out.glob("vaultd_*_all.deb"))
    assert len(debs) == 1, debs
    return debs[0]


@dataclass(frozen=True)
class DebianImage:
    """The built .deb and the root filesystem to boot, with what each took."""

    deb: Path
    lower: Path
    rootfs_fresh: bool
    rootfs_seconds: float
    deb_seconds: float

    def describe(self) -> list[str]:
        return [f"root filesystem: {'debootstrap (cold)' if self.rootfs_fresh else 'cache (warm)'} "
                f"in {self.rootfs_seconds:.1f} s: {self.lower}",
                f"make deb (dpkg-buildpackage + lintian): {self.deb.name} in {self.deb_seconds:.1f} s"]


def prepare_image(workdir: Path) -> DebianImage:
    """``make deb`` while the root filesystem is made or found in the cache.
    Skips the test when the requirements or the Debian mirror are missing."""
    reason = requirements()
    if reason:
        pytest.skip(reason)
    mirror = host_mirror()
    control = ROOT / "packaging/debian/control"
    deb_result: dict[str, Any] = {}

    def build() -> None:
        started = time.monotonic()
        try:
            deb_result["deb"] = build_deb(workdir / "out", workdir / "debbuild", workdir / "deb.log")
        except BaseException as exc:  # reported by the main thread
            deb_result["error"] = exc
        deb_result["seconds"] = time.monotonic() - started

    builder = threading.Thread(target=build, name="make-deb")
    builder.start()
    started = time.monotonic()
    try:
        lower, fresh = rootfs([*control_depends(control), *TEST_PACKAGES], mirror, workdir / "debootstrap.log")
    except Exception:
        builder.join()
        if not mirror_reachable(mirror):
            pytest.skip(f"debootstrap impossible: {mirror} is not reachable")
        raise
    rootfs_seconds = time.monotonic() - started
    builder.join()
    if "error" in deb_result:
        log = (workdir / "deb.log").read_text(errors="replace")[-3000:]
        raise AssertionError(f"make deb failed:\n{log}") from deb_result["error"]
    return DebianImage(deb_result["deb"], lower, fresh, rootfs_seconds, deb_result["seconds"])


def save_journal(c: Container, path: Path, report: Report) -> None:
    """The container's whole journal, for the post-mortem (pytest keeps the
    last runs' tmp_path)."""
    journal = c.run("journalctl", "--no-pager", "-o", "short-monotonic", check=False, timeout=60)
    path.write_text(journal.stdout)
    report(f"container journal saved to {path}")


class Vaultd:
    """What the test does to vaultd inside the container."""

    def __init__(self, container: Container, port: int) -> None:
        self.c = container
        self.url = f"http://127.0.0.1:{port}"

    def state(self, unit: str = "vaultd.service") -> dict[str, str]:
        return self.c.show(unit, "ActiveState", "SubState", "StatusText", "MainPID", "NRestarts", "Result",
                           "ExecMainStartTimestampMonotonic", "ActiveEnterTimestampMonotonic")

    def wait_state(self, active: str, status_prefix: str = "", *, unit: str = "vaultd.service",
                   timeout: float = 90.0, new_pid_than: str | None = None) -> dict[str, str]:
        def reached() -> dict[str, str] | None:
            state = self.state(unit)
            if state["ActiveState"] != active or not state["StatusText"].startswith(status_prefix):
                return None
            if new_pid_than is not None and state["MainPID"] in ("0", new_pid_than):
                return None
            return state
        return wait_until(reached, f"{unit} {active} / {status_prefix!r}", timeout)

    def journal(self, *args: str) -> str:
        return self.c.run("journalctl", "--no-pager", *args).stdout

    def cursor(self) -> str:
        out = self.c.run("journalctl", "--no-pager", "-n", "0", "--show-cursor").stdout
        return out.strip().rsplit("cursor: ", 1)[1]

    def vaultctl(self, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {"VAULT_ADDR": self.url, **({"VAULT_TOKEN": token} if token else {})}
        return self.c.run("vaultctl", *args, env=env)

    def current_run(self, unit: str) -> list[dict[str, Any]]:
        """The journal entries of the unit's current run (its InvocationID),
        so that an older run's lines cannot pass for this one's."""
        invocation = self.c.show(unit, "InvocationID")["InvocationID"]
        assert invocation, f"{unit} has no InvocationID"
        out = self.journal(f"_SYSTEMD_INVOCATION_ID={invocation}", "-o", "json")
        return [json.loads(line) for line in out.splitlines() if line.strip()]


def assert_unsealed_over_socket(c: Container, v: Vaultd, *, by_agent: bool = True) -> str:
    """The daemon is unsealed, and the agent reached it over the private
    unix socket: the agent's current run dials it and saw this boot of the
    daemon unsealed (or unsealed it: ``by_agent``), the daemon's current run
    serves it and says who unsealed it, ``/run/vaultd`` and the socket are
    the vaultd user's alone, another local user cannot connect, and the key
    endpoints answer 403 on TCP, so no unseal can have come that way.
    Returns the agent's line about this boot, for the report."""
    state = v.wait_state("active", "unsealed")
    boot_id = requests.get(f"{v.url}/v1/sys/vaultd/state", timeout=10).json()["boot_id"]
    expected = f"unsealed the daemon (boot {boot_id})" if by_agent else f"daemon (boot {boot_id}) is unsealed"

    def agent_saw_it() -> tuple[list[str], str] | None:
        lines = [journal_text(e.get("MESSAGE", "")) for e in v.current_run("vaultd-unsealer.service")]
        found = [line for line in lines if line.startswith(expected)]
        return (lines, found[0]) if found else None

    agent_lines, line = wait_until(agent_saw_it, f"the agent's {expected!r}", timeout=30)
    assert f"watching unix://{AGENT_SOCKET} (seal awskms)" in agent_lines, agent_lines
    assert not any(v.url in text for text in agent_lines), agent_lines  # never the daemon's TCP port
    daemon = v.current_run("vaultd.service")
    assert any(journal_text(e.get("MESSAGE", "")) == f"serving the unsealer agent on {AGENT_SOCKET}" for e in daemon)
    unsealed_by = [e.get("UNSEALED_BY") for e in daemon if e.get("MESSAGE_ID") == EVENTS["unsealed"].message_id]
    assert unsealed_by == ["unsealer" if by_agent else "init"], (unsealed_by, state)

    assert c.run("stat", "-c", "%a %U %G %F", "/run/vaultd").stdout.strip() == "700 vaultd vaultd directory"
    assert c.run("stat", "-c", "%a %U %G %F", AGENT_SOCKET).stdout.strip() == "600 vaultd vaultd socket"
    other = c.run("runuser", "-u", "nobody", "--", "python3", "-c",
                  f"import socket; socket.socket(socket.AF_UNIX).connect({AGENT_SOCKET!r})", check=False)
    assert other.returncode != 0 and "PermissionError" in other.stderr, other
    forged = {"key": base64.b64encode(bytes(32)).decode(), "boot_id": boot_id}
    for method, endpoint, body in (("GET", "stored-key", None), ("PUT", "unseal", forged)):
        response = requests.request(method, f"{v.url}/v1/sys/vaultd/{endpoint}", json=body, timeout=10)
        assert response.status_code == 403 and response.json()["errors"], (endpoint, response.text)
    return line
