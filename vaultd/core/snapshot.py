"""Online snapshots: ``sys/storage/raft/snapshot`` (Vault's path and shape).

A snapshot is one SQLite database file with the same table as the
``sqlite`` backend (``kv(key, value)``) plus a small ``vaultd_snapshot``
table naming the format.  The values are what storage holds: the barrier's
ciphertext, the keyring encrypted by the root key, the root key encrypted
by the unseal key (and, for auto-unseal, the KMS-wrapped unseal key).  A
snapshot therefore gives nothing away without the unseal (or recovery)
keys or the KMS key, and is restorable only with them.

- ``sqlite`` storage: SQLite's online backup API, one consistent copy
  while writers carry on.
- any other backend (``file``, ``inmem``): every key copied into a new
  SQLite file under the storage's whole-tree lock, which holds back the
  read-modify-write sequences (KV v2 versions, check-and-set, tokens);
  single-key writes are atomic on their own.

One format for every backend, so a snapshot of a ``file`` server restores
into a ``sqlite`` server and back.

Restore replaces the store's contents in one ``transaction`` (all or
nothing on ``sqlite``), through the cross-worker cache so that every
worker's cached values are invalidated key by key, then seals the server:
every worker drops what it derived (mounts, policies, tokens, keyring) and
the server is unsealed again by its keys or its unsealer agent.

Nothing here knows HTTP: the API module streams the files.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from vaultd.core.seal_state import EPOCH_INIT, EPOCH_KEYRING, EPOCH_MOUNTS, EPOCH_POLICIES
from vaultd.crypto import aead
from vaultd.errors import BadRequest, Sealed, StorageError
from vaultd.storage.base import Delete, Op, Put, Storage
from vaultd.storage.keys import split_key

if TYPE_CHECKING:
    from vaultd.core.core import Core

FORMAT = "vaultd-snapshot-1"
SQLITE_HEADER = b"SQLite format 3\x00"
FILE_MODE = 0o600
_KV_SCHEMA = "CREATE TABLE kv (key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL) WITHOUT ROWID"
_REQUIRED_KEYS = ("core/seal-config", "core/root-key", "core/keyring")
_KEYRING = "core/keyring"
_MISMATCH = ("could not verify the snapshot's keyring, possibly the snapshot is using a different set of "
             "unseal keys; use the snapshot-force API to bypass this check")


def private_tempdir() -> str:
    """A fresh directory only this user can enter (``mkdtemp`` makes it 0700)."""
    return tempfile.mkdtemp(prefix="vaultd-snapshot-")


def remove_tree(directory: str) -> None:
    """Remove a directory made by :func:`private_tempdir` and what is in it."""
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(directory):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, name))
        os.rmdir(directory)


def _physical(storage: Storage) -> Storage:
    """The backend under the cross-worker cache (the core's ``physical``)."""
    return getattr(storage, "inner", storage)


# -- save ---------------------------------------------------------------------


def save(storage: Storage, dest: str) -> int:
    """Write a snapshot of ``storage`` (the core's physical storage) into the
    new file ``dest``; returns the number of keys in it."""
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    os.close(fd)
    backend = _physical(storage)
    backup_to = getattr(backend, "backup_to", None)
    if callable(backup_to):
        backup_to(dest)
    else:
        _copy_keys(backend, dest)
    try:
        conn = sqlite3.connect(dest, isolation_level=None)
        try:
            # One self-contained file: no -wal beside it.
            conn.execute("PRAGMA journal_mode = DELETE")
            count = int(conn.execute("SELECT count(*) FROM kv").fetchone()[0])
            conn.execute("CREATE TABLE vaultd_snapshot (name TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL)")
            conn.executemany(
                "INSERT INTO vaultd_snapshot (name, value) VALUES (?, ?)",
                [("format", FORMAT), ("created", str(int(time.time()))), ("keys", str(count))],
            )
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StorageError(f"cannot write the snapshot: {str(exc)[:200]}") from None
    os.chmod(dest, FILE_MODE)
    return count


def _copy_keys(backend: Storage, dest: str) -> None:
    """A backend without a backup API: every key, under its whole-tree lock."""
    try:
        conn = sqlite3.connect(dest, isolation_level=None)
    except sqlite3.Error as exc:
        raise StorageError(f"cannot write the snapshot: {str(exc)[:200]}") from None
    try:
        conn.execute(_KV_SCHEMA)
        conn.execute("BEGIN")
        with backend.lock(""):
            for key in backend.keys():
                value = backend.get(key)
                if value is not None:
                    conn.execute("INSERT INTO kv (key, value) VALUES (?, ?)", (key, value))
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise StorageError(f"cannot write the snapshot: {str(exc)[:200]}") from None
    finally:
        conn.close()


# -- restore ------------------------------------------------------------------


def read_snapshot(path: str) -> dict[str, bytes]:
    """Every key of the snapshot file at ``path``, or 400 if it is not one:
    not SQLite, damaged (``quick_check``), or without a valid ``kv`` table
    holding an initialised server's keys.  Reads only."""
    with open(path, "rb") as handle:
        if handle.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
            raise BadRequest("the file is not a vaultd snapshot (not an SQLite database)")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error:
        raise BadRequest("the file is not a vaultd snapshot (cannot be opened)") from None
    try:
        conn.execute("PRAGMA trusted_schema = OFF")
        rows = [row[0] for row in conn.execute("PRAGMA quick_check")]
        if rows != ["ok"]:
            raise BadRequest("the snapshot is damaged (quick_check failed)")
        kind = conn.execute("SELECT type FROM sqlite_master WHERE name = 'kv'").fetchone()
        if kind is None or kind[0] != "table":
            raise BadRequest("the file is not a vaultd snapshot (no kv table)")
        columns = [row[1] for row in conn.execute("PRAGMA table_info(kv)")]
        if columns != ["key", "value"]:
            raise BadRequest("the file is not a vaultd snapshot (unexpected kv table)")
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'vaultd_snapshot'").fetchone():
            found = conn.execute("SELECT value FROM vaultd_snapshot WHERE name = 'format'").fetchone()
            if found is None or found[0] != FORMAT:
                raise BadRequest("the snapshot's format is not one this server reads")
        data: dict[str, bytes] = {}
        for key, value in conn.execute("SELECT key, value FROM kv"):
            if not isinstance(key, str) or not isinstance(value, bytes):
                raise BadRequest("the snapshot holds a malformed entry")
            try:
                split_key(key)
            except (ValueError, TypeError):
                raise BadRequest("the snapshot holds an invalid key") from None
            data[key] = value
    except sqlite3.Error:
        raise BadRequest("the file is not a vaultd snapshot (cannot be read)") from None
    finally:
        conn.close()
    missing = [key for key in _REQUIRED_KEYS if key not in data]
    if missing:
        raise BadRequest("the snapshot is not of an initialized server (no seal configuration or keys)")
    return data


def check_keys(data: dict[str, bytes], root_key: bytes | None) -> None:
    """The non-force restore's check (Vault's "sealed hashes" check): the
    snapshot's keyring must open with this server's root key, which is what
    the current unseal keys (or KMS key) give."""
    if root_key is None:
        raise Sealed()
    try:
        aead.decrypt(root_key, data[_KEYRING], _KEYRING.encode())
    except (aead.AuthenticationError, ValueError):
        raise BadRequest(_MISMATCH) from None


def replacement(storage: Storage, data: dict[str, bytes]) -> list[Op]:
    """The operations that make ``storage`` hold exactly ``data``."""
    ops: list[Op] = [Delete(key) for key in _physical(storage).keys() if key not in data]
    ops.extend(Put(key, value) for key, value in sorted(data.items()))
    return ops


def restore(core: Core, path: str, *, force: bool) -> int:
    """Replace the store of ``core`` with
    the snapshot at ``path``, then seal; returns the number of keys.  A file
    that is not a valid snapshot (or, without ``force``, one made under
    other keys) is refused before anything changes."""
    data = read_snapshot(path)
    if not force:
        check_keys(data, core.shared.root_key())
    ops = replacement(core.physical, data)
    # Sealed first, so that no new request writes between the replacement
    # and the seal; the replacement goes through the cache, which bumps the
    # shared version of every key it touches.  Both under the whole-tree
    # lock: a read-modify-write already under way in another worker (a KV
    # v2 version, a token change) holds its key's lock, so it either ends
    # before the replacement or reads the restored store after it, and never
    # writes what it read from the old store into the new one.
    with core.physical.lock(""):
        core.lifecycle.seal_now(by_operator=False)
        core.physical.transaction(ops)
    for slot in (EPOCH_INIT, EPOCH_KEYRING, EPOCH_MOUNTS, EPOCH_POLICIES):
        core.shared.bump_epoch(slot)
    core.physical.clear()
    return len(data)


def iter_file(path: str, chunk: int = 1024 * 1024) -> Iterator[bytes]:
    """The bytes of ``path`` in chunks; the file is unlinked once open, so
    it is gone however the stream ends."""
    handle = open(path, "rb")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    try:
        while True:
            block = handle.read(chunk)
            if not block:
                return
            yield block
    finally:
        handle.close()
