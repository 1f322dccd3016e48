"""Storage in a PostgreSQL table: ``storage "postgresql" { connection_url = "..." }``.

Why: operators who outgrow one machine already run PostgreSQL, and Vault
supports it as a storage backend.  The table is Vault's own layout, so the
same database can be read by Vault or OpenBao (and ``operator migrate``
copies into or out of it)::

    CREATE TABLE vault_kv_store (
      parent_path TEXT COLLATE "C" NOT NULL,   -- "/a/"    for key a/b/c
      path        TEXT COLLATE "C",            -- "/a/b/"
      key         TEXT COLLATE "C",            -- "c"
      value       BYTEA,
      PRIMARY KEY (path, key));
    CREATE INDEX ... ON vault_kv_store (parent_path);

vaultd creates both when the table is missing, so an empty database is
enough.  PostgreSQL text cannot hold NUL, which a vaultd key may: ``\\x00``
and the escape character ``\\x01`` are stored as ``\\x01\\x01`` and
``\\x01\\x02``, a code that keeps keys distinct and in the same order.

- Connections: one ``psycopg_pool`` pool per process, opened on first use
  (gunicorn forks its workers after the master read the store; a connection
  must never cross a fork).  A pool inherited through fork is abandoned,
  never closed: closing would end the parent's sessions.  Every connection
  is autocommit; :meth:`transaction` is one SQL transaction, all or nothing.
- A PostgreSQL restart: the pool's connections die with the server.  An
  operation that meets a dead connection drops it, has the pool check the
  rest, and runs again on a fresh one (Put and Delete are idempotent, and an
  operation that is retried has not returned yet, so the retry is one more
  interleaving, never a lost or a reordered acknowledged write).  While the
  server is down a request gets a 500 with Vault's errors body within
  ``POOL_TIMEOUT``; once it is back, requests work again, no restart.
- ``lock(name)`` is a PostgreSQL advisory lock held by a session of its
  own, so it excludes the other threads, the other workers and any other
  process on the database.  Everything the locked block reads and writes
  goes through that same session: should the session die (and the lock with
  it) the block's writes fail too, instead of landing unlocked.  A named
  lock takes a shared lock on the table's "all" key and an exclusive one on
  the name's; the empty name and subtree names (``a/``) take "all"
  exclusively.
- One server per database without HA: the read cache above this backend
  (:mod:`vaultd.storage.cache`) is exact across the workers of one machine
  only.  With ``ha_enabled`` one node is active (:mod:`vaultd.core.ha`),
  and :meth:`PostgresStorage.fence` makes every write of an unsealed node
  check, in its own transaction, that the node still holds the lease.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool

from vaultd.errors import StorageError
from vaultd.storage.base import Delete, Op, Put, Storage
from vaultd.storage.keys import check_key, split_prefix
from vaultd.storage.locks import is_subtree, reenter

log = logging.getLogger("vaultd.storage")

DEFAULT_TABLE = "vault_kv_store"
DEFAULT_MAX_PARALLEL = 8
"""Connections per process at most (Vault's ``max_parallel``, 128 there for
one process).  vaultd runs ``workers + 1`` processes, each using at most one
connection per request thread (``threads``, 8 by default), so 8 each keeps a
4-worker server at 40 connections, well inside PostgreSQL's default 100."""
POOL_TIMEOUT = 5.0
"""Seconds a request waits for a connection before its 500."""
RECONNECT_TIMEOUT = 2.0
"""Seconds the pool keeps retrying one lost connection before giving the
slot up (the next request then starts a new attempt at once): caps the
backoff, so service resumes within seconds of PostgreSQL coming back."""
CONNECT_TIMEOUT = 5
PROBE_TIMEOUT = 2
"""Seconds a probe (is PostgreSQL back?) may take to connect."""
LOCK_TIMEOUT = "30s"
"""How long a lock (advisory or row) is waited for before a 500."""
APPLICATION_NAME = "vaultd"
"""Marks vaultd's sessions in ``pg_stat_activity``: the migrator refuses to
run while any other session of that name is on the database."""
MIGRATOR_NAME = "vaultd operator migrate"
SESSIONS_GRACE = 3.0
"""Seconds the migrator waits for a stopped server's sessions to end."""
RETRIES = 3
_LABEL = "postgresql storage"
CONNECTION_ENV = "VAULT_PG_CONNECTION_URL"
"""Vault's override of ``connection_url``."""

T = TypeVar("T")

_INHERITED: list[Any] = []
"""Pools this process inherited through fork: kept, never closed (see above)."""


def _error(action: str, exc: BaseException) -> StorageError:
    """A 500 that says what failed, never which key (keys can name secrets)."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return StorageError(f"{_LABEL}: cannot {action}: {text}")


def _escape(text: str) -> str:
    if "\x00" not in text and "\x01" not in text:
        return text
    return text.replace("\x01", "\x01\x02").replace("\x00", "\x01\x01")


def _unescape(text: str) -> str:
    if "\x01" not in text:
        return text
    out: list[str] = []
    chars = iter(text)
    for char in chars:
        if char == "\x01":
            out.append("\x00" if next(chars, "\x01") == "\x01" else "\x01")
        else:
            out.append(char)
    return "".join(out)


def split_row(key: str) -> tuple[str, str, str]:
    """Vault's (parent_path, path, key) of a stored (escaped) key."""
    pieces = key.split("/")
    if len(pieces) == 1:
        return "", "/", key
    path = "/" + "/".join(pieces[:-1]) + "/"
    parent = "/" + "/".join(pieces[:-2]) + "/" if len(pieces) > 2 else "/"
    return parent, path, pieces[-1]


def _upper(prefix: str) -> str:
    """The least string above every string that starts with ``prefix``
    (which ends in ``/``; ``0`` follows ``/``), for a range scan on the
    primary key under the "C" collation."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _advisory_key(table: str, name: str) -> int:
    digest = hashlib.sha256(f"vaultd\x00{table}\x00{name}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def connection_string(url: str | None) -> str:
    """``connection_url`` (or Vault's environment override; empty: libpq's
    own ``PG*`` environment) with vaultd's session settings.  A malformed
    string is refused without being echoed: it may hold a password."""
    url = os.environ.get(CONNECTION_ENV) or url or ""
    try:
        given = conninfo_to_dict(url)
    except psycopg.Error:
        raise ValueError(f"{_LABEL}: connection_url is not a valid PostgreSQL connection string") from None
    extra: dict[str, Any] = {"application_name": APPLICATION_NAME}
    if "connect_timeout" not in given:
        extra["connect_timeout"] = CONNECT_TIMEOUT
    return make_conninfo(url, **extra)


class _ThreadState(threading.local):
    pid: int = 0
    conn: psycopg.Connection[Any] | None = None
    held: dict[str, int]

    def __init__(self) -> None:
        self.held = {}


class PostgresStorage(Storage):
    def __init__(
        self,
        connection_url: str | None = None,
        *,
        table: str = DEFAULT_TABLE,
        max_parallel: int = DEFAULT_MAX_PARALLEL,
        create: bool = True,
    ) -> None:
        if not table or len(table) > 60 or "\x00" in table:
            raise ValueError(f'{_LABEL}: "table" must be 1 to 60 characters')
        if max_parallel < 1:
            raise ValueError(f'{_LABEL}: "max_parallel" must be at least 1')
        self._conninfo = connection_string(connection_url)
        self._table = table
        self._max_parallel = max_parallel
        ident = sql.Identifier(table)
        self._q_get = sql.SQL("SELECT value FROM {} WHERE path = %s AND key = %s").format(ident)
        self._q_put = sql.SQL(
            "INSERT INTO {} (parent_path, path, key, value) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (path, key) DO UPDATE SET parent_path = EXCLUDED.parent_path, value = EXCLUDED.value"
        ).format(ident)
        self._q_delete = sql.SQL("DELETE FROM {} WHERE path = %s AND key = %s").format(ident)
        self._q_children = sql.SQL(
            "SELECT key, NULL FROM {t} WHERE path = %(p)s "
            "UNION ALL SELECT DISTINCT NULL, path FROM {t} WHERE path > %(p)s AND path < %(u)s"
        ).format(t=ident)
        self._q_keys = sql.SQL(
            "SELECT path, key FROM {} WHERE path >= %(p)s AND path < %(u)s"
        ).format(ident)
        self._all_key = _advisory_key(table, "")
        self._migration_key = _advisory_key(table, "\x00migration")
        self._pools: dict[int, ConnectionPool] = {}
        self._guard = threading.Lock()
        self._guard_pid = os.getpid()
        self._down_pid = 0
        """This pid found PostgreSQL unreachable: probe before using the pool."""
        self._local = _ThreadState()
        self._fence: tuple[sql.Composed, str, Callable[[], bool]] | None = None
        self._setup(create)

    def fence(self, ha_table: str, identity: str, when: Callable[[], bool]) -> None:
        """HA: while ``when()`` (the node is unsealed), every write is one
        transaction that first holds this node's lease row in ``ha_table``
        (see :mod:`vaultd.storage.pg_halock`) and fails if the lease is not
        this node's or has expired: a node that lost the lock cannot
        acknowledge a write, whatever its own threads believe.  Set in the
        master before the fork, so every worker inherits it."""
        from vaultd.storage.pg_halock import fence_query

        self._fence = (fence_query(ha_table), identity, when)

    def _fenced(self) -> bool:
        return self._fence is not None and self._fence[2]()

    def __repr__(self) -> str:
        return f"PostgresStorage(table={self._table!r})"

    @property
    def table(self) -> str:
        return self._table

    @property
    def conninfo(self) -> str:
        """The connection string (may hold a password: never log it)."""
        return self._conninfo

    # -- set-up ----------------------------------------------------------------

    def _setup(self, create: bool) -> None:
        """Check the server and the table once, in the opening process, on a
        connection of its own (closed before gunicorn forks)."""
        try:
            with psycopg.connect(self._conninfo, autocommit=True) as conn:
                version = conn.info.server_version
                if version < 90500:
                    raise StorageError(f"{_LABEL}: PostgreSQL {version} is too old (9.5 or later is needed)")
                exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                                      (sql.Identifier(self._table).as_string(conn),)).fetchone()
                if not (exists and exists[0]):
                    if not create:
                        raise StorageError(f"{_LABEL}: the table {self._table!r} does not exist")
                    self._create_table(conn)
        except psycopg.Error as exc:
            raise _error("open the database", exc) from None

    def _create_table(self, conn: psycopg.Connection[Any]) -> None:
        ident = sql.Identifier(self._table)
        with conn.transaction():
            # Two servers starting at once: the second waits here, then finds it made.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._all_key,))
            conn.execute(sql.SQL(
                'CREATE TABLE IF NOT EXISTS {t} (parent_path TEXT COLLATE "C" NOT NULL, path TEXT COLLATE "C", '
                'key TEXT COLLATE "C", value BYTEA, CONSTRAINT {pk} PRIMARY KEY (path, key))'
            ).format(t=ident, pk=sql.Identifier(self._table + "_pkey")))
            conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {i} ON {t} (parent_path)").format(
                i=sql.Identifier(self._table + "_parent_path_idx"), t=ident))
        log.info("created the table %s", self._table)

    def refuse_during_migration(self) -> None:
        """Refuse (``StorageError``) while ``vaultd operator migrate`` holds
        this table; the server calls it at start."""
        try:
            with psycopg.connect(self._conninfo, autocommit=True) as conn:
                row = conn.execute("SELECT pg_try_advisory_lock_shared(%s)", (self._migration_key,)).fetchone()
        except psycopg.Error as exc:
            raise _error("open the database", exc) from None
        if not (row and row[0]):
            raise StorageError(f"{_LABEL}: the table {self._table!r} is in use by a running vaultd operator migrate")

    @contextlib.contextmanager
    def exclusive(self, role: str) -> Iterator[None]:
        """Hold the table alone for a migration, or refuse naming ``role``
        while a vaultd server (any session named ``vaultd`` other than this
        one) is connected to the database, or another migration runs."""
        try:
            conn = psycopg.connect(make_conninfo(self._conninfo, application_name=MIGRATOR_NAME), autocommit=True)
        except psycopg.Error as exc:
            raise _error("open the database", exc) from None
        with conn:
            try:
                taken = conn.execute("SELECT pg_try_advisory_lock(%s)", (self._migration_key,)).fetchone()
                # A server that has just stopped leaves its sessions for a moment.
                deadline = time.monotonic() + SESSIONS_GRACE
                while True:
                    others = conn.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND application_name = %s AND pid <> pg_backend_pid()", (APPLICATION_NAME,)).fetchone()
                    if not (others and others[0]) or time.monotonic() > deadline:
                        break
                    time.sleep(0.1)
            except psycopg.Error as exc:
                raise _error("lock the table", exc) from None
            if not (taken and taken[0]) or (others and others[0]):
                raise StorageError(
                    f"the {role} (postgresql table {self._table!r}) is in use by a running vaultd server "
                    "(or another migration); stop it first")
            yield

    # -- connections -------------------------------------------------------------

    def _pool(self) -> ConnectionPool:
        pid = os.getpid()
        pool = self._pools.get(pid)
        if pool is not None:
            return pool
        with self._guard_for(pid):
            pool = self._pools.get(pid)
            if pool is None:
                for old_pid in [p for p in self._pools if p != pid]:
                    _INHERITED.append(self._pools.pop(old_pid))
                pool = ConnectionPool(
                    self._conninfo,
                    kwargs={"autocommit": True},
                    configure=self._configure,
                    min_size=1,
                    max_size=self._max_parallel,
                    timeout=POOL_TIMEOUT,
                    reconnect_timeout=RECONNECT_TIMEOUT,
                    num_workers=1,
                    name=f"vaultd-{self._table}",
                    open=True,
                )
                self._pools[pid] = pool
        return pool

    def _guard_for(self, pid: int) -> threading.Lock:
        # The guard may have been held by another thread at fork: the
        # child's copy would stay locked forever, so a child makes its own.
        if self._guard_pid != pid:
            self._guard, self._guard_pid = threading.Lock(), pid
        return self._guard

    @staticmethod
    def _configure(conn: psycopg.Connection[Any]) -> None:
        conn.execute("SELECT set_config('lock_timeout', %s, false)", (LOCK_TIMEOUT,))
        # A node cut off mid-transaction must not hold its row locks (the HA
        # lease row among them, see pg_halock.py) for the operating system's
        # two-hour keepalive: the server drops such a session within seconds.
        conn.execute("SELECT set_config('idle_in_transaction_session_timeout', '10s', false), "
                     "set_config('tcp_keepalives_idle', '5', false), "
                     "set_config('tcp_keepalives_interval', '2', false), "
                     "set_config('tcp_keepalives_count', '3', false)")

    def close(self) -> None:
        """Close this process's pool (a one-shot command's; a server's
        pools live as long as their process)."""
        pool = self._pools.pop(os.getpid(), None)
        if pool is not None:
            pool.close(timeout=1.0)

    def _state(self) -> _ThreadState:
        state = self._local
        if state.pid != os.getpid():
            # Inherited through fork from the thread that forked: not ours.
            state.pid, state.conn, state.held = os.getpid(), None, {}
        return state

    def _run(self, action: str, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """``work`` on the locked block's session, or on a pooled connection,
        again on a fresh one when the connection turns out dead."""
        state = self._state()
        if state.conn is not None:
            try:
                return work(state.conn)
            except psycopg.Error as exc:
                # Never retried elsewhere: the lock lives in this session.
                raise _error(action, exc) from None
        pool = self._pool()
        for attempt in range(RETRIES):
            conn: psycopg.Connection[Any] | None = self._getconn(pool, action)
            try:
                return work(conn)
            except psycopg.OperationalError as exc:
                if not conn.broken or attempt == RETRIES - 1:
                    raise _error(action, exc) from None
                pool.putconn(conn)  # a broken one is discarded, not reused
                conn = None
                self._lost_connection(pool, action)
            except psycopg.Error as exc:
                raise _error(action, exc) from None
            finally:
                if conn is not None:
                    pool.putconn(conn)
        raise AssertionError("unreachable")

    def _getconn(self, pool: ConnectionPool, action: str) -> psycopg.Connection[Any]:
        """A pooled connection; while PostgreSQL is known to be down, an
        immediate error instead of a wait of ``POOL_TIMEOUT`` for one."""
        if self._down_pid == os.getpid():
            self._probe(action)
            self._down_pid = 0
            with contextlib.suppress(psycopg.Error):
                pool.check()  # what is idle died with the old server
        try:
            return pool.getconn()
        except psycopg.Error as exc:
            raise _error(action, exc) from None

    def _lost_connection(self, pool: ConnectionPool, action: str) -> None:
        """After a connection died: is the server there?  If not, the error
        now (and for the next requests, until a probe connects again);
        if so, drop the other dead connections before they fail a request."""
        log.warning("%s: a connection to PostgreSQL was lost", _LABEL)
        try:
            self._probe(action)
        except StorageError:
            self._down_pid = os.getpid()
            raise
        with contextlib.suppress(psycopg.Error):
            pool.check()

    def _probe(self, action: str) -> None:
        try:
            psycopg.connect(self._conninfo, connect_timeout=PROBE_TIMEOUT).close()
        except psycopg.Error as exc:
            raise _error(action, exc) from None

    # -- Storage -------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        check_key(key)
        _, path, name = split_row(_escape(key))

        def work(conn: psycopg.Connection[Any]) -> bytes | None:
            row = conn.execute(self._q_get, (path, name), binary=True).fetchone()
            return None if row is None else bytes(row[0])

        return self._run("read", work)

    def put(self, key: str, value: bytes) -> None:
        if self._fenced():
            self.transaction([Put(key, value)])
            return
        check_key(key)
        row = (*split_row(_escape(key)), bytes(value))
        self._run("write", lambda conn: conn.execute(self._q_put, row))

    def delete(self, key: str) -> None:
        if self._fenced():
            self.transaction([Delete(key)])
            return
        check_key(key)
        _, path, name = split_row(_escape(key))
        self._run("write", lambda conn: conn.execute(self._q_delete, (path, name)))

    def transaction(self, ops: Sequence[Op]) -> None:
        """All of ``ops``, in order, in one SQL transaction."""
        steps: list[tuple[bool, tuple[Any, ...]]] = []
        for op in ops:
            check_key(op.key)
            parent, path, name = split_row(_escape(op.key))
            if isinstance(op, Put):
                steps.append((True, (parent, path, name, bytes(op.value))))
            else:
                steps.append((False, (path, name)))
        if not steps:
            return
        fence = self._fence if self._fenced() else None

        def work(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction(), conn.cursor() as cur:
                if fence is not None:
                    from vaultd.storage.pg_halock import LOCK_KEY

                    if cur.execute(fence[0], (LOCK_KEY, fence[1])).fetchone() is None:
                        raise psycopg.errors.RaiseException("this node does not hold the HA lock (standby)")
                start = 0
                while start < len(steps):  # runs of one kind, each one executemany
                    kind = steps[start][0]
                    end = start
                    while end < len(steps) and steps[end][0] == kind:
                        end += 1
                    cur.executemany(self._q_put if kind else self._q_delete, [s[1] for s in steps[start:end]])
                    start = end

        self._run("write", work)

    def list(self, prefix: str) -> list[str]:
        split_prefix(prefix)
        here = "/" + _escape(prefix)

        def work(conn: psycopg.Connection[Any]) -> list[tuple[str | None, str | None]]:
            return conn.execute(self._q_children, {"p": here, "u": _upper(here)}).fetchall()

        out: set[str] = set()
        for key, path in self._run("list", work):
            if key is not None:
                out.add(_unescape(key))
            elif path is not None:
                out.add(_unescape(path[len(here):].split("/", 1)[0]) + "/")
        return sorted(out)

    def keys(self, prefix: str = "") -> Iterator[str]:
        """Every key under ``prefix``, in order (code points, as the other
        backends), from one query."""
        split_prefix(prefix)
        here = "/" + _escape(prefix)

        def work(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
            return conn.execute(self._q_keys, {"p": here, "u": _upper(here)}).fetchall()

        rows = self._run("list", work)
        yield from sorted(_unescape(path[1:] + key) for path, key in rows)

    # -- locks -----------------------------------------------------------------------

    @staticmethod
    def _is_subtree(name: str) -> bool:
        return is_subtree(name)

    @contextlib.contextmanager
    def lock(self, name: str = "") -> Iterator[None]:
        """Exclusive across threads, processes and machines; re-entrant.  The
        nesting rules are :class:`vaultd.storage.locks.StripedLocks`': any
        name inside a subtree lock, only the same name inside a named one."""
        state = self._state()
        held = state.held
        if held:
            with reenter(held, name):
                yield
            return
        pool = self._pool()
        conn = self._acquire(pool, name)
        state.conn, held[name] = conn, 1
        try:
            yield
        finally:
            state.conn = None
            held.pop(name, None)
            try:
                conn.execute("SELECT pg_advisory_unlock_all()")
            except psycopg.Error:
                conn.close()  # the session ends, and its locks with it
            pool.putconn(conn)

    def _acquire(self, pool: ConnectionPool, name: str) -> psycopg.Connection[Any]:
        """A pooled session holding the advisory locks for ``name``."""
        for attempt in range(RETRIES):
            conn = self._getconn(pool, "lock")
            try:
                if self._is_subtree(name):
                    conn.execute("SELECT pg_advisory_lock(%s)", (self._all_key,))
                else:
                    # Always "all" first, then the name: one order, no deadlock.
                    conn.execute("SELECT pg_advisory_lock_shared(%s)", (self._all_key,))
                    conn.execute("SELECT pg_advisory_lock(%s)", (_advisory_key(self._table, name),))
                return conn
            except psycopg.Error as exc:
                broken = conn.broken
                if not broken:
                    with contextlib.suppress(psycopg.Error):
                        conn.execute("SELECT pg_advisory_unlock_all()")
                pool.putconn(conn)
                if not broken or attempt == RETRIES - 1 or not isinstance(exc, psycopg.OperationalError):
                    raise _error("lock", exc) from None
                self._lost_connection(pool, "lock")
        raise AssertionError("unreachable")
