"""The HA series of sys/metrics: the role read at scrape time from the shared
seal state (so it is the role the node answers with, deadline included),
and the master's renewal and lost-lease counts, kept in the shared state
because the master counts nothing in prometheus_client's files."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.test_ha_standby import LEADER_ID, unsealed_ha_core
from vaultd import metrics
from vaultd.api.app import create_app
from vaultd.api.sys_metrics import ACCESS_CONFIG_KEY, MetricsAccess
from vaultd.core.core import Core
from vaultd.core.seal_state import HA_ACTIVE, HA_STANDBY, SharedSealState


@pytest.fixture(autouse=True)
def single_process() -> Iterator[None]:
    metrics.use_directory(None)
    yield
    metrics.use_directory(None)


def scrape(core: Core, token: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    app = create_app(core)
    app.config[ACCESS_CONFIG_KEY] = MetricsAccess(prometheus=True)
    response = app.test_client().get("/v1/sys/metrics?format=prometheus", headers={"X-Vault-Token": token})
    assert response.status_code == 200, response.get_data(as_text=True)
    families: list[Any] = list(text_string_to_metric_families(response.get_data(as_text=True)))
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples
            if s.name.startswith("vaultd_ha_")}


def _count_in_child(shared: SharedSealState) -> None:
    shared.count_ha(renewals=1)
    shared.count_ha(renewals=1)
    shared.count_ha(lost=1)


def test_role_and_counts_are_read_from_the_shared_state() -> None:
    core, shared, root = unsealed_ha_core()
    shared.set_ha(HA_ACTIVE, since=time.time(), deadline=time.monotonic() + 60, leader=LEADER_ID,
                  api_addr="http://10.0.0.1:8200")
    # The HA thread runs in the master, the scrape in a worker: counts made
    # in another process are seen.
    child = multiprocessing.get_context("fork").Process(target=_count_in_child, args=(shared,))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    got = scrape(core, root)
    assert got[("vaultd_ha_active", ())] == 1.0
    assert got[("vaultd_ha_role", (("role", "active"),))] == 1.0
    assert got[("vaultd_ha_role", (("role", "standby"),))] == 0.0
    assert got[("vaultd_ha_lock_renewals_total", ())] == 2.0
    assert got[("vaultd_ha_lock_lost_total", ())] == 1.0

    # Past the lease deadline the node is not active, whatever the role says.
    shared.set_ha(HA_ACTIVE, since=time.time(), deadline=time.monotonic() - 1, leader=LEADER_ID)
    got = scrape(core, root)
    assert got[("vaultd_ha_active", ())] == 0.0
    assert got[("vaultd_ha_role", (("role", "standby"),))] == 1.0


def test_the_json_summary_has_the_ha_gauges_and_counters() -> None:
    shared = SharedSealState.create(lock_memory=False)
    shared.set_ha(HA_ACTIVE, since=time.time(), deadline=time.monotonic() + 60, leader=LEADER_ID)
    shared.count_ha(renewals=5)
    families = metrics.scrape(lambda: metrics.ha_gauges("standby", renewals=5, lost=0))
    summary = metrics.json_summary(families)
    gauges = {(g["Name"], tuple(g["Labels"].items())): g["Value"] for g in summary["Gauges"]}
    assert gauges[("vaultd.ha.active", ())] == 0.0
    assert gauges[("vaultd.ha.role", (("role", "standby"),))] == 1.0
    counters = {c["Name"]: c["Count"] for c in summary["Counters"]}
    assert counters["vaultd.ha.lock.renewals"] == 5
    shared.set_ha(HA_STANDBY, leader=LEADER_ID, api_addr="http://10.0.0.1:8200")
    assert shared.ha_counts() == (5, 0)  # a role change keeps the counts


def test_no_ha_series_without_ha() -> None:
    from vaultd.api.sys_metrics import gauges
    from vaultd.core.core import CoreSettings
    from vaultd.core.lifecycle import InitRequest
    from vaultd.storage.inmem import InmemStorage

    core = Core(InmemStorage(), SharedSealState.create(lock_memory=False), CoreSettings())
    core.init(InitRequest(secret_shares=1, secret_threshold=1))
    assert not [g for g in gauges(core) if g.name.startswith("vaultd_ha_")]
