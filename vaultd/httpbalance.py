"""Open connections per worker, so that the workers share the clients.

Every worker listens on the same inherited socket, and whichever wakes first
takes a new connection.  A burst of connections (a load balancer's pool, an
agent fleet reconnecting, a benchmark's 64) came in faster than the kernel
woke the second worker, so one worker could take nearly all of them while
the other sat idle: on 2 cores, half the capacity for as long as those
keep-alive connections lasted.  Measured with 64 connections opened at once
on 2 workers: splits from 32/32 to 62/2, and KV reads at either about 3,500
or about 1,700 requests a second depending on the split.

Here each worker publishes how many connections it holds, in an anonymous
shared mapping the master makes before it forks, and declines new ones
while another live worker holds :data:`SLACK` or more fewer than it does.
The worker with the fewest never declines, so a connection always has a
taker.  A torn or stale entry can only skew one decision, never stop the
accepting: entries not refreshed for :data:`STALE` seconds (a worker that
died or hangs) are ignored.
"""

from __future__ import annotations

import mmap
import struct
import time

SLOTS = 64
"""Entries, indexed by gunicorn's worker age: two live workers share one only
if 64 workers were started while one of them lived, and then they only
misjudge each other's load."""
SLACK = 2
"""Connections a worker may hold beyond the least loaded one before it
declines new ones."""
STALE = 1.0
"""Each worker refreshes its entry at least every 0.25 s; the master also
withdraws a worker's entry as soon as it reaps it."""
_ENTRY = struct.Struct("<QQd")
"""age, open connections, CLOCK_MONOTONIC time of the entry (the same in
every process of the machine)."""


class ConnectionShares:
    """The table; one per master, inherited by every worker."""

    def __init__(self, region: mmap.mmap) -> None:
        self._mm = region

    @classmethod
    def create(cls) -> ConnectionShares:
        """Before the fork: an anonymous ``MAP_SHARED`` mapping."""
        return cls(mmap.mmap(-1, SLOTS * _ENTRY.size))

    def publish(self, age: int, connections: int) -> None:
        _ENTRY.pack_into(self._mm, (age % SLOTS) * _ENTRY.size, age, connections, time.monotonic())

    def fewest_elsewhere(self, age: int) -> int | None:
        """The fewest connections any other live worker holds; None when no
        other worker is known to be live."""
        fresh = time.monotonic() - STALE
        fewest: int | None = None
        for other, connections, stamp in _ENTRY.iter_unpack(self._mm):
            if other != age and other and stamp >= fresh and (fewest is None or connections < fewest):
                fewest = connections
        return fewest

    def should_take(self, age: int, connections: int) -> bool:
        """Whether a worker holding ``connections`` takes another."""
        fewest = self.fewest_elsewhere(age)
        return fewest is None or connections < fewest + SLACK

    def withdraw(self, age: int) -> None:
        """A worker stopping: no longer counted as a taker."""
        _ENTRY.pack_into(self._mm, (age % SLOTS) * _ENTRY.size, 0, 0, 0.0)
