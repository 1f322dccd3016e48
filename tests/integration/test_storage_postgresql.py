"""The storage contract (tests/unit/test_storage.py) on a real PostgreSQL, and
what is PostgreSQL's own: Vault's table layout, transactions that are all or
nothing, locks across processes, and coming back after a server restart."""

from __future__ import annotations

import multiprocessing
import os
import threading

import psycopg
import pytest
from psycopg import sql

from tests.postgres_fixtures import PostgresCluster
from tests.unit.test_storage import (  # the contract, run again here with the fixtures below
    test_bad_keys_rejected,
    test_bad_prefixes_rejected,
    test_empty_and_large_values,
    test_folders_vanish_with_their_last_key,
    test_key_and_folder_of_the_same_name,
    test_keys_walks_every_key_in_order,
    test_list_direct_children_sorted,
    test_lock_is_reentrant,
    test_lock_serialises_threads,
    test_missing_key,
    test_non_string_key_rejected,
    test_odd_keys_round_trip_and_stay_distinct,
    test_put_get_overwrite_delete,
)
from vaultd.errors import StorageError
from vaultd.storage import Storage, open_storage
from vaultd.storage.base import Delete, Put
from vaultd.storage.postgresql import PostgresStorage

CONTRACT = [  # collected here (imported names), listed so the imports read as used
    test_bad_keys_rejected, test_bad_prefixes_rejected, test_non_string_key_rejected,
    test_empty_and_large_values, test_folders_vanish_with_their_last_key, test_key_and_folder_of_the_same_name,
    test_keys_walks_every_key_in_order, test_list_direct_children_sorted, test_lock_is_reentrant,
    test_lock_serialises_threads, test_missing_key, test_odd_keys_round_trip_and_stay_distinct,
    test_put_get_overwrite_delete,
]


@pytest.fixture
def storage(request: pytest.FixtureRequest, pg_url: str) -> Storage:
    store = PostgresStorage(pg_url)
    request.addfinalizer(store.close)
    return store


@pytest.fixture
def checking_storage(storage: Storage) -> Storage:
    return storage


@pytest.fixture
def pg(pg_url: str) -> PostgresStorage:
    store = PostgresStorage(pg_url)
    yield store
    store.close()


def rows(url: str, table: str = "vault_kv_store") -> list[tuple[str, str, str, bytes]]:
    with psycopg.connect(url) as conn:
        query = sql.SQL("SELECT parent_path, path, key, value FROM {} ORDER BY path, key").format(sql.Identifier(table))
        got = conn.execute(query).fetchall()
    return [(a, b, c, bytes(d)) for a, b, c, d in got]


def test_vault_table_layout(pg: PostgresStorage, pg_url: str) -> None:
    """The rows are Vault's, so Vault or OpenBao could read the table."""
    pg.put("top", b"1")
    pg.put("a/b", b"2")
    pg.put("a/b/c/d", b"3")
    assert rows(pg_url) == [
        ("", "/", "top", b"1"),
        ("/", "/a/", "b", b"2"),
        ("/a/b/", "/a/b/c/", "d", b"3"),
    ]
    with psycopg.connect(pg_url) as conn:
        indexes = {r[0] for r in conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'vault_kv_store'").fetchall()}
    assert any("(parent_path)" in i for i in indexes) and any("(path, key)" in i for i in indexes)


def test_open_storage_and_own_table(pg_url: str, postgres: PostgresCluster) -> None:
    store = open_storage("postgresql", {"connection_url": pg_url, "table": "other_kv", "max_parallel": "2"})
    try:
        assert isinstance(store, PostgresStorage)
        store.put("k", b"v")
        assert rows(pg_url, "other_kv") == [("", "/", "k", b"v")]
    finally:
        store.close()  # type: ignore[attr-defined]


def test_unreachable_database_is_refused_at_open(postgres: PostgresCluster) -> None:
    with pytest.raises(StorageError, match="postgresql storage: cannot open the database"):
        PostgresStorage(f"postgresql://postgres@127.0.0.1:{postgres.port}/no_such_database")


def test_transaction_is_all_or_nothing(pg: PostgresStorage, pg_url: str) -> None:
    pg.transaction([Put("a", b"1"), Put("b", b"2"), Delete("a"), Put("c", b"3")])
    assert [pg.get(k) for k in "abc"] == [None, b"2", b"3"]
    # PostgreSQL itself refuses the third write of the next one (a trigger):
    # the two before it must not stay.
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE FUNCTION refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                     "IF NEW.key = 'boom' THEN RAISE EXCEPTION 'refused by the test'; END IF; RETURN NEW; END $$")
        conn.execute("CREATE TRIGGER refuse_boom BEFORE INSERT OR UPDATE ON vault_kv_store "
                     "FOR EACH ROW EXECUTE FUNCTION refuse_boom()")
    with pytest.raises(StorageError, match="cannot write: refused by the test"):
        pg.transaction([Put("b", b"changed"), Delete("c"), Put("boom", b"x"), Put("after", b"y")])
    assert [pg.get(k) for k in ("b", "c", "boom", "after")] == [b"2", b"3", None, None]
    pg.put("fine", b"1")  # the connection is usable after the rollback
    assert pg.get("fine") == b"1"


def _count_in_process(url: str, rounds: int) -> None:
    store = PostgresStorage(url)
    for _ in range(rounds):
        with store.lock("counter"):
            value = int(store.get("counter") or b"0")
            store.put("counter", str(value + 1).encode())
    store.close()


def test_lock_excludes_other_processes(pg: PostgresStorage, pg_url: str) -> None:
    pg.put("counter", b"0")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_count_in_process, args=(pg_url, 30)) for _ in range(3)]
    for proc in procs:
        proc.start()
    _count_in_process(pg_url, 30)
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    assert pg.get("counter") == b"120"


def test_nested_lock_rules(pg: PostgresStorage) -> None:
    with pg.lock("a"), pytest.raises(RuntimeError), pg.lock("b"):
        pass
    with pg.lock(""), pg.lock("a"), pg.lock("b"):
        pass
    done = threading.Event()

    def other() -> None:
        with pg.lock(""):
            done.set()

    thread = threading.Thread(target=other)
    thread.start()
    thread.join(10)
    assert done.is_set()


def test_subtree_lock_waits_for_named_ones(pg: PostgresStorage) -> None:
    order: list[str] = []

    def whole() -> None:
        with pg.lock(""):
            order.append("subtree")

    with pg.lock("x"):
        thread = threading.Thread(target=whole)
        thread.start()
        thread.join(0.5)
        order.append("named released")
    thread.join(10)
    assert order == ["named released", "subtree"]


def test_forked_child_uses_its_own_connections(pg: PostgresStorage) -> None:
    """gunicorn forks after the master used the store: the child must not
    touch the parent's sessions, and the parent's must survive the child."""
    pg.put("before", b"1")
    pid = os.fork()
    if pid == 0:  # the child: read and write through its own pool, then exit
        code = 0
        try:
            if pg.get("before") != b"1":
                code = 2
            pg.put("child", b"2")
        except BaseException:
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert pg.get("child") == b"2"
    pg.put("after", b"3")
    assert pg.get("after") == b"3"


def test_postgres_restart(pg: PostgresStorage, postgres: PostgresCluster) -> None:
    """Down: a StorageError (a 500 with Vault's errors body above), quickly.
    Back: the same object works again, stale connections dropped."""
    for i in range(5):
        pg.put(f"k{i}", b"v")
    # Several idle connections in the pool, all about to die.
    barrier = threading.Barrier(4)

    def hold() -> None:
        with pg.lock(f"h{threading.get_ident()}"):
            barrier.wait(10)

    threads = [threading.Thread(target=hold) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    postgres.stop()
    try:
        with pytest.raises(StorageError, match="postgresql storage: cannot"):
            pg.get("k1")
        with pytest.raises(StorageError, match="postgresql storage: cannot"):
            pg.put("k1", b"lost")
        with pytest.raises(StorageError, match="postgresql storage: cannot"), pg.lock("k1"):
            pass
    finally:
        postgres.start()
    for i in range(5):
        assert pg.get(f"k{i}") == b"v"
    pg.transaction([Put("k1", b"new"), Delete("k2")])
    assert (pg.get("k1"), pg.get("k2")) == (b"new", None)
    with pg.lock("k3"):
        pg.put("k3", b"locked")
    assert pg.get("k3") == b"locked"


def test_missing_source_table_is_refused(pg_url: str) -> None:
    with pytest.raises(StorageError, match="does not exist"):
        PostgresStorage(pg_url, table="absent", create=False)


def test_connection_url_never_echoed() -> None:
    with pytest.raises(ValueError) as info:
        PostgresStorage("host=127.0.0.1 password='s3cret-pw")
    assert "s3cret-pw" not in str(info.value)


def test_migration_and_server_exclude_each_other(pg: PostgresStorage, pg_url: str) -> None:
    """The migrator refuses while a vaultd session is on the database (here
    ``pg``'s pool), and a server refuses to start under a migration."""
    pg.put("k", b"v")  # opens pg's pool: a "vaultd" session
    other = PostgresStorage(pg_url)
    try:
        with pytest.raises(StorageError, match="in use by a running vaultd server"), other.exclusive("source"):
            pass
        pg.close()
        with other.exclusive("destination"):
            with pytest.raises(StorageError, match="in use by a running vaultd operator migrate"):
                PostgresStorage(pg_url).refuse_during_migration()
        PostgresStorage(pg_url).refuse_during_migration()  # released with the migration
    finally:
        other.close()
