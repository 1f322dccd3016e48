"""The workers' shared connection counts (``vaultd/httpbalance.py``).

The rule: a worker declines new connections while another live worker
holds :data:`~vaultd.httpbalance.SLACK` or more fewer; the least loaded
never declines.  The real spread over real workers is checked in
``tests/integration/test_workers.py``.
"""

from __future__ import annotations

import os
import struct

import pytest

from vaultd import httpbalance
from vaultd.httpbalance import SLACK, SLOTS, ConnectionShares


def test_a_lone_worker_takes_every_connection() -> None:
    shares = ConnectionShares.create()
    shares.publish(1, 500)
    assert shares.should_take(1, 500)
    assert shares.fewest_elsewhere(1) is None


def test_the_busier_worker_declines_and_the_least_loaded_never_does() -> None:
    shares = ConnectionShares.create()
    shares.publish(1, 10)
    shares.publish(2, 10 + SLACK)
    shares.publish(3, 10 + SLACK - 1)
    assert shares.should_take(1, 10)
    assert not shares.should_take(2, 10 + SLACK)
    assert shares.should_take(3, 10 + SLACK - 1)


def test_counts_written_in_a_child_are_seen_by_its_siblings() -> None:
    """The mapping is shared across fork, as between gunicorn's workers."""
    shares = ConnectionShares.create()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        shares.publish(7, 3)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert status == 0
    assert shares.fewest_elsewhere(8) == 3
    assert not shares.should_take(8, 3 + SLACK)


def test_a_withdrawn_worker_no_longer_counts() -> None:
    shares = ConnectionShares.create()
    shares.publish(1, 0)
    assert not shares.should_take(2, SLACK)
    shares.withdraw(1)
    assert shares.should_take(2, SLACK)


def test_an_entry_not_refreshed_goes_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that died without being reaped yet, or hangs, stops
    counting after STALE seconds, so it cannot hold the others back."""
    shares = ConnectionShares.create()
    shares.publish(1, 0)
    now = httpbalance.time.monotonic()
    monkeypatch.setattr(httpbalance.time, "monotonic", lambda: now + httpbalance.STALE + 0.1)
    assert shares.should_take(2, 100)


def test_a_worker_never_weighs_its_own_entry() -> None:
    """Ages 3 and 3 + SLOTS share a slot; the entry is the latest writer's,
    and a worker skips an entry that carries its own age."""
    shares = ConnectionShares.create()
    shares.publish(3, 0)
    assert shares.should_take(3, 100)
    shares.publish(3 + SLOTS, 1)
    assert shares.fewest_elsewhere(3) == 1
    assert shares.fewest_elsewhere(3 + SLOTS) is None


def test_the_table_holds_every_slot() -> None:
    shares = ConnectionShares.create()
    for age in range(1, SLOTS + 1):
        shares.publish(age, age)
    assert shares.fewest_elsewhere(1) == 2
    assert len(shares._mm) == SLOTS * struct.calcsize("<QQd")
