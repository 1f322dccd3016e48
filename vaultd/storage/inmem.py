"""Process-local in-memory storage, for dev mode and tests.

It is not shared between gunicorn workers, so the server runs one worker
when it is configured (dev mode does).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence

from vaultd.storage.base import Op, Put, Storage, split_children


class InmemStorage(Storage):
    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}
        self._guard = threading.Lock()
        self._rmw = threading.RLock()

    def get(self, key: str) -> bytes | None:
        with self._guard:
            return self._data.get(key)

    def put(self, key: str, value: bytes) -> None:
        with self._guard:
            self._data[key] = bytes(value)

    def delete(self, key: str) -> None:
        with self._guard:
            self._data.pop(key, None)

    def transaction(self, ops: Sequence[Op]) -> None:
        with self._guard:
            for op in ops:
                if isinstance(op, Put):
                    self._data[op.key] = bytes(op.value)
                else:
                    self._data.pop(op.key, None)

    def list(self, prefix: str) -> list[str]:
        with self._guard:
            keys = list(self._data)
        return split_children(keys, prefix)

    @contextlib.contextmanager
    def lock(self, name: str = "") -> Iterator[None]:
        with self._rmw:
            yield
