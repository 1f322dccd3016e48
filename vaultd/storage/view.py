"""A storage that is a prefix of another one.

Engines get a view of the barrier under their mount's prefix and nothing
else: the view checks every key itself (rather than trusting the backend
underneath, which may be the permissive in-memory one), so no key an engine
can form, ``..`` included, reaches outside the prefix.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence

from vaultd.storage.base import Delete, Op, Put, Storage
from vaultd.storage.keys import split_key, split_prefix


@functools.lru_cache(maxsize=65536)
def _checked(key: str) -> str:
    """``key`` once it passed :func:`split_key`.  Remembered because every
    read of a token or a secret checks two or three keys, and the check was
    a tenth of a read's cost; keys that fail raise and are not remembered."""
    split_key(key)
    return key


class StorageView(Storage):
    def __init__(self, inner: Storage, prefix: str) -> None:
        if not prefix:
            raise ValueError("a storage view needs a non-empty prefix")
        split_prefix(prefix)
        self._inner = inner
        self._prefix = prefix

    def __repr__(self) -> str:
        return f"StorageView({self._inner!r}, {self._prefix!r})"

    @property
    def prefix(self) -> str:
        return self._prefix

    def _key(self, key: str) -> str:
        if not isinstance(key, str):
            raise TypeError("storage key must be a string")
        return self._prefix + _checked(key)

    def get(self, key: str) -> bytes | None:
        return self._inner.get(self._key(key))

    def put(self, key: str, value: bytes) -> None:
        self._inner.put(self._key(key), value)

    def delete(self, key: str) -> None:
        self._inner.delete(self._key(key))

    def transaction(self, ops: Sequence[Op]) -> None:
        self._inner.transaction(
            [Put(self._key(op.key), op.value) if isinstance(op, Put) else Delete(self._key(op.key)) for op in ops]
        )

    def keys(self, prefix: str = "") -> Iterator[str]:
        split_prefix(prefix)
        start = len(self._prefix)
        return (key[start:] for key in self._inner.keys(self._prefix + prefix))

    def list(self, prefix: str) -> list[str]:
        split_prefix(prefix)
        return self._inner.list(self._prefix + prefix)

    def lock(self, name: str = "") -> contextlib.AbstractContextManager[None]:
        """Prefixed like keys, so views of different mounts never contend;
        a view's ``lock("")`` is its whole prefix, not the whole storage."""
        return self._inner.lock(self._prefix + name)
