"""The issue's HA setup end to end: three ``vaultd server`` nodes on one real
PostgreSQL with ``ha_enabled``, the awskms seal (moto's KMS server) and on
each node its own unsealer agent on its own socket.  Initialised once,
through one node, with recovery keys: every node is unsealed by its own
agent with no human, one is active and two are standbys; after a ``kill -9``
of the active node a standby takes over, and the killed node, started
again, is unsealed by its agent and comes back as a standby.

The HA behaviour itself (redirects, fencing, step-down, PostgreSQL
restarts) is tested with Shamir nodes in test_ha_postgresql.py; here the
question is the auto seal on several nodes sharing one store."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.integration.support import Server, ServerFactory, wait_for
from tests.integration.test_autounseal import AGENT_TUNING, WAIT, AgentProcess
from tests.integration.test_ha_postgresql import TAKEOVER_BOUND, active_of, ha_node, health, is_standby
from tests.kms_fixtures import KmsKey


@dataclass
class Node:
    server: Server
    agent: AgentProcess

    def unsealed(self) -> bool:
        try:
            return self.server.seal_status()["sealed"] is False
        except requests.RequestException:
            return False


@pytest.fixture
def nodes(server_factory: ServerFactory, pg_url: str, kms_key: KmsKey, tmp_path: Path) -> Iterator[list[Node]]:
    """Three nodes, started and sealed, each with its agent running."""
    made: list[Node] = []
    try:
        for i in range(3):
            server = ha_node(server_factory, pg_url, f"node{i}")
            # Each node's own socket (its own runtime directory), named in the
            # config that the daemon and its agent both read.
            stanzas = kms_key.seal_hcl() + (
                f'unsealer {{\n  address = "unix://{server.agent_socket}"\n{AGENT_TUNING}}}\n'
                'telemetry {\n  prometheus_retention_time = "1h"\n}\n')
            server.config.write_text(server.config.read_text() + stanzas)
            agent = AgentProcess(server.config, tmp_path / f"agent{i}.log")
            made.append(Node(server, agent))
            server.start()
            agent.start()
        yield made
    finally:
        for node in made:
            node.agent.stop()


def metrics_text(server: Server, token: str) -> str:
    response = requests.get(server.url("sys/metrics?format=prometheus"), headers={"X-Vault-Token": token},
                            timeout=10)
    assert response.status_code == 200, response.text
    return response.text


def test_every_node_is_unsealed_by_its_own_agent_and_fails_over(nodes: list[Node]) -> None:
    servers = [node.server for node in nodes]
    assert not any(node.unsealed() for node in nodes)
    body = servers[0].call("PUT", "sys/init", json_body={"recovery_shares": 1, "recovery_threshold": 1}, timeout=30)
    root = body["root_token"]
    for server in servers:
        server.known_secrets.extend([*body["recovery_keys"], *body["recovery_keys_base64"], root])

    # No human: the node that ran init holds the key; the others' agents
    # find the store initialised and unseal them.
    for node in nodes:
        wait_for(node.unsealed, f"{node.server.addr} to be unsealed by its agent", timeout=WAIT)
    for node in nodes[1:]:
        node.agent.wait_line(r"unsealed the daemon")
    active = wait_for(lambda: active_of(servers), "an active node", timeout=TAKEOVER_BOUND)
    standbys = [s for s in servers if s is not active]
    for standby in standbys:
        wait_for(lambda s=standby: is_standby(s), f"{standby.addr} to be a standby")
        assert standby.call("GET", "sys/leader")["leader_address"] == active.addr

    # The active node's metrics say so (read at scrape time from the shared
    # state; the renewals are counted by the master's HA thread).
    text = metrics_text(active, root)
    assert "vaultd_ha_active 1.0" in text
    assert 'vaultd_ha_role{role="active"} 1.0' in text

    def renewals() -> float:
        found = [line for line in metrics_text(active, root).splitlines()
                 if line.startswith("vaultd_ha_lock_renewals_total ")]
        assert found, "no vaultd_ha_lock_renewals_total series"
        return float(found[0].split()[1])

    # The first renewal comes one renewal period after the node took the lease.
    wait_for(lambda: renewals() > 0, "a lease renewal to be counted", timeout=TAKEOVER_BOUND)
    # A standby answers sys/metrics itself (no redirect), with its own role.
    text = metrics_text(standbys[0], root)
    assert "vaultd_ha_active 0.0" in text
    assert 'vaultd_ha_role{role="standby"} 1.0' in text

    active.call("POST", "sys/mounts/secret", status=204, token=root,
                json_body={"type": "kv", "options": {"version": "2"}})
    standbys[0].call("POST", "secret/data/before", token=root, json_body={"data": {"n": 1}})

    # kill -9 of the active node during a stream of writes, sent to each
    # standby and followed through its 307 as a client would: a standby
    # takes over, and every write that was acknowledged is there.
    acknowledged: list[int] = []
    stop = threading.Event()

    def writer(node: Server, start: int) -> None:
        i = start
        while not stop.is_set():
            i += 2
            try:
                answer = requests.post(node.url(f"secret/data/stream/{i}"), json={"data": {"i": i}},
                                       headers={"X-Vault-Token": root}, timeout=10)
            except requests.RequestException:
                continue
            if answer.status_code == 200:
                acknowledged.append(i)
            time.sleep(0.01)

    threads = [threading.Thread(target=writer, args=(node, n)) for n, node in enumerate(standbys)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(acknowledged) >= 10, "writes before the kill", timeout=WAIT)
        active.kill_tree()
        new_active = wait_for(lambda: active_of(standbys), "a standby to take over", timeout=TAKEOVER_BOUND,
                              interval=0.1)
        count = len(acknowledged)
        wait_for(lambda: len(acknowledged) >= count + 5, "writes after the takeover", timeout=WAIT)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert new_active.call("GET", "secret/data/before", token=root)["data"]["data"] == {"n": 1}
    for i in acknowledged:
        assert new_active.call("GET", f"secret/data/stream/{i}", token=root)["data"]["data"] == {"i": i}

    # Started again, the killed node is unsealed by its (still running) agent
    # and follows the new active node.
    killed = next(node for node in nodes if node.server is active)
    active.start()
    wait_for(killed.unsealed, "the restarted node to be unsealed by its agent", timeout=WAIT)
    wait_for(lambda: is_standby(active), "the restarted node to come back as a standby")
    assert active.call("GET", "sys/leader")["leader_address"] == new_active.addr
    assert health(active) == 429
    assert "vaultd_ha_active 1.0" in metrics_text(new_active, root)
    for node in nodes:
        assert node.agent.process is not None and node.agent.process.poll() is None, node.agent.text()
        log = node.server.log_text() + node.agent.text()
        assert root not in log
        assert body["recovery_keys"][0] not in log
