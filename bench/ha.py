"""The HA part of ``make bench``: three vaultd nodes on one local PostgreSQL.

PostgreSQL is the tests' throwaway cluster (:mod:`tests.postgres_fixtures`:
``initdb`` in a temporary directory, ``pg_ctl`` on a free loopback port, as
the ``postgres`` user when run as root), so the bench and the integration
test start it the same way.  The nodes run with default settings (workers,
threads, lock timings) and ``ha_enabled``; they use Shamir seals unsealed
over HTTP with one key share, not the awskms seal and agent of the main
servers: the HA path (lease, redirect, takeover) is the same either way.

Measured:

* KV v2 write and read of one secret through the active node, with wrk,
  as scenarios 1 and 2;
* the same load sent to a standby.  wrk does not follow redirects, so
  these rows are the standby's own ``307`` answer, which is what a standby
  does; a client that follows it then pays the active node's row as well;
* failover: ``kill -9`` of the active node's whole process group until a
  standby answers 200 on ``sys/health``, polled every 10 ms, over several
  takeovers; the killed node is started again and unsealed as a standby
  before the next one.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.servers import WAIT, Server, ServerError, private_dir, wait_for, write_private

POLL = 0.01
"""How often the standbys' health is asked during a failover (bounds the error)."""


def postgres_available() -> bool:
    """Whether Debian's PostgreSQL server binaries are installed."""
    from tests.postgres_fixtures import find_bindir

    return find_bindir() is not None


class HaNode(Server):
    """One ``vaultd server`` with ``storage "postgresql"`` and ``ha_enabled``."""

    def __init__(self, workdir: Path, logdir: Path, index: int, pg_url: str) -> None:
        self.key = f"ha_node{index}"
        self.name = f"vaultd HA node {index}"
        super().__init__(workdir, logdir)
        self.pg_url = pg_url
        self.bindir = Path(sys.executable).parent
        self.config = self.state / "vaultd.hcl"

    def config_text(self) -> str:
        return (
            f'storage "postgresql" {{\n  connection_url = "{self.pg_url}"\n  ha_enabled = "true"\n}}\n'
            f'listener "tcp" {{\n  address = "127.0.0.1:{self.port}"\n  tls_disable = true\n}}\n'
            f'api_addr = "{self.url}"\n'
            f'cluster_addr = "https://127.0.0.1:{self.port + 1}"\n'
            'disable_mlock = true\nlog_level = "info"\n'
        )

    def start(self) -> None:
        """Launch the daemon and wait until it listens (sealed)."""
        write_private(self.config, self.config_text().encode())
        self.launch_daemon()
        self.wait_listening()

    def wait_listening(self) -> None:
        def listening() -> bool:
            if self.daemon is not None and self.daemon.poll() is not None:
                raise ServerError(f"{self.name} exited with {self.daemon.returncode}; see {self.log_files()[0]}")
            return self.health_code() is not None

        wait_for(listening, f"{self.name} to listen")

    def unseal(self, key: str) -> None:
        self.call("PUT", "sys/unseal", {"key": key})

    def kill(self) -> None:
        """``kill -9`` of the whole process group (master and workers), as a
        machine losing power would; the group is reaped before returning."""
        process, self.daemon = self.daemon, None
        if process is None:
            return
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=WAIT)

    def daemon_command(self) -> list[str]:
        return [str(self.bindir / "vaultd"), "server", "--config", str(self.config)]

    def roots(self) -> list[int]:
        return [self.daemon.pid] if self.daemon is not None and self.daemon.poll() is None else []

    def version(self) -> str:
        from vaultd import __version__

        return __version__


class HaCluster:
    """PostgreSQL and three nodes: start, find the active one, fail over, stop."""

    def __init__(self, workdir: Path, logdir: Path, size: int = 3) -> None:
        self.workdir = private_dir(workdir / "ha")
        self.logdir = logdir
        self.size = size
        self.postgres: Any = None
        self.nodes: list[HaNode] = []
        self.unseal_key = ""
        self.token = ""

    def start(self) -> None:
        """PostgreSQL, a database, three nodes, init on one, unseal all,
        ``secret/`` as KV v2 through the active node.  A PostgreSQL that
        cannot start is a ServerError saying why."""
        import pytest

        from tests.postgres_fixtures import start_cluster

        try:
            self.postgres = start_cluster()
        except pytest.skip.Exception as exc:  # its way of saying "not here"
            raise ServerError(f"no PostgreSQL for the HA part: {exc}") from None
        database = self.postgres.create_database()
        url = self.postgres.url(database)
        self.nodes = [HaNode(self.workdir, self.logdir, index, url) for index in range(self.size)]
        for node in self.nodes:
            node.start()
        init = self.nodes[0].call("PUT", "sys/init", {"secret_shares": 1, "secret_threshold": 1})
        self.unseal_key, self.token = str(init["keys"][0]), str(init["root_token"])
        for node in self.nodes:
            node.unseal(self.unseal_key)
            node.token = self.token
            node._local = threading.local()  # sessions made before had no token
        active = self.wait_active()
        for node in self.nodes:
            if node is not active:
                self.wait_standby(node)
        active.mount_kv2()

    def active(self) -> HaNode | None:
        return next((node for node in self.nodes if node.daemon is not None and node.health_code() == 200), None)

    def wait_active(self, timeout: float = WAIT) -> HaNode:
        found: list[HaNode] = []

        def one() -> bool:
            node = self.active()
            if node is not None:
                found.append(node)
            return node is not None

        wait_for(one, "a node to become active", timeout)
        return found[0]

    def standby(self) -> HaNode:
        active = self.active()
        for node in self.nodes:
            if node is not active and node.health_code() == 429:
                return node
        raise ServerError("no standby node answers 429 on sys/health")

    def wait_standby(self, node: HaNode) -> None:
        """Until the node is an unsealed standby that knows the leader."""

        def ready() -> bool:
            if node.health_code() != 429:
                return False
            leader = node.call("GET", "sys/leader")
            return bool(leader.get("leader_address"))

        wait_for(ready, f"{node.name} to be a standby that knows the active node")

    def failover(self) -> float:
        """Kill the active node; seconds until another answers 200 on
        ``sys/health``.  The killed node comes back, unsealed, as a standby."""
        victim = self.wait_active()
        others = [node for node in self.nodes if node is not victim]
        started = time.perf_counter()
        victim.kill()
        deadline = started + WAIT
        while not any(node.health_code() == 200 for node in others):
            if time.perf_counter() > deadline:
                raise ServerError(f"no standby took over within {WAIT:.0f} s of killing {victim.name}")
            time.sleep(POLL)
        took = time.perf_counter() - started
        victim.launch_daemon()
        victim.wait_listening()
        victim.unseal(self.unseal_key)
        self.wait_standby(victim)
        return took

    def close(self) -> None:
        """Stop the nodes and PostgreSQL, and remove their data."""
        for node in self.nodes:
            node.close()
        if self.postgres is not None:
            try:
                if self.postgres.running():
                    self.postgres.stop("immediate")
            finally:
                shutil.rmtree(self.postgres.root, ignore_errors=True)
        for node in self.nodes:
            shutil.rmtree(node.state, ignore_errors=True)
