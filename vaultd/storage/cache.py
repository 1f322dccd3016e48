"""A read cache over a backend that other processes write too.

Every gunicorn worker reads the same files; most reads (a token, a secret's
metadata) return what the last read returned.  This keeps the stored bytes,
which above the physical backend are ciphertext, so the cache holds nothing
the disk does not.  It stays exact across processes through a shared table
of version counters: a writer bumps the counter of the key's slot *after*
its write, a reader notes the counter *before* its read, and a cached value
is served only while its slot's counter is unchanged.  A stale counter can
therefore only cause an extra read, never a stale value.  A worker also
keeps what it writes (write-through, as Vault's cache), when the slot shows
that no other write completed in between (:meth:`CachedStorage.transaction`).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, Protocol, TypeVar

from vaultd.storage.base import Delete, Op, Put, Storage

T = TypeVar("T")


class SlotVersions(Protocol):
    """Shared per-slot counters (see :class:`vaultd.core.seal_state.SharedSealState`)."""

    def key_version(self, key: str) -> int: ...

    def bump_key_version(self, key: str) -> None: ...

    def bump_key_version_if_unchanged(self, key: str, seen: int) -> int | None: ...


CACHE_ENTRIES = 24576
"""Values a worker keeps the ciphertext of: about 8 MiB when full (0.34 KiB
an entry measured at typical sizes), enough for some 12,000 KV v2 secrets
(two keys each) read at random without a trip to the storage backend.
Vault's own cache holds 131,072 entries by default.  It was 4,096 while a
worker that served ``sys/init`` under awskms kept the AWS SDK (about 20 MiB)
for good; now that such a worker is replaced, the memory went here."""
MEMO_ENTRIES = 256
"""Decoded values each memo keeps (a parsed KV v2 metadata record is about
2 KiB).  Hot secrets and tokens fit many times over; a working set larger
than this is served from the ciphertext cache and decrypted again.  It was
1,024: on 10,000 secrets read at random that hit 10% of the time instead of
2.5%, which the throughput did not show, for about 2 MiB more per worker."""


def _evict_oldest(table: OrderedDict[str, Any]) -> None:
    """Drop the entry inserted first.  Cheaper than LRU bookkeeping on every
    hit, and unlike emptying the table it keeps most of a skewed working set.

    An OrderedDict, not a dict: deleting a plain dict's first entry over and
    over leaves a run of dead slots at its front that every later
    ``next(iter(...))`` walks again, which made each cache miss cost about
    5 µs more once the working set outgrew the table (10,000 secrets read at
    random); ``popitem(last=False)`` is O(1)."""
    try:
        table.popitem(last=False)
    except KeyError:  # emptied by another thread
        pass


class CachedStorage(Storage):
    def __init__(self, inner: Storage, versions: SlotVersions, *, max_entries: int = CACHE_ENTRIES) -> None:
        self.inner = inner
        self.versions = versions
        self.max_entries = max_entries
        self._cache: OrderedDict[str, tuple[int, bytes | None]] = OrderedDict()

    def get(self, key: str) -> bytes | None:
        version = self.versions.key_version(key)
        hit = self._cache.get(key)
        if hit is not None and hit[0] == version:
            return hit[1]
        value = self.inner.get(key)
        if len(self._cache) >= self.max_entries:
            _evict_oldest(self._cache)
        self._cache[key] = (version, value)
        return value

    def put(self, key: str, value: bytes) -> None:
        self.transaction([Put(key, value)])

    def delete(self, key: str) -> None:
        self.transaction([Delete(key)])

    def transaction(self, ops: Sequence[Op]) -> None:
        """Write-through, as Vault's cache: what this worker wrote is what
        its next read returns without a trip to the backend, when no other
        write to the key's slot completed between the look before the write
        and the bump after it (see
        :meth:`~vaultd.core.seal_state.SharedSealState.bump_key_version_if_unchanged`).
        Otherwise, and for keys of one transaction that share a slot, the
        next read goes to the backend."""
        for op in ops:
            self._cache.pop(op.key, None)
        seen = [self.versions.key_version(op.key) for op in ops]
        try:
            if len(ops) == 1:
                op = ops[0]
                if isinstance(op, Put):
                    self.inner.put(op.key, op.value)
                else:
                    self.inner.delete(op.key)
            else:
                self.inner.transaction(ops)
        except BaseException:
            for op in ops:
                self.versions.bump_key_version(op.key)
            raise
        for op, before in zip(ops, seen, strict=True):
            version = self.versions.bump_key_version_if_unchanged(op.key, before)
            if version is not None:
                if len(self._cache) >= self.max_entries:
                    _evict_oldest(self._cache)
                self._cache[op.key] = (version, op.value if isinstance(op, Put) else None)

    def list(self, prefix: str) -> list[str]:
        return self.inner.list(prefix)

    def keys(self, prefix: str = "") -> Iterator[str]:
        return self.inner.keys(prefix)

    def lock(self, name: str = "") -> contextlib.AbstractContextManager[None]:
        return self.inner.lock(name)

    def clear(self) -> None:
        self._cache.clear()


class DecodeMemo(Generic[T]):
    """What a stored value decodes to, remembered while it is the same value.

    A layer above :class:`CachedStorage` (the barrier decrypting, the token
    store and KV engine parsing JSON) gets the *same* bytes object back for
    as long as the key's slot is unchanged, and a new object once anyone
    writes.  Keying the decoded value on that object's identity (the memo
    holds a reference, so the identity cannot be reused) therefore makes the
    memo exactly as fresh as the cache below it, with nothing to invalidate
    across workers.  What it holds can be plaintext: owners clear it when the
    server seals (see ``Barrier.seal`` and ``Core.drop_caches``), and callers
    must not mutate what :meth:`get` returns.
    """

    def __init__(self, *, max_entries: int = MEMO_ENTRIES) -> None:
        self.max_entries = max_entries
        self._memo: OrderedDict[str, tuple[bytes, T]] = OrderedDict()

    def get(self, key: str, raw: bytes, decode: Callable[[bytes], T]) -> T:
        hit = self._memo.get(key)
        if hit is not None and hit[0] is raw:
            return hit[1]
        value = decode(raw)
        if len(self._memo) >= self.max_entries:
            _evict_oldest(self._memo)
        self._memo[key] = (raw, value)
        return value

    def clear(self) -> None:
        self._memo.clear()
