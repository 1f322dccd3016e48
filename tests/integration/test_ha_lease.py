"""The HA lease row and the write fence on a real PostgreSQL, without HTTP:
one holder at a time, takeover only after expiry, a write by a node whose
lease is gone refused inside the database, and the HA thread's turns
(active, standby following the leader, step-down) through the shared state."""

from __future__ import annotations

import time

import pytest

from tests.postgres_fixtures import PostgresCluster
from vaultd.core.ha import HAManager, new_identity
from vaultd.core.seal_state import EPOCH_HA, HA_OFF, HA_STANDBY, SharedSealState
from vaultd.errors import StorageError
from vaultd.storage.pg_halock import DEFAULT_HA_TABLE, LeaseLock
from vaultd.storage.postgresql import PostgresStorage, connection_string

TTL = 1.0


def lease(url: str, ttl: float = TTL) -> LeaseLock:
    lock = LeaseLock(connection_string(url), DEFAULT_HA_TABLE, new_identity(), ttl)
    lock.create_table()
    return lock


def unsealed_state() -> SharedSealState:
    shared = SharedSealState.create(lock_memory=False)
    with shared.locked():
        shared.mark_unsealed(bytes(32))
    return shared


def test_one_holder_until_expiry_and_writes_fenced(pg_url: str, postgres: PostgresCluster) -> None:
    a, b = lease(pg_url), lease(pg_url)
    assert a.try_acquire('{"api_addr": "http://a"}')
    assert not b.try_acquire("{}")
    assert b.holder() == (a.identity, '{"api_addr": "http://a"}')
    assert a.renew()

    storage = PostgresStorage(pg_url)
    storage.fence(DEFAULT_HA_TABLE, a.identity, lambda: True)
    storage.put("k/held", b"1")
    assert storage.get("k/held") == b"1"

    time.sleep(TTL + 0.3)  # a stops renewing: its lease lapses
    with pytest.raises(StorageError, match="does not hold the HA lock"):
        storage.put("k/lapsed", b"2")
    assert b.try_acquire("{}")
    assert not a.renew()
    with pytest.raises(StorageError, match="does not hold the HA lock"):
        storage.delete("k/held")
    assert storage.get("k/held") == b"1" and storage.get("k/lapsed") is None
    # Unfenced (sealed node, init): writes go through.
    storage.fence(DEFAULT_HA_TABLE, a.identity, lambda: False)
    storage.put("k/unfenced", b"3")
    b.release()
    assert a.holder() is None
    storage.close()
    a.close()
    b.close()


def test_ha_manager_turns(pg_url: str, postgres: PostgresCluster) -> None:
    one, two = unsealed_state(), unsealed_state()
    first = HAManager(lease(pg_url, 2.0), one, api_addr="http://one", cluster_addr="https://one", ttl=2.0)
    second = HAManager(lease(pg_url, 2.0), two, api_addr="http://two", cluster_addr="https://two", ttl=2.0)
    epoch = one.epoch(EPOCH_HA)
    first.step()
    assert one.ha().active(time.monotonic()) and one.epoch(EPOCH_HA) == epoch + 1
    second.step()
    state = two.ha()
    assert state.role == HA_STANDBY and state.api_addr == "http://one" and state.cluster_addr == "https://one"
    assert not state.active(time.monotonic())

    one.request_step_down()
    first.step()
    assert one.ha().role == HA_STANDBY
    second.step()
    assert two.ha().active(time.monotonic())
    first.step()  # held off for a while after its step-down; follows the new leader
    assert one.ha().role == HA_STANDBY and one.ha().api_addr == "http://two"

    # A seal ends the role and gives the lease up at once.
    with two.locked():
        two.mark_sealed(by_operator=True)
    second.step()
    assert two.ha().role == HA_OFF
    assert first.lease.holder() is None
