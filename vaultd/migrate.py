"""``vaultd operator migrate -config FILE [-reset]``: copy a store between
backends (file, sqlite, postgresql), Vault's command and file format::

    storage_source "file" {
      path = "/var/lib/vaultd"
    }
    storage_destination "sqlite" {
      path = "/var/lib/vaultd-sqlite"
    }

Offline and byte for byte: the values are the barrier's ciphertext, copied
as they are and never decrypted, so the migrator needs no keys and the
destination unseals with the same unseal (or recovery) keys as the source.

- Both directories are held exclusively through the server lock
  (:mod:`vaultd.storage.serverlock`) for the whole run: it refuses to start
  while a server holds either, and no server starts on them meanwhile.
- A destination that holds any key is refused unless ``-reset``, which
  clears it first.  (Vault's ``-reset`` clears its migration-lock key
  instead; vaultd has none, the server lock does that job.)
- Keys go over in batches, each one :meth:`Storage.transaction` on the
  destination (one fsync a batch on ``sqlite``), then every key is read
  back from both sides and compared: the count and each value.
- Output: counts only, never a key (keys can name secrets), an in-place
  progress bar when stdout is a terminal, and Vault's last line.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import sys
import time
from collections.abc import Iterator
from typing import TextIO

from vaultd.config import ConfigError, StorageConfig, load_migration_config
from vaultd.errors import StorageError
from vaultd.storage import FileStorage, SqliteStorage, Storage, open_postgresql
from vaultd.storage.base import Delete, Put
from vaultd.storage.serverlock import exclusive
from vaultd.storage.sqlite import DB_NAME

BATCH_KEYS = 256
"""Keys per destination transaction: few fsyncs, bounded memory."""
BATCH_BYTES = 8 * 1024 * 1024
"""...or fewer, once their values add up to this."""
SUCCESS = "Success! All of the keys have been migrated."


class MigrationError(Exception):
    """Why the migration stopped; the message names paths, never keys."""


def open_backend(stanza: str, storage: StorageConfig) -> Storage:
    if storage.type == "postgresql":
        # A source table must exist: creating it would "migrate" nothing.
        return open_postgresql(storage.options, create=stanza == "storage_destination")
    path = storage.options["path"]
    if storage.type == "file":
        return FileStorage(path)
    if storage.type == "sqlite":
        # Checkpoints inline (every 1000 pages): a one-shot copy has no
        # requests to keep them away from, and no thread to leave behind.
        return SqliteStorage(path, background_checkpoints=False)
    raise MigrationError(f"{stanza}: unsupported storage type {storage.type!r}")


def _check_source(storage: StorageConfig) -> None:
    """The source must exist: opening a backend would create an empty one,
    and a migration of nothing would "succeed"."""
    if storage.type == "postgresql":
        return  # open_backend refuses a missing table
    path = storage.options["path"]
    if not os.path.isdir(path):
        raise MigrationError(f"storage_source: {path} does not exist or is not a directory")
    if storage.type == "sqlite" and not os.path.isfile(os.path.join(path, DB_NAME)):
        raise MigrationError(f"storage_source: {path} holds no {DB_NAME}")


class Progress:
    """A bar redrawn in place on a terminal (at most 10 times a second);
    nothing on a pipe or a log file, where the counts before and after say
    enough."""

    def __init__(self, out: TextIO, total: int, label: str) -> None:
        self._out = out
        self._total = total
        self._label = label
        self._tty = out.isatty()
        self._last = 0.0

    def update(self, done: int, *, force: bool = False) -> None:
        if not self._tty:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        width = 30
        filled = width * done // self._total if self._total else width
        percent = 100 * done // self._total if self._total else 100
        bar = "#" * filled + "-" * (width - filled)
        self._out.write(f"\r{self._label} [{bar}] {done}/{self._total} keys ({percent}%)")
        self._out.flush()

    def finish(self) -> None:
        if self._tty:
            self.update(self._total, force=True)
            self._out.write("\n")
            self._out.flush()


def _batches(source: Storage, keys: list[str]) -> Iterator[list[Put]]:
    batch: list[Put] = []
    size = 0
    for key in keys:
        value = source.get(key)
        if value is None:
            raise MigrationError("a key of the source vanished during the copy; is a server running on it?")
        batch.append(Put(key, value))
        size += len(value)
        if len(batch) >= BATCH_KEYS or size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _clear(destination: Storage, keys: list[str]) -> None:
    for start in range(0, len(keys), BATCH_KEYS):
        destination.transaction([Delete(k) for k in keys[start:start + BATCH_KEYS]])


def _verify(source: Storage, destination: Storage, keys: list[str], out: TextIO) -> None:
    copied = list(destination.keys())
    if copied != keys:
        raise MigrationError(f"verification failed: the source has {len(keys)} keys, the destination {len(copied)}")
    progress = Progress(out, len(keys), "Verifying")
    for done, key in enumerate(keys, 1):
        if source.get(key) != destination.get(key):
            raise MigrationError(f"verification failed: a value differs (key {done} of {len(keys)})")
        progress.update(done)
    progress.finish()


STAGING_DIR = ".migrate-sqlite"
"""Where an in-place migration to sqlite builds its database before the
rename: hidden, so the file backend never lists it."""


def _copy(source: Storage, destination: Storage, *, reset: bool, where: str, out: TextIO) -> int:
    existing = list(destination.keys())
    if existing and not reset:
        raise MigrationError(f"storage_destination: {where} is not empty ({len(existing)} keys); "
                             "pass -reset to clear it first")
    if existing:
        out.write(f"Clearing {len(existing)} keys from the destination (-reset)...\n")
        _clear(destination, existing)
    keys = list(source.keys())
    out.write(f"Copying {len(keys)} keys...\n")
    out.flush()
    progress = Progress(out, len(keys), "Copying")
    done = 0
    for batch in _batches(source, keys):
        destination.transaction(batch)
        done += len(batch)
        progress.update(done)
    progress.finish()
    _verify(source, destination, keys, out)
    out.write(f"Verified {len(keys)} keys: count and values match.\n")
    return len(keys)


def _fsync(path: str, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _install(staging: str, directory: str) -> None:
    """Move a finished database from ``staging`` to ``directory/vaultd.db``
    in one rename, so an interrupted in-place migration never leaves a
    partial ``vaultd.db`` for a server to take as the store."""
    staged = os.path.join(staging, DB_NAME)
    target = os.path.join(directory, DB_NAME)
    conn = sqlite3.connect(staged, isolation_level=None)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything into the one file
    finally:
        conn.close()
    _fsync(staged)
    # A log left by an old database (-reset) would be replayed onto the new one.
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(target + suffix)
    os.rename(staged, target)
    _fsync(directory, os.O_RDONLY | os.O_DIRECTORY)
    shutil.rmtree(staging, ignore_errors=True)


def run(source_cfg: StorageConfig, dest_cfg: StorageConfig, *, reset: bool, out: TextIO) -> int:
    """Copy every key; the number of keys copied.

    Source and destination may be one directory when the kinds differ (a
    ``file`` store and ``vaultd.db`` live side by side): that is how an
    upgraded package moves ``/var/lib/vaultd`` to sqlite in place.  The
    file-backend data is left where it was; nothing deletes a store."""
    _check_source(source_cfg)
    if "postgresql" in (source_cfg.type, dest_cfg.type):
        return _run_with_postgresql(source_cfg, dest_cfg, reset=reset, out=out)
    src_path = os.path.realpath(source_cfg.options["path"])
    dst_path = os.path.realpath(dest_cfg.options["path"])
    in_place = src_path == dst_path
    if in_place and source_cfg.type == dest_cfg.type:
        raise MigrationError("storage_source and storage_destination are the same store")
    out.write(f"Migrating from {source_cfg.type} ({src_path}) to {dest_cfg.type} ({dst_path})...\n")
    with contextlib.ExitStack() as stack:
        stack.enter_context(exclusive(src_path, "source"))
        if not in_place:
            stack.enter_context(exclusive(dst_path, "destination"))
        source = open_backend("storage_source", source_cfg)
        stack.callback(_close, source)
        if not (in_place and dest_cfg.type == "sqlite"):
            destination = open_backend("storage_destination", dest_cfg)
            stack.callback(_close, destination)
            return _copy(source, destination, reset=reset, where=dst_path, out=out)
        # In place to sqlite: build it aside, then rename it in.
        if os.path.exists(os.path.join(dst_path, DB_NAME)):
            current = SqliteStorage(dst_path, background_checkpoints=False)
            try:
                held = sum(1 for _ in current.keys())
            finally:
                current.close()
            if held and not reset:
                raise MigrationError(f"storage_destination: {dst_path} is not empty ({held} keys); "
                                     "pass -reset to clear it first")
        staging = os.path.join(dst_path, STAGING_DIR)
        shutil.rmtree(staging, ignore_errors=True)  # a previous run's, interrupted
        destination = SqliteStorage(staging, background_checkpoints=False)
        try:
            count = _copy(source, destination, reset=False, where=staging, out=out)
        finally:
            destination.close()
        _install(staging, dst_path)
        out.write(f"The file-backend data in {src_path} is left as it was: "
                  "remove it once the sqlite server serves the store.\n")
        return count
    raise AssertionError("unreachable")


def _describe(storage: StorageConfig) -> str:
    if storage.type == "postgresql":
        return f"postgresql (table {storage.options.get('table') or 'vault_kv_store'})"
    return f"{storage.type} ({os.path.realpath(storage.options['path'])})"


def _run_with_postgresql(source_cfg: StorageConfig, dest_cfg: StorageConfig, *, reset: bool, out: TextIO) -> int:
    """A copy where either side is a PostgreSQL table, held as the disk
    stores are: the migrator refuses while a vaultd server uses either
    side (for a table: any vaultd session on its database), and a server
    refuses to start on a table under migration."""
    if source_cfg.type == dest_cfg.type == "postgresql" and (
        source_cfg.options.get("connection_url"), source_cfg.options.get("table") or "vault_kv_store"
    ) == (dest_cfg.options.get("connection_url"), dest_cfg.options.get("table") or "vault_kv_store"):
        raise MigrationError("storage_source and storage_destination are the same store")
    out.write(f"Migrating from {_describe(source_cfg)} to {_describe(dest_cfg)}...\n")
    with contextlib.ExitStack() as stack:
        opened: list[Storage] = []
        for stanza, role, cfg in (("storage_source", "source", source_cfg),
                                  ("storage_destination", "destination", dest_cfg)):
            if cfg.type != "postgresql":
                stack.enter_context(exclusive(os.path.realpath(cfg.options["path"]), role))
            storage = open_backend(stanza, cfg)
            stack.callback(_close, storage)
            if cfg.type == "postgresql":
                stack.enter_context(storage.exclusive(role))  # type: ignore[attr-defined]
            opened.append(storage)
        return _copy(opened[0], opened[1], reset=reset, where=_describe(dest_cfg), out=out)
    raise AssertionError("unreachable")


def _close(storage: Storage) -> None:
    close = getattr(storage, "close", None)  # sqlite's connections, postgresql's pool
    if close is not None:
        close()


def main(config_path: str, *, reset: bool = False, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """The command: 0 on success, 1 with Vault's ``Error ...`` line otherwise."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        config = load_migration_config(config_path)
    except ConfigError as exc:
        err.write(f"Error loading configuration from {config_path}: {exc}\n")
        return 1
    try:
        run(config.source, config.destination, reset=reset, out=out)
    except KeyboardInterrupt:
        err.write("\n==> Migration shutdown triggered\nError migrating: migration aborted; "
                  "the destination is incomplete: run again with -reset\n")
        return 1
    except (MigrationError, StorageError, ValueError) as exc:
        err.write(f"Error migrating: {exc}\n")
        return 1
    out.write(SUCCESS + "\n")
    return 0
