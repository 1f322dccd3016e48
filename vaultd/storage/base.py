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
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Put:
    """One write of a :meth:`Storage.transaction`."""

    key: str
    value: bytes

    def __repr__(self) -> str:  # values are ciphertext or secrets: never shown
        return f"Put({self.key!r}, <{len(self.value)} bytes>)"


@dataclass(frozen=True)
class Delete:
    """One removal of a :meth:`Storage.transaction`."""

    key: str


Op = Put | Delete


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

    def keys(self, prefix: str = "") -> Iterator[str]:
        """Every key under ``prefix``, in order (migration, snapshots, names
        that hold ``/``).  This default walks :meth:`list`, depth first; a
        backend that can do better (one query) overrides it."""
        for child in self.list(prefix):
            if child.endswith("/"):
                yield from self.keys(prefix + child)
            else:
                yield prefix + child

    def transaction(self, ops: Sequence[Op]) -> None:
        """Apply ``ops`` in order, all or nothing (Vault's
        ``physical.Transactional``): one logical change that spans several
        keys (a KV v2 version and its metadata, a token and its accessor)
        must never be half there after a crash.

        This default applies them one by one, which is all a backend without
        transactions (``file``) can do: a crash between two of them leaves
        the first.  Backends that can do better override it.
        """
        for op in ops:
            if isinstance(op, Put):
                self.put(op.key, op.value)
            else:
                self.delete(op.key)


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


def delete_tree(storage: Storage, prefix: str) -> None:
    """Delete every key under ``prefix`` (which ends in ``/``), deepest first."""
    for child in storage.list(prefix):
        if child.endswith("/"):
            delete_tree(storage, prefix + child)
        else:
            storage.delete(prefix + child)


def make_private_dirs(path: str, mode: int = 0o700) -> None:
    """Create the missing directories of ``path``, each ``mode`` whatever the
    umask (``os.makedirs`` gives the parents the umask's mode: 0777 under
    umask 000).  Directories that exist are left as they are: they may be
    shared ones such as ``/var/lib``.  For the disk backends."""
    missing: list[str] = []
    while path and not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, mode)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise
            continue  # made meanwhile by someone else: theirs to mode
        os.chmod(directory, mode)  # mkdir's mode is filtered by the umask

