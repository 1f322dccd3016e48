"""Resident memory of process trees, read from ``/proc``.

A server is "all of its processes": gunicorn forks workers (and replaces
dead ones), so the set is found afresh at every sample by walking parent
links from the roots rather than fixed once at start.  RSS is what the issue
asks for and what ``ps``/``top`` show; PSS (each shared page divided among
the processes mapping it) is read as well, because forked workers share
their copy-on-write pages and a plain RSS sum counts those once per worker.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Memory:
    """One sample of a process tree, in bytes."""

    rss: int
    pss: int
    processes: int


def _parents() -> dict[int, int]:
    """pid -> ppid for every live process."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                text = stat.read()
        except OSError:  # exited while we looked
            continue
        # comm may hold spaces and parentheses: the fields start after the last ')'.
        fields = text[text.rfind(")") + 2 :].split()
        parents[int(entry)] = int(fields[1])
    return parents


def descendants(roots: Iterable[int]) -> list[int]:
    """The roots that are alive plus all their descendants."""
    parents = _parents()
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found: list[int] = []
    stack = [pid for pid in roots if pid in parents]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, ()))
    return sorted(found)


def _kib_field(path: str, name: str) -> int:
    try:
        with open(path, encoding="ascii") as source:
            for line in source:
                if line.startswith(name):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def measure(roots: Iterable[int]) -> Memory:
    """Sum RSS and PSS over the roots' whole trees."""
    pids = descendants(roots)
    rss = sum(_kib_field(f"/proc/{pid}/status", "VmRSS:") for pid in pids)
    pss = sum(_kib_field(f"/proc/{pid}/smaps_rollup", "Pss:") for pid in pids)
    return Memory(rss=rss, pss=pss, processes=len(pids))


class PeakSampler:
    """Samples a tree every ``interval`` seconds on a thread until stopped,
    keeping the highest RSS and PSS seen (each on its own: they need not
    peak in the same sample).

    Half a second, not less: a sample walks /proc for the tree and reads
    ``smaps_rollup`` of each process, some milliseconds of CPU on the same
    cores as the load, and more for vaultd's four processes than for
    OpenBao's one, so sampling faster would bias scenario 1 against vaultd.
    Resident memory does not move faster than that under a steady load."""

    def __init__(self, roots: Callable[[], list[int]], interval: float = 0.5) -> None:
        self._roots = roots
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-memory", daemon=True)
        self.peak_rss = 0
        self.peak_pss = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            sample = measure(self._roots())
            self.peak_rss = max(self.peak_rss, sample.rss)
            self.peak_pss = max(self.peak_pss, sample.pss)
            self._stop.wait(self._interval)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
