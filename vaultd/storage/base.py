"""The one storage interface every backend implements.

Values are opaque bytes; above the physical backends they are ciphertext
written by the barrier, which implements this same interface so an engine
cannot tell whether it talks to a disk or to the barrier over one.

Keys are ``/``-separated paths without a leading slash.  ``list(prefix)``
follows Vault: it returns the direct children under ``prefix``, with a
trailing ``/`` on those that are "folders", sorted.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator


class Storage(abc.ABC):
    @abc.abstractmethod
    def get(self, key: str) -> bytes | None:
        """The value at ``key``, or ``None`` when there is none."""

    @abc.abstractmethod
    def put(self, key: str, value: bytes) -> None:
        """Store ``value``; durable when this returns (for durable backends)."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; deleting a missing key is not an error."""

    @abc.abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Direct children of ``prefix`` (which ends in ``/`` or is empty)."""

    @abc.abstractmethod
    def lock(self, name: str = "") -> contextlib.AbstractContextManager[None]:
        """An exclusive lock held across threads *and* processes.

        Read-modify-write sequences (KV v2 versions, check-and-set, init) run
        inside it so that two gunicorn workers never lose each other's update.
        ``name`` narrows the lock (e.g. to one secret's path) where the backend
        can; a backend may always take a coarser lock.
        """


def split_children(keys: Iterator[str] | list[str], prefix: str) -> list[str]:
    """Reduce full keys under ``prefix`` to Vault-style direct children."""
    out: set[str] = set()
    for key in keys:
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):]
        if not rest:
            continue
        head, sep, _ = rest.partition("/")
        out.add(head + sep)
    return sorted(out)
