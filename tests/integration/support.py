"""Real ``vaultd server`` processes (and OpenBao's CLI) for the integration tests.

Every server is a gunicorn master plus workers started by the installed
``vaultd`` console script, on a loopback port chosen at run time, with its
own config and data directory under ``tmp_path``.  It runs in its own
session (process group) so a test can SIGKILL the whole tree the way
systemd kills a unit's cgroup, and its output goes to a file that is shown
with any failure: a status code alone rarely says why a server misbehaved.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from vaultd.dev.ports import free_port as free_port  # one port picker for every test server

BIN = Path(sys.executable).parent
VAULTD = BIN / "vaultd"
BAO = BIN / "bao"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
REQUEST_TIMEOUT = 15.0
LOG_TAIL = 6000


def wait_for(condition: Callable[[], Any], what: str, timeout: float = START_TIMEOUT, interval: float = 0.05) -> Any:
    """Poll until ``condition`` returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def write_config(
    directory: Path,
    port: int,
    *,
    workers: int = 4,
    threads: int = 8,
    storage: str = "file",
    listener_extra: str = "",
    extra: str = "",
    data_dir: Path | None = None,
) -> Path:
    """A Vault-format HCL config with file, sqlite (both in ``data``, or in
    ``data_dir``) or inmem storage and plain HTTP."""
    data = data_dir or directory / "data"
    if storage in ("file", "sqlite"):
        storage_block = f'storage "{storage}" {{\n  path = "{data}"\n}}'
    else:
        storage_block = 'storage "inmem" {}'
    text = (
        f"{storage_block}\n"
        'listener "tcp" {\n'
        f'  address = "127.0.0.1:{port}"\n'
        "  tls_disable = true\n"
        f"{listener_extra}"
        "}\n"
        "disable_mlock = true\n"
        f"workers = {workers}\n"
        f"threads = {threads}\n"
        'log_level = "info"\n'
        f"{extra}"
    )
    path = directory / "vaultd.hcl"
    path.write_text(text)
    return path


@dataclass
class InitResult:
    keys: list[str]
    keys_base64: list[str]
    root_token: str

    @property
    def secrets(self) -> list[str]:
        """Every string that must never show up in a log."""
        return [*self.keys, *self.keys_base64, self.root_token]


@dataclass
class Server:
    """One ``vaultd server --config`` process tree."""

    directory: Path
    port: int
    config: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    known_secrets: list[str] = field(default_factory=list)
    runtime_dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="vdrt-"))
    """This server's XDG_RUNTIME_DIR (short: a socket path holds 108 bytes)."""

    @property
    def agent_socket(self) -> Path:
        """Where the daemon serves the agent when the config names no address."""
        return Path(self.runtime_dir) / "vaultd" / "unseal.sock"

    # -- addresses and diagnostics ---------------------------------------------

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"{self.addr}/v1/{path.lstrip('/')}"

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self) -> str:
        return self.log_text()[-LOG_TAIL:]

    def explain(self, message: str) -> str:
        """``message`` plus the server's recent output, for assertion messages."""
        return f"{message}\n--- vaultd output ({self.log}) ---\n{self.log_tail()}"

    # -- process control -------------------------------------------------------

    @property
    def master_pid(self) -> int:
        assert self.process is not None, "server not started"
        return self.process.pid

    def start(self) -> None:
        self.starts += 1
        with open(self.log, "ab") as log:
            log.write(f"\n===== start #{self.starts} =====\n".encode())
            log.flush()
            env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_", "NOTIFY_"))}
            # The default agent socket is $XDG_RUNTIME_DIR/vaultd/unseal.sock
            # (else /run/vaultd/): one private, short directory per server.
            env["XDG_RUNTIME_DIR"] = self.runtime_dir
            self.process = subprocess.Popen(
                [str(VAULTD), "server", "--config", str(self.config)],
                cwd=self.directory,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        wait_for(self._answering, f"vaultd on port {self.port} to answer sys/seal-status")
        wait_for(lambda: len(self.worker_pids()) == self.workers_wanted(), "all gunicorn workers to start")

    def workers_wanted(self) -> int:
        text = self.config.read_text()
        if 'storage "inmem"' in text:
            return 1
        for line in text.splitlines():
            if line.strip().startswith("workers"):
                return int(line.split("=")[1])
        return os.cpu_count() or 1

    def _answering(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(self.explain(f"vaultd exited early with status {self.process.returncode}"))
        try:
            return requests.get(self.url("sys/seal-status"), timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM to the master (gunicorn's graceful stop), then SIGKILL to
        whatever of the group is left."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        self._kill_group()

    def kill_tree(self) -> None:
        """``kill -9`` of every process of the server at once."""
        assert self.process is not None
        self._kill_group()

    def _kill_group(self) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=STOP_TIMEOUT)
        wait_for(lambda: not _group_alive(self.process.pid), "the process group to die", timeout=STOP_TIMEOUT)

    def worker_pids(self) -> set[int]:
        """The master's children: gunicorn's workers."""
        if not self.alive():
            return set()
        pid = self.master_pid
        children: set[int] = set()
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for task in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(FileNotFoundError):
                    text = Path(f"/proc/{pid}/task/{task}/children").read_text()
                    children.update(int(p) for p in text.split())
        return {p for p in children if _is_running(p)}

    # -- HTTP ------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        json_body: Any = None,
        data: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = REQUEST_TIMEOUT,
    ) -> requests.Response:
        """One request on a new connection (``Connection: close``), so that
        consecutive requests land on whichever worker accepts first."""
        hdrs = {"Connection": "close", **(headers or {})}
        if token is not None:
            hdrs["X-Vault-Token"] = token
        return requests.request(method, self.url(path), json=json_body, data=data, headers=hdrs, timeout=timeout)

    def expect(self, response: requests.Response, status: int) -> Any:
        """Assert the status; return the decoded body (or None when empty)."""
        assert response.status_code == status, self.explain(
            f"{response.request.method} {response.url}: expected {status}, got {response.status_code}: "
            f"{response.text[:1000]}"
        )
        return response.json() if response.content else None

    def call(self, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
        return self.expect(self.request(method, path, **kwargs), status)

    # -- lifecycle over HTTP ---------------------------------------------------

    def init(self, shares: int = 5, threshold: int = 3) -> InitResult:
        body = self.call("PUT", "sys/init", json_body={"secret_shares": shares, "secret_threshold": threshold})
        result = InitResult(body["keys"], body["keys_base64"], body["root_token"])
        self.known_secrets.extend(result.secrets)
        return result

    def unseal(self, keys: list[str]) -> dict[str, Any]:
        status: dict[str, Any] = {}
        for key in keys:
            status = self.call("PUT", "sys/unseal", json_body={"key": key})
            if not status["sealed"]:
                break
        assert status.get("sealed") is False, self.explain(f"still sealed after {len(keys)} shares: {status}")
        return status

    def seal_status(self) -> dict[str, Any]:
        return self.call("GET", "sys/seal-status")


def _is_running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _group_alive(pgid: int) -> bool:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


# -- which worker served a connection -------------------------------------------------


def _socket_inode(server_port: int, client_port: int) -> int | None:
    """The inode of the server-side socket of the loopback connection between
    ``client_port`` and ``server_port``, from ``/proc/net/tcp``."""
    want_local = f"0100007F:{server_port:04X}"
    want_remote = f"0100007F:{client_port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = line.split()
        if cols[1] == want_local and cols[2] == want_remote and cols[3] == "01":
            return int(cols[9])
    return None


def pid_owning_connection(server: Server, client_port: int) -> int | None:
    """Which worker holds the accepted socket of a still-open connection."""
    inode = _socket_inode(server.port, client_port)
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in server.worker_pids():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, PermissionError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(FileNotFoundError, OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                        return pid
    return None


def request_with_worker(
    server: Server, method: str, path: str, *, token: str | None = None, body: Any = None
) -> tuple[int, Any, int]:
    """Send one request on a fresh keep-alive connection and, while the
    connection is still open, find the worker process that accepted it.
    Returns (status, decoded body or None, worker pid)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=REQUEST_TIMEOUT)
    try:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["X-Vault-Token"] = token
        payload = json.dumps(body) if body is not None else None
        conn.request(method, f"/v1/{path}", body=payload, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        assert conn.sock is not None
        client_port = conn.sock.getsockname()[1]
        pid = wait_for(
            lambda: pid_owning_connection(server, client_port), "the worker owning the connection", timeout=5
        )
        return response.status, (json.loads(raw) if raw else None), pid
    finally:
        conn.close()


def requests_on_every_worker(
    server: Server, method: str, path: str, *, token: str | None = None, timeout: float = 30.0
) -> list[tuple[int, Any, int]]:
    """One request from each of several connections held open at once, so
    that every worker takes some: a worker leaves new connections to a
    sibling holding fewer (``vaultd/httpbalance.py``), and with 4 connections
    per worker none is left out.  Sequential fresh connections would not do:
    whichever workers the kernel wakes first take them all.  Retried while a
    worker is still starting (it takes nothing then).  Returns (status,
    decoded body or None, worker pid) per connection."""
    deadline = time.monotonic() + timeout
    while True:
        workers = server.worker_pids()
        connections = [http.client.HTTPConnection("127.0.0.1", server.port, timeout=REQUEST_TIMEOUT)
                       for _ in range(4 * len(workers))]
        try:
            for conn in connections:
                conn.connect()
            headers = {"X-Vault-Token": token} if token else {}
            results = []
            for conn in connections:
                conn.request(method, f"/v1/{path}", headers=headers)
                response = conn.getresponse()
                raw = response.read()
                assert conn.sock is not None
                pid = pid_owning_connection(server, conn.sock.getsockname()[1])
                results.append((response.status, json.loads(raw) if raw else None, pid))
        finally:
            for conn in connections:
                conn.close()
        if {pid for _, _, pid in results} == workers == server.worker_pids():
            return results
        assert time.monotonic() < deadline, f"not every worker took a connection: {results} of {workers}"
        time.sleep(0.2)


# -- the bao CLI ------------------------------------------------------------------------


@dataclass
class BaoRunner:
    """OpenBao's CLI, unmodified, pointed at a server with ``BAO_ADDR``.

    ``HOME`` is the test's directory, so ``bao login`` keeps its token in
    ``$HOME/.vault-token`` there; no token is passed unless asked for."""

    home: Path
    addr: str

    def __call__(
        self, *args: str, token: str | None = None, check: int | None = 0, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "BAO_ADDR": self.addr,
            "NO_COLOR": "1",
        }
        if token is not None:
            env["BAO_TOKEN"] = token
        result = subprocess.run(
            [str(BAO), *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=self.home, check=False
        )
        if check is not None:
            assert result.returncode == check, (
                f"bao {' '.join(args)}: exit {result.returncode}, expected {check}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result



def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


ServerFactory = Callable[..., Server]


@contextlib.contextmanager
def small_tmpfs(parent: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``"1m"``) mounted at ``parent/small``: a disk
    that can really be filled.  Skips the test where it cannot be mounted."""
    import pytest

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root")
    mount = parent / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill_up(path: Path) -> None:
    """Write zeros to ``path`` until its filesystem has no byte left."""
    with open(path, "wb", buffering=0) as handle:
        for size in (65536, 4096, 1):
            try:
                while True:
                    handle.write(b"\0" * size)
            except OSError:
                pass
