"""The SQLite backend: transactions, processes, modes and damage.

The contract every backend keeps (get/put/list/lock) is tested for it in
test_storage.py; this file covers what only it promises."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from vaultd.errors import StorageError
from vaultd.storage import SqliteStorage, StorageView, open_storage
from vaultd.storage.base import Delete, Put
from vaultd.storage.cache import CachedStorage


def test_transaction_applies_puts_and_deletes_in_order(tmp_path: Path) -> None:
    store = SqliteStorage(str(tmp_path / "db"))
    store.put("gone", b"x")
    store.transaction([Put("a/1", b"one"), Put("a/2", b"two"), Delete("gone"), Put("a/1", b"uno")])
    assert store.get("a/1") == b"uno"
    assert store.get("a/2") == b"two"
    assert store.get("gone") is None
    assert store.list("a/") == ["1", "2"]


def test_a_failed_transaction_stores_nothing(tmp_path: Path) -> None:
    store = SqliteStorage(str(tmp_path / "db"))
    store.put("keep", b"old")
    with pytest.raises(ValueError):
        store.transaction([Put("keep", b"new"), Put("bad//key", b"x")])
    assert store.get("keep") == b"old"

    class Boom(Exception):
        pass

    # A failure inside the SQL transaction rolls everything back.
    original = store._connect

    def failing_connect() -> sqlite3.Connection:
        conn = original()
        conn.execute("CREATE TEMP TRIGGER boom BEFORE INSERT ON kv WHEN NEW.key = 'poison' "
                     "BEGIN SELECT RAISE(ABORT, 'poisoned'); END")
        return conn

    store._local.conn = None
    store._connect = failing_connect  # type: ignore[method-assign]
    with pytest.raises(StorageError, match="poisoned"):
        store.transaction([Put("keep", b"new"), Put("poison", b"x")])
    assert store.get("keep") == b"old"
    assert store.get("poison") is None


def test_list_is_direct_children_and_exact_about_prefixes(tmp_path: Path) -> None:
    store = SqliteStorage(str(tmp_path / "db"))
    for key in ["a", "a/b", "a/b/c", "a/bc", "a0", "a.x", "b/z"]:
        store.put(key, b"v")
    assert store.list("") == ["a", "a.x", "a/", "a0", "b/"]
    assert store.list("a/") == ["b", "b/", "bc"]
    assert store.list("a/b/") == ["c"]
    assert store.list("nothing/") == []


def test_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        root = tmp_path / "deep" / "er" / "db"
        store = SqliteStorage(str(root))
        store.put("k", b"v")
    finally:
        os.umask(old)
    for directory in (tmp_path / "deep", tmp_path / "deep" / "er", root):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    for name in ("vaultd.db", "vaultd.db-wal", "vaultd.db-shm"):
        path = root / name
        assert path.exists(), name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, name


def test_a_damaged_database_is_refused_at_open(tmp_path: Path) -> None:
    root = tmp_path / "db"
    store = SqliteStorage(str(root))
    for i in range(200):
        store.put(f"k/{i}", os.urandom(512))
    store.checkpoint()
    store.close()
    db = root / "vaultd.db"
    data = bytearray(db.read_bytes())
    # Overwrite the middle pages (table b-tree pages) with garbage.
    page = 4096
    for offset in range(2 * page, len(data) - page, page):
        data[offset:offset + 64] = b"\xff" * 64
    db.write_bytes(bytes(data))
    for suffix in ("-wal", "-shm"):
        (root / f"vaultd.db{suffix}").unlink(missing_ok=True)
    with pytest.raises(StorageError) as info:
        SqliteStorage(str(root))
    assert str(db) in str(info.value)


def test_not_a_database_is_refused_at_open(tmp_path: Path) -> None:
    root = tmp_path / "db"
    root.mkdir(mode=0o700)
    (root / "vaultd.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StorageError, match="cannot be opened"):
        SqliteStorage(str(root))


def test_writes_from_many_threads_and_processes_all_land(tmp_path: Path) -> None:
    root = str(tmp_path / "db")
    store = SqliteStorage(root)
    script = textwrap.dedent(
        f"""
        import sys
        from vaultd.storage import SqliteStorage
        store = SqliteStorage({root!r})
        me = sys.argv[1]
        for i in range(40):
            with store.lock("counter"):
                n = int(store.get("counter") or b"0")
                store.transaction([
                    __import__("vaultd.storage.base", fromlist=["Put"]).Put("counter", str(n + 1).encode()),
                    __import__("vaultd.storage.base", fromlist=["Put"]).Put(f"w/{{me}}/{{i}}", b"x"),
                ])
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(n)]) for n in range(3)]

    def local(n: int) -> None:
        for i in range(40):
            with store.lock("counter"):
                value = int(store.get("counter") or b"0")
                store.transaction([Put("counter", str(value + 1).encode()), Put(f"w/t{n}/{i}", b"x")])

    threads = [threading.Thread(target=local, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        assert p.wait(timeout=120) == 0
    assert store.get("counter") == b"240"
    assert len(store.list("w/")) == 6
    assert sum(len(store.list(f"w/{w}")) for w in store.list("w/")) == 240


def test_kill_9_mid_transactions_leaves_each_whole(tmp_path: Path) -> None:
    """A writer killed at random: every transaction it started is there
    entirely or not at all, and every one it reported done is there."""
    root = str(tmp_path / "db")
    SqliteStorage(root)
    script = textwrap.dedent(
        f"""
        import sys
        from vaultd.storage import SqliteStorage
        from vaultd.storage.base import Put
        store = SqliteStorage({root!r})
        i = 0
        while True:
            store.transaction([Put(f"v/{{i}}", b"x" * 3000), Put(f"m/{{i}}", b"y" * 100)])
            print(i, flush=True)
            i += 1
        """
    )
    for _round in range(3):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        acknowledged = -1
        for _ in range(50):
            acknowledged = int(proc.stdout.readline())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        store = SqliteStorage(root)
        versions = set(store.list("v/"))
        metas = set(store.list("m/"))
        assert versions == metas
        assert str(acknowledged) in versions
        store.close()


def test_full_disk_fails_the_write_keeps_the_data_and_recovers(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        store = SqliteStorage(str(mount / "db"))
        store.put("kept", b"safe")
        filler = mount / "filler"
        with open(filler, "wb") as handle, pytest.raises(OSError):
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        with pytest.raises(StorageError, match="cannot write"):
            for i in range(200):
                store.put(f"big/{i}", os.urandom(8192))
        assert store.get("kept") == b"safe"
        filler.unlink()
        store.put("after", b"ok")
        assert store.get("after") == b"ok"
        assert store.get("kept") == b"safe"
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_connection_opened_read_only_is_replaced_after_a_refused_write(tmp_path: Path) -> None:
    """SQLite opens a database read-only, without a word, when it cannot
    open it for writing: a thread's first connection made while the
    filesystem was read-only.  Its first refused write drops it, so that
    the thread's next write opens a writable one."""
    store = SqliteStorage(str(tmp_path / "db"))
    store.put("kept", b"safe")
    original = store._connect
    opened: list[str] = []

    def connect_as_on_a_read_only_filesystem() -> sqlite3.Connection:
        if not opened:
            opened.append("ro")
            return sqlite3.connect(f"file:{store.database}?mode=ro", uri=True, isolation_level=None)
        opened.append("rw")
        return original()

    store.close()
    store._connect = connect_as_on_a_read_only_filesystem  # type: ignore[method-assign]
    with pytest.raises(StorageError, match="cannot write: attempt to write a readonly database"):
        store.put("new", b"x")
    store.put("new", b"x")
    assert store.get("new") == b"x" and store.get("kept") == b"safe"
    assert opened == ["ro", "rw"]
    store.close()


def test_cache_and_view_pass_transactions_through(tmp_path: Path) -> None:
    class Versions:
        def __init__(self) -> None:
            self.counts: dict[str, int] = {}

        def key_version(self, key: str) -> int:
            return self.counts.get(key, 0)

        def bump_key_version(self, key: str) -> None:
            self.counts[key] = self.counts.get(key, 0) + 1

        def bump_key_version_if_unchanged(self, key: str, seen: int) -> int | None:
            unchanged = self.key_version(key) == seen
            self.bump_key_version(key)
            return self.key_version(key) if unchanged else None

    versions = Versions()
    cached = CachedStorage(SqliteStorage(str(tmp_path / "db")), versions)
    view = StorageView(cached, "logical/x/")
    view.put("a", b"1")
    assert view.get("a") == b"1"  # now cached
    view.transaction([Put("a", b"2"), Put("b", b"3")])
    assert view.get("a") == b"2"
    assert versions.counts["logical/x/a"] == 2
    assert versions.counts["logical/x/b"] == 1


def test_open_storage_sqlite(tmp_path: Path) -> None:
    store = open_storage("sqlite", {"path": str(tmp_path / "db")})
    assert isinstance(store, SqliteStorage)
    with pytest.raises(ValueError, match="path"):
        open_storage("sqlite", {})


def test_checkpoint_at_stop_leaves_everything_in_the_database_file(tmp_path: Path) -> None:
    """What the master does once its workers are gone: the log is emptied
    into vaultd.db, so that file alone holds every acknowledged write."""
    store = SqliteStorage(str(tmp_path))
    for i in range(50):
        store.put(f"k/{i}", b"v" * 300)
    wal = tmp_path / "vaultd.db-wal"
    assert wal.stat().st_size > 0
    store.checkpoint_at_stop()
    assert wal.stat().st_size == 0
    copy = tmp_path / "copy.db"
    copy.write_bytes((tmp_path / "vaultd.db").read_bytes())  # the file alone, no log beside it
    conn = sqlite3.connect(copy)
    try:
        assert conn.execute("SELECT count(*) FROM kv WHERE key LIKE 'k/%'").fetchone()[0] == 50
    finally:
        conn.close()
    store.close()
