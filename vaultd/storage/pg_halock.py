"""The HA lock: a lease row in PostgreSQL, Vault's ``ha_table`` layout.

Why a row and not an advisory lock: a row with an expiry decided by the
database's own clock (``now()``) lets a node that lost its connection know,
from its own monotonic clock, when its lease may have passed to another
node, and stop serving before then (see :mod:`vaultd.core.ha`).  An
advisory lock ends the instant its session dies, before the holder can
notice.  The layout is Vault's, so the table reads the same under Vault::

    CREATE TABLE vault_ha_locks (
      ha_key      TEXT COLLATE "C" NOT NULL,
      ha_identity TEXT COLLATE "C" NOT NULL,
      ha_value    TEXT COLLATE "C",
      valid_until TIMESTAMP WITH TIME ZONE NOT NULL,
      CONSTRAINT ha_key PRIMARY KEY (ha_key));

The holder's writes to the store carry the same check (see
``PostgresStorage.fence``): a write commits only while its node's lease row
is valid, so two nodes can never both acknowledge a write.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg import sql

from vaultd.errors import StorageError

log = logging.getLogger("vaultd.ha")

DEFAULT_HA_TABLE = "vault_ha_locks"
LOCK_KEY = "core/lock"
"""Vault's key for the active node's lock."""
STATEMENT_TIMEOUT_MS = 1500
CONNECT_TIMEOUT = 2


def fence_query(table: str) -> sql.Composed:
    """Holds the lease row shared for the writing transaction: the lease
    cannot be taken over (an UPDATE of the row) until the write commits."""
    return sql.SQL(
        "SELECT 1 FROM {} WHERE ha_key = %s AND ha_identity = %s AND valid_until > now() FOR SHARE"
    ).format(sql.Identifier(table))


class LeaseLock:
    """Acquire, renew, release and read the lease row, on one connection of
    its own (opened again after any failure), with short timeouts so that a
    caller never waits long on a dead database."""

    def __init__(self, conninfo: str, table: str, identity: str, ttl: float) -> None:
        self.conninfo = conninfo
        self.table = table
        self.identity = identity
        self.ttl = ttl
        ident = sql.Identifier(table)
        self._q_acquire = sql.SQL(
            "INSERT INTO {t} (ha_key, ha_identity, ha_value, valid_until) "
            "VALUES (%(k)s, %(i)s, %(v)s, now() + %(ttl)s * interval '1 second') "
            "ON CONFLICT (ha_key) DO UPDATE SET ha_identity = EXCLUDED.ha_identity, "
            "ha_value = EXCLUDED.ha_value, valid_until = EXCLUDED.valid_until "
            "WHERE {t}.valid_until < now() OR {t}.ha_identity = EXCLUDED.ha_identity RETURNING 1"
        ).format(t=ident)
        self._q_renew = sql.SQL(
            "UPDATE {} SET valid_until = now() + %(ttl)s * interval '1 second' "
            "WHERE ha_key = %(k)s AND ha_identity = %(i)s AND valid_until > now() RETURNING 1"
        ).format(ident)
        self._q_release = sql.SQL("DELETE FROM {} WHERE ha_key = %s AND ha_identity = %s").format(ident)
        self._q_holder = sql.SQL(
            "SELECT ha_identity, ha_value FROM {} WHERE ha_key = %s AND valid_until > now()"
        ).format(ident)
        self._conn: psycopg.Connection[Any] | None = None

    def create_table(self) -> None:
        with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT) as conn:
            conn.execute(sql.SQL(
                'CREATE TABLE IF NOT EXISTS {t} (ha_key TEXT COLLATE "C" NOT NULL, '
                'ha_identity TEXT COLLATE "C" NOT NULL, ha_value TEXT COLLATE "C", '
                "valid_until TIMESTAMP WITH TIME ZONE NOT NULL, CONSTRAINT {pk} PRIMARY KEY (ha_key))"
            ).format(t=sql.Identifier(self.table), pk=sql.Identifier(self.table + "_pkey")))

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self.close()
            # Keepalives and tcp_user_timeout: a renewal on a connection whose
            # peer vanished fails in seconds instead of waiting on it for hours
            # (the workers stop serving as active at the deadline regardless).
            self._conn = psycopg.connect(self.conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                                         options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
                                         keepalives=1, keepalives_idle=2, keepalives_interval=1,
                                         keepalives_count=3, tcp_user_timeout=STATEMENT_TIMEOUT_MS * 2)
        return self._conn

    def _one(self, query: sql.Composed, params: Any) -> tuple[Any, ...] | None:
        try:
            cursor = self._connection().execute(query, params)
            return cursor.fetchone() if cursor.description is not None else None
        except psycopg.Error as exc:
            self.close()
            raise StorageError(f"ha lock: {type(exc).__name__}") from None

    def try_acquire(self, value: str) -> bool:
        return self._one(self._q_acquire, {"k": LOCK_KEY, "i": self.identity, "v": value, "ttl": self.ttl}) is not None

    def renew(self) -> bool:
        """True while the lease is still ours (and now extended)."""
        return self._one(self._q_renew, {"k": LOCK_KEY, "i": self.identity, "ttl": self.ttl}) is not None

    def release(self) -> None:
        self._one(self._q_release, (LOCK_KEY, self.identity))

    def holder(self) -> tuple[str, str] | None:
        """(identity, value) of the live lease, or None."""
        row = self._one(self._q_holder, (LOCK_KEY,))
        return None if row is None else (str(row[0]), str(row[1] or ""))

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:
                log.debug("ha lock: closing a dead connection failed")
