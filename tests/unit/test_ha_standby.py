"""What a standby shows, with the shared state set as the master's HA thread
sets it: READY=1 and its STATUS= line, the 307 to the active node (same path
and query) for everything but the node's own endpoints, health 429 /
standbyok, sys/leader, the 503 while no node is active or the lease deadline
passed, and the ``status`` rows of the CLI."""

from __future__ import annotations

import socket
import time

from tests.unit.test_notifier import Clock, notifier_for, received, systemd_socket  # noqa: F401 - fixture
from vaultd.api.app import create_app
from vaultd.cli.operator import seal_status_rows
from vaultd.core.core import Core, CoreSettings
from vaultd.core.lifecycle import InitRequest
from vaultd.core.seal_state import HA_ACTIVE, HA_STANDBY, SharedSealState
from vaultd.storage.inmem import InmemStorage

ACTIVE = "http://10.0.0.2:8200"
LEADER_ID = "0123456789abcdef0123456789abcdef"


def unsealed_ha_core() -> tuple[Core, SharedSealState, str]:
    shared = SharedSealState.create(lock_memory=False)
    core = Core(InmemStorage(), shared, CoreSettings(ha_enabled=True))
    result = core.init(InitRequest(secret_shares=1, secret_threshold=1))
    core.lifecycle.submit_share(bytes.fromhex(result["keys"][0]))
    return core, shared, result["root_token"]


def test_standby_is_ready_with_its_status(systemd_socket: socket.socket) -> None:  # noqa: F811
    core, shared, _ = unsealed_ha_core()
    notifier = notifier_for(core, shared, Clock())
    notifier.ha_enabled = True
    shared.set_ha(HA_STANDBY, leader=LEADER_ID, api_addr=ACTIVE)
    notifier.poll_once()
    assert received(systemd_socket) == [f"READY=1\nSTATUS=unsealed, standby (active: {ACTIVE})"]
    shared.set_ha(HA_ACTIVE, since=time.time(), deadline=time.monotonic() + 60, leader=LEADER_ID,
                  api_addr="http://10.0.0.1:8200")
    notifier.poll_once()
    assert received(systemd_socket) == ["STATUS=unsealed, active, 4 workers"]


def test_standby_redirects_and_answers_for_itself() -> None:
    core, shared, root = unsealed_ha_core()
    client = create_app(core).test_client()
    shared.set_ha(HA_STANDBY, leader=LEADER_ID, api_addr=ACTIVE, cluster_addr="https://10.0.0.2:8201")

    moved = client.put("/v1/secret/data/a%20b?version=2", json={"data": {"x": 1}}, headers={"X-Vault-Token": root})
    assert moved.status_code == 307
    assert moved.headers["Location"] == f"{ACTIVE}/v1/secret/data/a%20b?version=2"
    assert client.get("/v1/sys/health").status_code == 429
    ok = client.get("/v1/sys/health?standbyok=true")
    assert ok.status_code == 200 and ok.get_json()["standby"] is True
    assert client.get("/v1/sys/seal-status").get_json()["sealed"] is False
    assert client.get("/v1/sys/leader").get_json() == {
        "ha_enabled": True, "is_self": False, "active_time": "0001-01-01T00:00:00Z", "leader_address": ACTIVE,
        "leader_cluster_address": "https://10.0.0.2:8201", "performance_standby": False,
        "performance_standby_last_remote_wal": 0}

    # No active node known: nobody to send the client to.
    shared.set_ha(HA_STANDBY)
    assert client.get("/v1/sys/mounts", headers={"X-Vault-Token": root}).status_code == 503

    # Active: served here; past its lease deadline (fenced): 503, health 429.
    shared.set_ha(HA_ACTIVE, since=time.time(), deadline=time.monotonic() + 60, leader=LEADER_ID,
                  api_addr="http://10.0.0.1:8200")
    assert client.get("/v1/sys/mounts", headers={"X-Vault-Token": root}).status_code == 200
    assert client.get("/v1/sys/leader").get_json()["is_self"] is True
    assert client.put("/v1/sys/step-down").status_code == 403
    before = shared.ha().step_downs
    assert client.put("/v1/sys/step-down", headers={"X-Vault-Token": root}).status_code == 204
    assert shared.ha().step_downs == before + 1
    shared.set_ha(HA_ACTIVE, since=time.time(), deadline=time.monotonic() - 1, leader=LEADER_ID,
                  api_addr="http://10.0.0.1:8200")
    assert client.get("/v1/sys/mounts", headers={"X-Vault-Token": root}).status_code == 503
    assert client.get("/v1/sys/health").status_code == 429


def test_status_rows_show_the_ha_mode() -> None:
    status = {"type": "shamir", "initialized": True, "sealed": False, "n": 1, "t": 1, "version": "x"}
    standby = dict(seal_status_rows(status, True, {"is_self": False, "leader_address": ACTIVE,
                                                   "leader_cluster_address": "https://10.0.0.2:8201"}))
    assert standby["HA Mode"] == "standby" and standby["Active Node Address"] == ACTIVE
    assert standby["HA Cluster"] == "https://10.0.0.2:8201"
    active = dict(seal_status_rows(status, True, {"is_self": True, "active_time": "2026-01-01T00:00:00Z"}))
    assert active["HA Mode"] == "active" and active["Active Since"] == "2026-01-01T00:00:00Z"
    assert "HA Mode" not in dict(seal_status_rows(status, False, {"ha_enabled": False}))
