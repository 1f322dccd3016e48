from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vaultd.core.lifecycle import SEAL_CONFIG
from vaultd.errors import StorageError
from vaultd.storage import FileStorage, InmemStorage, SqliteStorage, Storage, StorageView, open_storage

Factory = Callable[[Path], Storage]

BACKENDS: dict[str, Factory] = {
    "inmem": lambda _: InmemStorage(),
    "file": lambda tmp: FileStorage(str(tmp / "store")),
    "view-inmem": lambda _: StorageView(InmemStorage(), "logical/abc/"),
    "view-file": lambda tmp: StorageView(FileStorage(str(tmp / "store")), "logical/abc/"),
    "sqlite": lambda tmp: SqliteStorage(str(tmp / "store")),
    "view-sqlite": lambda tmp: StorageView(SqliteStorage(str(tmp / "store")), "logical/abc/"),
}
# The in-memory backend takes any string as a key; everything else checks.
CHECKING = ["file", "view-inmem", "view-file", "sqlite", "view-sqlite"]

ODD_KEYS = [
    "ünïcødé/ключ/鍵",
    "emoji/🔑",
    "spaces in/a key",
    "percent/%2E%2e%25",
    "dots/./x",
    "dots/.",
    "dots/.hidden",
    "dots/...",
    "under/_",
    "under/__x",
    "under/_/y",
    ".locks",
    ".tmp-0123456789abcdef",
    "tilde/~",
    "ctl/nul\x00byte/tab\tnewline\n",
    "back\\slash",
    "colon:and;semi",
    "a" * 200,
]


@pytest.fixture(params=list(BACKENDS))
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    return BACKENDS[request.param](tmp_path)


@pytest.fixture(params=CHECKING)
def checking_storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    return BACKENDS[request.param](tmp_path)


@pytest.fixture
def file_storage(tmp_path: Path) -> FileStorage:
    return FileStorage(str(tmp_path / "store"))


def walk_keys(storage: Storage, prefix: str = "") -> Iterator[str]:
    for child in storage.list(prefix):
        if child.endswith("/"):
            yield from walk_keys(storage, prefix + child)
        else:
            yield prefix + child


# -- the contract every backend keeps -------------------------------------


def test_missing_key(storage: Storage) -> None:
    assert storage.get("nope") is None
    assert storage.get("no/such/key") is None
    storage.delete("nope")  # not an error
    storage.delete("no/such/key")


def test_put_get_overwrite_delete(storage: Storage) -> None:
    storage.put("foo", b"one")
    assert storage.get("foo") == b"one"
    storage.put("foo", bytearray(b"two"))
    value = storage.get("foo")
    assert value == b"two"
    assert isinstance(value, bytes)
    storage.delete("foo")
    assert storage.get("foo") is None


def test_empty_and_large_values(storage: Storage) -> None:
    storage.put("empty", b"")
    assert storage.get("empty") == b""
    big = os.urandom(1 << 20)
    storage.put("big", big)
    assert storage.get("big") == big


def test_list_direct_children_sorted(storage: Storage) -> None:
    assert storage.list("") == []
    for key in ["b", "a", "c/d", "c/e/f", "c/e/g", "z/y/x/w"]:
        storage.put(key, key.encode())
    assert storage.list("") == ["a", "b", "c/", "z/"]
    assert storage.list("c/") == ["d", "e/"]
    assert storage.list("c/e/") == ["f", "g"]
    assert storage.list("z/") == ["y/"]
    assert storage.list("z/y/x/") == ["w"]
    assert storage.list("nothing/") == []
    assert storage.list("c/d/") == []


def test_key_and_folder_of_the_same_name(storage: Storage) -> None:
    storage.put("a", b"value")
    storage.put("a/b", b"child")
    assert storage.list("") == ["a", "a/"]
    assert storage.get("a") == b"value"
    storage.delete("a")
    assert storage.list("") == ["a/"]
    assert storage.get("a/b") == b"child"


def test_folders_vanish_with_their_last_key(storage: Storage) -> None:
    storage.put("x/y/z", b"1")
    storage.put("x/w", b"2")
    storage.delete("x/y/z")
    assert storage.list("x/") == ["w"]
    storage.delete("x/w")
    assert storage.list("") == []
    storage.put("x/y/z", b"3")  # and can come back
    assert storage.list("x/y/") == ["z"]


def test_odd_keys_round_trip_and_stay_distinct(storage: Storage) -> None:
    for index, key in enumerate(ODD_KEYS):
        storage.put(key, f"value {index}".encode())
    for index, key in enumerate(ODD_KEYS):
        assert storage.get(key) == f"value {index}".encode(), key
    assert sorted(walk_keys(storage)) == sorted(ODD_KEYS)
    assert storage.list("dots/") == [".", "...", "./", ".hidden"]
    assert storage.list("under/") == ["_", "_/", "__x"]


def test_lock_is_reentrant(storage: Storage) -> None:
    with storage.lock("k"), storage.lock("k"), storage.lock("k"):
        storage.put("k", b"1")
    with storage.lock(), storage.lock(), storage.lock("anything"):
        storage.put("k", b"2")
    assert storage.get("k") == b"2"


@pytest.mark.parametrize("name", ["counter", ""])
def test_lock_serialises_threads(storage: Storage, name: str) -> None:
    storage.put("counter", b"0")

    def work() -> None:
        for _ in range(40):
            with storage.lock(name):
                value = int(storage.get("counter") or b"0")
                storage.put("counter", str(value + 1).encode())

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert storage.get("counter") == b"240"


# -- key checking ---------------------------------------------------------

BAD_KEYS = ["", "/", "/a", "a/", "a//b", "..", "a/..", "../a", "a/../b", "bad\udc80surrogate"]
BAD_PREFIXES = ["a", "/", "/a/", "a//", "../", "a/../", "\udc80/"]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_rejected(checking_storage: Storage, key: str) -> None:
    with pytest.raises(ValueError):
        checking_storage.put(key, b"x")
    with pytest.raises(ValueError):
        checking_storage.get(key)
    with pytest.raises(ValueError):
        checking_storage.delete(key)


@pytest.mark.parametrize("prefix", BAD_PREFIXES)
def test_bad_prefixes_rejected(checking_storage: Storage, prefix: str) -> None:
    with pytest.raises(ValueError):
        checking_storage.list(prefix)


def test_non_string_key_rejected(checking_storage: Storage) -> None:
    with pytest.raises(TypeError):
        checking_storage.get(b"bytes")  # type: ignore[arg-type]


# -- file backend specifics -----------------------------------------------


def all_paths(root: Path) -> list[Path]:
    return [root, *root.rglob("*")]


def test_files_stay_inside_the_root(tmp_path: Path) -> None:
    store = FileStorage(str(tmp_path / "store"))
    for key in ODD_KEYS:
        store.put(key, b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]
    for path in all_paths(tmp_path / "store"):
        assert path.resolve().is_relative_to((tmp_path / "store").resolve())
        assert not path.is_symlink()
    # No key produced a hidden name (those are reserved for temp and lock files).
    top = {p.name for p in (tmp_path / "store").iterdir()}
    assert {name for name in top if name.startswith(".")} == {".locks"}


def test_too_long_segment_is_rejected(file_storage: FileStorage) -> None:
    with pytest.raises(ValueError):
        file_storage.put("é" * 100, b"x")  # 600 bytes once percent-encoded
    file_storage.put("é" * 40, b"x")
    assert file_storage.list("") == ["é" * 40]


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077, 0o277])
def test_modes_regardless_of_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        store = FileStorage(str(tmp_path / "store"))
        store.put("a/b/c", b"secret")
        store.put("top", b"secret")
        with store.lock("x"), store.lock("x"):
            pass
        with store.lock():
            pass
    finally:
        os.umask(old)
    paths = all_paths(tmp_path / "store")
    assert len([p for p in paths if p.is_file()]) == 2 + 64  # values + lock stripes
    for path in paths:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))


@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_missing_parents_of_the_data_path_are_made_0700(tmp_path: Path, umask: int) -> None:
    """``/srv/vaultd/data`` on a fresh host: every directory vaultd makes on
    the way is private, whatever the umask; one that was there is untouched."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    old = os.umask(umask)
    try:
        FileStorage(str(shared / "a" / "b" / "store")).put("k", b"v")
    finally:
        os.umask(old)
    for made in (shared / "a", shared / "a" / "b", shared / "a" / "b" / "store"):
        assert stat.S_IMODE(made.stat().st_mode) == 0o700, made
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755


def test_existing_root_mode_is_left_alone(tmp_path: Path) -> None:
    # Packaging owns /var/lib/vaultd; the backend must not fight it.
    root = tmp_path / "store"
    root.mkdir(mode=0o750)
    root.chmod(0o750)
    FileStorage(str(root)).put("k", b"v")
    assert stat.S_IMODE(root.stat().st_mode) == 0o750


def test_data_survives_reopening(tmp_path: Path) -> None:
    FileStorage(str(tmp_path / "store")).put("a/b", b"kept")
    again = FileStorage(str(tmp_path / "store"))
    assert again.get("a/b") == b"kept"
    assert again.list("a/") == ["b"]


def test_list_ignores_leftovers_of_a_crash(file_storage: FileStorage) -> None:
    root = Path(file_storage.path)
    file_storage.put("dir/key", b"v")
    (root / "dir" / ".tmp-deadbeef00000000").write_bytes(b"torn")
    (root / "empty" / "deeper").mkdir(parents=True)  # mkdir done, then killed
    (root / "stale").mkdir()
    (root / "stale" / ".tmp-0000000000000000").write_bytes(b"never renamed")
    (root / "lost+found").mkdir()
    (root / "stray.txt").write_bytes(b"not ours")
    assert file_storage.list("") == ["dir/"]
    assert file_storage.list("dir/") == ["key"]
    assert file_storage.list("stale/") == []
    assert file_storage.get("stale") is None


def test_delete_prunes_empty_directories(file_storage: FileStorage) -> None:
    root = Path(file_storage.path)
    file_storage.put("a/b/c/d", b"1")
    file_storage.put("a/x", b"2")
    file_storage.delete("a/b/c/d")
    assert sorted(p.name for p in root.iterdir()) == [".locks", "a"]
    assert [p.name for p in (root / "a").iterdir()] == ["_x"]
    file_storage.delete("a/x")
    assert [p.name for p in root.iterdir()] == [".locks"]


def test_failed_write_leaves_no_partial_state(file_storage: FileStorage) -> None:
    root = Path(file_storage.path)
    file_storage.put("blocked", b"old")
    # A plain file where the directory for "blocked/..." would go.
    (root / "blocked").write_bytes(b"in the way")
    with pytest.raises(StorageError) as info:
        file_storage.put("blocked/child", b"secret-value")
    assert "secret-value" not in str(info.value)
    assert file_storage.get("blocked/child") is None
    assert file_storage.get("blocked") == b"old"
    assert not [p for p in root.rglob(".tmp-*")]


def test_nested_different_names_refused(file_storage: FileStorage) -> None:
    with file_storage.lock("a"), pytest.raises(RuntimeError), file_storage.lock("b"):
        pass
    with file_storage.lock("a"), pytest.raises(RuntimeError), file_storage.lock(""):
        pass
    # Holding everything allows anything.
    with file_storage.lock(""), file_storage.lock("a"), file_storage.lock("b"):
        pass
    # And the refused attempts left nothing held behind.
    done = threading.Event()

    def other() -> None:
        with file_storage.lock(""):
            done.set()

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert done.is_set()


def test_subtree_locks_allow_nesting(file_storage: FileStorage) -> None:
    with file_storage.lock("a/"), file_storage.lock("b"), file_storage.lock("c/d"):
        pass
    with file_storage.lock("a/"), file_storage.lock(""):
        pass


def test_view_prefixes_lock_names(file_storage: FileStorage) -> None:
    view = StorageView(file_storage, "kv/")
    with file_storage.lock("kv/x"), view.lock("x"):
        pass  # the same name: re-entered
    with file_storage.lock("kv/"), view.lock():
        pass
    with file_storage.lock("x"), pytest.raises(RuntimeError), view.lock("x"):
        pass


# -- views ----------------------------------------------------------------


def test_view_is_confined_to_its_prefix() -> None:
    inner = InmemStorage()
    inner.put("outside", b"o")
    inner.put("logical/other/k", b"other mount")
    view = StorageView(inner, "logical/mine/")
    view.put("k", b"v")
    view.put("dir/k2", b"v2")
    assert inner.get("logical/mine/k") == b"v"
    assert inner.get("logical/mine/dir/k2") == b"v2"
    assert view.get("outside") is None
    assert view.list("") == ["dir/", "k"]
    assert view.list("dir/") == ["k2"]
    view.delete("k")
    assert inner.get("logical/mine/k") is None
    assert inner.get("logical/other/k") == b"other mount"
    for escape in ["../other/k", "../../outside", ""]:
        with pytest.raises(ValueError):
            view.get(escape)


@pytest.mark.parametrize("prefix", ["", "mine", "/mine/", "a//", "../"])
def test_view_prefix_checked(prefix: str) -> None:
    with pytest.raises(ValueError):
        StorageView(InmemStorage(), prefix)


def test_nested_views() -> None:
    inner = InmemStorage()
    view = StorageView(StorageView(inner, "a/"), "b/")
    view.put("c", b"1")
    assert inner.get("a/b/c") == b"1"


# -- open_storage ---------------------------------------------------------


def test_open_storage(tmp_path: Path) -> None:
    assert isinstance(open_storage("inmem", {}), InmemStorage)
    store = open_storage("file", {"path": str(tmp_path / "data")})
    assert isinstance(store, FileStorage)
    store.put("k", b"v")
    assert (tmp_path / "data" / "_k").read_bytes() == b"v"


@pytest.mark.parametrize("options", [{}, {"path": ""}])
def test_open_storage_file_needs_path(options: dict[str, str]) -> None:
    with pytest.raises(ValueError, match='"path"'):
        open_storage("file", options)


def test_open_storage_unknown_kind() -> None:
    with pytest.raises(ValueError) as info:
        open_storage("consul", {})
    assert "consul" in str(info.value)
    assert '"file"' in str(info.value) and '"inmem"' in str(info.value)


# -- sqlite, the default, over a directory the file backend already holds --


def file_server_dir(tmp_path: Path) -> Path:
    """A directory as an initialised ``file`` server leaves it: the seal
    config that ``operator init`` writes first, and a secret."""
    data = tmp_path / "lib"
    store = FileStorage(str(data))
    store.put(SEAL_CONFIG, b'{"type": "shamir"}')
    store.put("logical/abc/secret", b"ciphertext")
    return data


def test_sqlite_over_file_data_serves_it_with_the_file_backend(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = file_server_dir(tmp_path)
    with caplog.at_level("WARNING", logger="vaultd.storage"):
        store = open_storage("sqlite", {"path": str(data)})
    assert isinstance(store, FileStorage)
    assert store.get("logical/abc/secret") == b"ciphertext"
    assert not (data / "vaultd.db").exists()
    assert [r.getMessage() for r in caplog.records] == [
        f"found file-backend data in {data}; serving it with the file backend; "
        "run vaultd operator migrate to move it to sqlite"
    ]


def test_sqlite_database_wins_over_file_data(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Once ``vaultd.db`` exists (after ``operator migrate``), sqlite serves
    the directory, whatever file-backend data is left beside it."""
    data = file_server_dir(tmp_path)
    SqliteStorage(str(data)).put("migrated", b"1")
    with caplog.at_level("WARNING", logger="vaultd.storage"):
        store = open_storage("sqlite", {"path": str(data)})
    assert isinstance(store, SqliteStorage) and store.get("migrated") == b"1"
    assert store.get("logical/abc/secret") is None
    assert not caplog.records


@pytest.mark.parametrize("layout", ["missing", "empty", "uninitialised file store"])
def test_sqlite_without_file_data_is_sqlite(tmp_path: Path, layout: str) -> None:
    data = tmp_path / "lib"
    if layout == "empty":
        data.mkdir()
    elif layout == "uninitialised file store":
        with FileStorage(str(data)).lock("x"):  # leaves the lock directory
            pass
        (data / "core").mkdir(exist_ok=True)
    store = open_storage("sqlite", {"path": str(data)})
    assert isinstance(store, SqliteStorage)
    store.put("k", b"v")
    assert (data / "vaultd.db").is_file()
    assert stat.S_IMODE((data / "vaultd.db").stat().st_mode) == 0o600


def test_keys_walks_every_key_in_order(storage: Storage) -> None:
    for key in ["b", "a/x", "a/y/z", "a.b", "c/d"]:
        storage.put(key, b"v")
    assert list(storage.keys()) == ["a.b", "a/x", "a/y/z", "b", "c/d"]
    assert list(storage.keys("a/")) == ["a/x", "a/y/z"]
    assert list(storage.keys("nothing/")) == []
