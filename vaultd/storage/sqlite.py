"""Embedded storage in one SQLite database: ``storage "sqlite" { path = DIR }``.

Why SQLite: a KV v2 write is two keys (the version and the metadata), and
the ``file`` backend makes each durable on its own (temp file, fsync,
rename, directory fsync: four fsyncs a write, and a crash between the two
leaves one without the other).  SQLite in WAL mode commits any number of
keys with one fsync of its log, all or nothing, and it is a crash-tested
engine in Python's standard library that several processes may open at once.

- Durability: ``journal_mode=WAL`` with ``synchronous=FULL``, so an
  acknowledged write survives power loss, not only ``kill -9``.
- Writers: SQLite admits one writer at a time and makes the others poll
  (its busy handler sleeps up to 100 ms between tries).  Writers therefore
  queue on an ``flock`` first, which wakes the next one the moment the last
  commits; SQLite's own lock is then free except during a backup or a
  checkpoint, for which ``busy_timeout`` waits.
- Readers never wait: WAL gives every statement a consistent snapshot.
- Connections are per thread and per process (a connection must not cross a
  ``fork``; gunicorn forks its workers after the master opened the store).
- Checkpoints (copying the log back into the database) run from a
  background thread, not inside a request's commit.
- Files: the directory is 0700, the database and its ``-wal``/``-shm`` files
  0600 (SQLite gives the latter the database file's mode).
- A damaged database is found at open (``PRAGMA quick_check``) and refused
  with its path named, rather than served in part.

Layout: one table ``kv(key TEXT PRIMARY KEY, value BLOB)``; keys are the
logical paths, values the barrier's ciphertext, byte for byte what the
``file`` backend holds, so ``vaultd operator migrate`` can copy between them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence

from vaultd.errors import StorageError
from vaultd.storage.base import Op, Put, Storage, make_private_dirs, split_children
from vaultd.storage.keys import check_key, split_prefix
from vaultd.storage.locks import StripedLocks

log = logging.getLogger("vaultd.storage")

DB_NAME = "vaultd.db"
DIR_MODE = 0o700
FILE_MODE = 0o600
BUSY_TIMEOUT_MS = 30_000
CHECKPOINT_INTERVAL = 1.0
"""Seconds between two checkpoints by a process's checkpointer thread."""
PAGE_CACHE_KIB = 64
"""Each connection's page cache (SQLite's default is 2 MiB; a worker has a
connection per request thread).  Enough for the B-tree's upper levels; the
leaves are in the OS page cache, and hot values in the read cache above."""
WAL_SIZE_LIMIT = 16 * 1024 * 1024
"""What the log is cut back to once a checkpoint has emptied it."""
_LABEL = "sqlite storage"

_SCHEMA = "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL) WITHOUT ROWID"


_INHERITED: list[sqlite3.Connection] = []
"""Connections this process inherited through fork: kept, never closed."""


def _error(action: str, exc: sqlite3.Error) -> StorageError:
    """A client-facing 500 that says what failed (disk full, read-only),
    never which key: keys can name secrets."""
    text = str(exc).split("\n")[0][:200]
    return StorageError(f"{_LABEL}: cannot {action}: {text}")



class _Checkpointer:
    """One background thread per process that moves the WAL back into the
    database when it has grown, so no request's commit pays for it."""

    def __init__(self, storage: SqliteStorage) -> None:
        self._storage = weakref.ref(storage)
        self.pid = os.getpid()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vaultd-sqlite-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(CHECKPOINT_INTERVAL):
            storage = self._storage()
            if storage is None:
                return
            with contextlib.suppress(sqlite3.Error, StorageError):
                storage.checkpoint()
            del storage

    def stop(self) -> None:
        self._stop.set()


class SqliteStorage(Storage):
    def __init__(self, path: str, *, background_checkpoints: bool = True) -> None:
        if not path:
            raise ValueError('storage "sqlite" needs a non-empty path')
        self._root = os.path.abspath(path)
        self._db = os.path.join(self._root, DB_NAME)
        lock_dir = os.path.join(self._root, ".locks")
        try:
            make_private_dirs(self._root)
            make_private_dirs(lock_dir)
        except OSError as exc:
            raise StorageError(f"{_LABEL}: cannot create {self._root}: {exc.strerror}") from exc
        # Opened for writing here, at start: a database that cannot be
        # written (a read-only filesystem) is refused now, named, rather
        # than served with every write failing.
        try:
            fd = os.open(self._db, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE)
            try:
                os.fchmod(fd, FILE_MODE)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StorageError(f"{_LABEL}: cannot open {self._db} for writing: {exc.strerror}") from exc
        self._locks = StripedLocks(lock_dir, label=_LABEL)
        # One stripe: the queue every writer of every process joins.
        self._writer = StripedLocks(lock_dir, label=_LABEL, stripes=1, file_prefix="writer-")
        self._local = threading.local()
        self._background = background_checkpoints
        self._checkpointer: _Checkpointer | None = None
        self._checkpointer_guard = threading.Lock()
        self._open_checked()

    def __repr__(self) -> str:
        return f"SqliteStorage({self._root!r})"

    @property
    def path(self) -> str:
        return self._root

    @property
    def database(self) -> str:
        return self._db

    # -- connections ---------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._db, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
            # Every worker thread has a connection, and above them sits the
            # cross-worker ciphertext cache: SQLite's default 2 MiB page
            # cache per connection added ~40 MiB to a 2-worker server for
            # pages the OS page cache holds anyway.
            conn.execute(f"PRAGMA cache_size = -{PAGE_CACHE_KIB}")
            # Checkpoints are the background thread's (see _Checkpointer).
            conn.execute("PRAGMA wal_autocheckpoint = 0" if self._background else "PRAGMA wal_autocheckpoint = 1000")
        except BaseException:
            conn.close()
            raise
        return conn

    def _open_checked(self) -> None:
        """Set the database up and check it, once, in the opening process."""
        try:
            conn = self._connect()
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StorageError(f"{_LABEL}: {self._db}: cannot use write-ahead logging (journal mode {mode})")
                rows = [row[0] for row in conn.execute("PRAGMA quick_check")]
                if rows != ["ok"]:
                    detail = "; ".join(str(r) for r in rows[:3])
                    raise StorageError(f"{_LABEL}: {self._db} is damaged (quick_check: {detail}); restore a snapshot")
                conn.execute(_SCHEMA)
            finally:
                conn.close()
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"{_LABEL}: {self._db} cannot be opened: {str(exc)[:200]}") from None
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(self._db + suffix, FILE_MODE)

    def _conn(self) -> sqlite3.Connection:
        local = self._local
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        if conn is not None and local.pid == os.getpid():
            return conn
        # A connection inherited through fork is abandoned, never closed or
        # used: SQLite's locks and caches belong to the parent.  It stays
        # referenced, since dropping the last reference closes it, and closing
        # its file descriptor would drop this process's POSIX locks on the
        # database, those of its other connections included.
        if conn is not None:
            _INHERITED.append(conn)
        try:
            conn = self._connect()
        except sqlite3.Error as exc:
            raise _error("open the database", exc) from None
        local.conn, local.pid = conn, os.getpid()
        return conn

    def _ensure_checkpointer(self) -> None:
        """Started by a process's first write, never by a read: the gunicorn
        master only reads, and a thread inside SQLite while the master forks
        could leave a worker with one of SQLite's mutexes held forever."""
        checkpointer = self._checkpointer
        if not self._background or (checkpointer is not None and checkpointer.pid == os.getpid()):
            return
        with self._checkpointer_guard:
            if self._checkpointer is None or self._checkpointer.pid != os.getpid():
                self._checkpointer = _Checkpointer(self)

    def close(self) -> None:
        """Close this thread's connection and stop this process's checkpointer."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        elif conn is not None:
            _INHERITED.append(conn)  # see _conn
        self._local.conn = None
        if self._checkpointer is not None and self._checkpointer.pid == os.getpid():
            self._checkpointer.stop()
            self._checkpointer = None

    # -- Storage -------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        check_key(key)
        try:
            row = self._conn().execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as exc:
            raise _error("read", exc) from None
        return None if row is None else bytes(row[0])

    def put(self, key: str, value: bytes) -> None:
        self.transaction([Put(key, value)])

    def delete(self, key: str) -> None:
        check_key(key)
        self._write(lambda conn: conn.execute("DELETE FROM kv WHERE key = ?", (key,)))

    def transaction(self, ops: Sequence[Op]) -> None:
        """All of ``ops`` in one SQLite transaction: one fsync, all or nothing."""
        rows: list[tuple[str, bytes | None]] = []
        for op in ops:
            check_key(op.key)
            rows.append((op.key, bytes(op.value) if isinstance(op, Put) else None))
        if not rows:
            return

        def apply(conn: sqlite3.Connection) -> None:
            for key, value in rows:
                if value is None:
                    conn.execute("DELETE FROM kv WHERE key = ?", (key,))
                else:
                    conn.execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, value))

        self._write(apply)

    def _write(self, apply: Callable[[sqlite3.Connection], object]) -> None:
        conn = self._conn()
        self._ensure_checkpointer()
        queued = time.monotonic()
        with self._writer.lock("writer"):
            self._begin(conn, time.monotonic() - queued)
            try:
                apply(conn)
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                if getattr(exc, "sqlite_errorname", "").startswith("SQLITE_READONLY"):
                    self._drop_connection(conn)
                raise self._write_error(exc) from None
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise

    def _drop_connection(self, conn: sqlite3.Connection) -> None:
        """Close this thread's connection, so that its next use opens a new
        one.  For a connection SQLite opened read-only (it does, silently,
        when the database cannot be opened for writing: a read-only
        filesystem at that moment): it would refuse every write for the
        rest of the process's life, however writable the file became."""
        if getattr(self._local, "conn", None) is conn and self._local.pid == os.getpid():
            self._local.conn = None
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _write_error(self, exc: sqlite3.Error) -> StorageError:
        """A failed write's 500, with the system's cause when SQLite says
        only "disk I/O error" (it keeps errno to itself): on a disk the
        kernel made read-only, "Read-only file system".  Found by setting
        the data directory's times, a write that needs no free space."""
        error = _error("write", exc)
        if "I/O" not in str(exc) and "readonly" not in str(exc):
            return error
        try:
            os.utime(self._root)
        except OSError as cause:
            return StorageError(f"{error} ({cause.strerror})")
        return error

    @staticmethod
    def _begin(conn: sqlite3.Connection, queued: float) -> None:
        """Take SQLite's write lock, waiting at most what is left of the busy
        timeout after ``queued`` seconds in the writers' queue.

        The queue is vaultd's own; what makes a writer wait inside SQLite is
        someone else holding the database (an ``sqlite3`` shell, a backup
        tool).  Were each writer to wait the whole timeout, the n-th in the
        queue would wait n times it; this way every request gets its answer
        (a 500 "database is locked") within about one timeout."""
        shortened = queued > 0.05
        if shortened:
            left = max(0, BUSY_TIMEOUT_MS - int(queued * 1000))
            with contextlib.suppress(sqlite3.Error):
                conn.execute(f"PRAGMA busy_timeout = {left}")
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _error("write", exc) from None
        finally:
            if shortened:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    def _select_keys(self, prefix: str) -> sqlite3.Cursor:
        """The keys under ``prefix`` (a checked prefix), in order."""
        if not prefix:
            return self._conn().execute("SELECT key FROM kv ORDER BY key")
        # Every key under "a/b/" sorts between "a/b/" and "a/b0" ('0' follows
        # '/'), and SQLite compares TEXT as UTF-8 bytes: code point order.
        upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        return self._conn().execute("SELECT key FROM kv WHERE key > ? AND key < ? ORDER BY key", (prefix, upper))

    def list(self, prefix: str) -> list[str]:
        split_prefix(prefix)
        try:
            keys = [row[0] for row in self._select_keys(prefix)]
        except sqlite3.Error as exc:
            raise _error("list", exc) from None
        return split_children(keys, prefix)

    def lock(self, name: str = "") -> contextlib.AbstractContextManager[None]:
        return self._locks.lock(name)

    # -- maintenance ---------------------------------------------------------

    def checkpoint(self) -> None:
        """A passive checkpoint: it copies what no reader still needs back
        into the database and never waits for writers, who carry on
        appending meanwhile.  Cheap when there is nothing to copy.

        A full disk here is harmless: a checkpoint copies pages the log
        already holds durably and marks them copied only once the database
        file is synced, so one that fails leaves the log the authority for
        those pages (readers keep reading them from it) and the next one
        retries.  The background thread drops the error."""
        try:
            self._conn().execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            raise _error("checkpoint", exc) from None

    def checkpoint_at_stop(self) -> None:
        """Copy the whole log into the database and empty it, once every
        worker is gone (the master's last act).  A stopped server's data is
        then all in ``vaultd.db``: a copy of that one file is complete, and
        damage to it is found at the next start instead of hidden behind
        pages the log still holds.  Nothing is lost if this fails: the log
        stays, and SQLite replays it at the next open."""
        try:
            conn = self._connect()
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                conn.close()
        except sqlite3.Error as exc:
            log.warning("sqlite storage: could not checkpoint the log at stop: %s", str(exc)[:200])

    def backup_to(self, dest: str) -> None:
        """A consistent copy of the whole database into the new file ``dest``
        (for online snapshots): SQLite's backup API copies in one step, as
        one WAL reader, so writers of every process carry on meanwhile and
        the copy is the database as of one commit."""
        try:
            target = sqlite3.connect(dest, isolation_level=None)
            try:
                self._conn().backup(target)
            finally:
                target.close()
        except sqlite3.Error as exc:
            raise _error("back up the database", exc) from None

    def keys(self, prefix: str = "") -> Iterator[str]:
        """Every key under ``prefix``, in order, in one query."""
        split_prefix(prefix)
        try:
            for row in self._select_keys(prefix):
                yield row[0]
        except sqlite3.Error as exc:
            raise _error("list", exc) from None
