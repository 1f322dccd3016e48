"""Observing a request or storage histogram child cheaply (see :func:`series_of`).

Apart from :mod:`vaultd.metrics` because it leans on prometheus_client's
internals, which are kept to this one place, each with the public method
to fall back on.
"""

from __future__ import annotations

import os
import struct
import threading
from bisect import bisect_left
from collections.abc import Callable
from typing import Any, Protocol


class Series(Protocol):
    """One histogram child, as :class:`~vaultd.metrics.Instruments` observes it."""

    def observe(self, seconds: float) -> None: ...


def series_of(histogram: Any) -> Series:
    """The cheapest way this prometheus_client lets us observe ``histogram``
    (a child, labels applied) that still writes what ``observe`` would.

    prometheus_client's ``observe`` checks observability and exemplars on
    every call and walks the buckets in a loop, which doubled the cost of
    counting a request: :class:`_Values` goes to the value objects instead.
    In multiprocess mode each value object's ``inc`` takes the library's
    lock, asks the kernel for the pid (to notice a fork) and goes through
    three Python calls to write 8 or 16 bytes; two of them per request were
    most of the request middleware's cost: :class:`_Mapped` writes the same
    bytes itself.  The internals used are the same in bookworm's 0.16 and in
    0.26; without them, the public method."""
    try:
        bounds = list(histogram._upper_bounds)
        sum_value, buckets = histogram._sum, list(histogram._buckets)
    except AttributeError:
        return histogram  # type: ignore[no-any-return]  # the public method
    if getattr(sum_value, "_multiprocess", False):
        mapped = _Mapped.of(bounds, sum_value, buckets)
        if mapped is not None:
            return mapped
    return _Values(bounds, sum_value.inc, [bucket.inc for bucket in buckets])


class _Values:
    __slots__ = ("bounds", "buckets", "total")

    def __init__(self, bounds: list[float], total: Callable[[float], None],
                 buckets: list[Callable[[float], None]]) -> None:
        self.bounds = bounds
        self.total = total
        self.buckets = buckets

    def observe(self, seconds: float) -> None:
        self.total(seconds)
        self.buckets[bisect_left(self.bounds, seconds)](1)


_pack_double = struct.Struct("d").pack
_unpack_double = struct.Struct("d").unpack_from


class _Mapped:
    """A histogram child's sum and buckets written straight into this
    worker's mmap'd file, where prometheus_client's ``MmapedValue.inc``
    would have written them: same file, same offsets, same 8-byte double
    (0.16's entry is the value; 0.26's is the value then a timestamp that
    ``inc`` always leaves at 0.0, so the 8 bytes ``inc`` changes are the
    same too).

    Safe because, and only while:

    - nothing else writes these entries: the children are
      :class:`~vaultd.metrics.Instruments`' own, observed only through
      :func:`series_of`; the running totals are kept on the value objects
      (``_value``, where ``inc`` keeps them), so the library reads, and
      would go on from, the true count;
    - every write of them holds :data:`_write_lock`.  Other entries of the
      same file are written under the library's lock; a new entry may make
      the library map the grown file afresh (``MmapedDict._m``): a write
      through the mapping read just before still lands in the file (both
      map it shared), and the offsets of existing entries never move;
    - the process is the one that made them: the library notices a fork by
      asking the kernel for the pid on every write; here a fork hook
      (``vaultd.metrics._forget_after_fork``) drops the parent's
      instruments in the child instead, and the library files the child's
      new ones under the child's pid.

    No ``memoryview`` of the mapping is kept (cheaper writes): the library
    closes its files in a forked child, and an export left alive there (by a
    thread that was writing at the fork) would make that raise.
    """

    __slots__ = ("bounds", "buckets", "file", "lock", "sum", "sum_at", "where")

    def __init__(self, bounds: list[float], file: Any, lock: threading.Lock, sum_value: Any, sum_at: slice,
                 buckets: list[Any], where: list[slice]) -> None:
        self.bounds = bounds
        self.file = file
        self.lock = lock
        self.sum = sum_value
        self.sum_at = sum_at
        self.buckets = buckets
        self.where = where

    @classmethod
    def of(cls, bounds: list[float], sum_value: Any, buckets: list[Any]) -> _Mapped | None:
        """The writer for these value objects, or None if this
        prometheus_client's internals are not the ones described above."""
        try:
            file = sum_value._file
            positions = file._positions
            values = [sum_value, *buckets]
            if len(buckets) != len(bounds) or any(
                    value._file is not file or not isinstance(value._value, float) for value in values):
                return None
            offsets = [positions[value._key] for value in values]
            mapped = file._m
            # The file holds what the value objects hold, at these offsets.
            if any(_unpack_double(mapped, at)[0] != value._value for at, value in zip(offsets, values, strict=True)):
                return None
        except (AttributeError, KeyError, TypeError, ValueError, struct.error):
            return None
        where = [slice(at, at + 8) for at in offsets]
        return cls(bounds, file, _write_lock, sum_value, where[0], buckets, where[1:])

    def observe(self, seconds: float) -> None:
        index = bisect_left(self.bounds, seconds)
        bucket = self.buckets[index]
        total = self.sum
        lock = self.lock
        lock.acquire()
        try:
            mapped = self.file._m
            total._value = value = total._value + seconds
            mapped[self.sum_at] = _pack_double(value)
            bucket._value = value = bucket._value + 1.0
            mapped[self.where[index]] = _pack_double(value)
        finally:
            lock.release()


_write_lock = threading.Lock()
"""Held by every :class:`_Mapped` write (see there)."""


def _new_lock_after_fork() -> None:
    """Another thread of the parent may have held the lock at the fork."""
    global _write_lock
    _write_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_after_fork)
