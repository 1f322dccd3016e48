"""A read cache over a backend that other processes write too.

Every gunicorn worker reads the same files; most reads (a token, a secret's
metadata) return what the last read returned.  This keeps the stored bytes,
which above the physical backend are ciphertext, so the cache holds nothing
the disk does not.  It stays exact across processes through a shared table
of version counters: a writer bumps the counter of the key's slot *after*
its write, a reader notes the counter *before* its read, and a cached value
is served only while its slot's counter is unchanged.  A stale counter can
therefore only cause an extra read, never a stale value.
"""

from __future__ import annotations

import contextlib
from typing import Protocol

from vaultd.storage.base import Storage


class SlotVersions(Protocol):
    """Shared per-slot counters (see :class:`vaultd.core.seal_state.SharedSealState`)."""

    def key_version(self, key: str) -> int: ...

    def bump_key_version(self, key: str) -> None: ...


class CachedStorage(Storage):
    def __init__(self, inner: Storage, versions: SlotVersions, *, max_entries: int = 20000) -> None:
        self.inner = inner
        self.versions = versions
        self.max_entries = max_entries
        self._cache: dict[str, tuple[int, bytes | None]] = {}

    def get(self, key: str) -> bytes | None:
        version = self.versions.key_version(key)
        hit = self._cache.get(key)
        if hit is not None and hit[0] == version:
            return hit[1]
        value = self.inner.get(key)
        if len(self._cache) >= self.max_entries:
            self._cache.clear()
        self._cache[key] = (version, value)
        return value

    def put(self, key: str, value: bytes) -> None:
        self._cache.pop(key, None)
        try:
            self.inner.put(key, value)
        finally:
            self.versions.bump_key_version(key)

    def delete(self, key: str) -> None:
        self._cache.pop(key, None)
        try:
            self.inner.delete(key)
        finally:
            self.versions.bump_key_version(key)

    def list(self, prefix: str) -> list[str]:
        return self.inner.list(prefix)

    def lock(self, name: str = "") -> contextlib.AbstractContextManager[None]:
        return self.inner.lock(name)

    def clear(self) -> None:
        self._cache.clear()
