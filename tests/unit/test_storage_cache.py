"""The shared read cache stays exact when other processes write."""

from __future__ import annotations

import os
from pathlib import Path

from vaultd.core.seal_state import SharedSealState
from vaultd.storage.cache import CachedStorage, DecodeMemo
from vaultd.storage.file import FileStorage


class CountingStorage(FileStorage):
    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.reads = 0

    def get(self, key: str) -> bytes | None:
        self.reads += 1
        return super().get(key)


def test_repeated_reads_are_served_from_the_cache(tmp_path: Path) -> None:
    """What a worker wrote is cached as it wrote it (write-through), what it
    read once is cached too, absent keys included."""
    shared = SharedSealState.create(lock_memory=False)
    inner = CountingStorage(str(tmp_path))
    cache = CachedStorage(inner, shared)
    cache.put("a/b", b"one")
    assert [cache.get("a/b") for _ in range(5)] == [b"one"] * 5
    assert cache.get("missing") is None and cache.get("missing") is None
    assert inner.reads == 1
    cache.delete("a/b")
    assert cache.get("a/b") is None
    assert inner.reads == 1


class RacedStorage(FileStorage):
    """Another worker writes the same key right after this one's write and
    before this one's bump: the window write-through must not cache in."""

    def __init__(self, path: str, shared: SharedSealState) -> None:
        super().__init__(path)
        self.root = path
        self.shared = shared

    def put(self, key: str, value: bytes) -> None:
        super().put(key, value)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child: the other worker
            CachedStorage(FileStorage(self.root), self.shared).put(key, b"theirs")
            os._exit(0)
        os.waitpid(pid, 0)


def test_a_write_that_lands_between_our_write_and_our_bump_is_not_hidden(tmp_path: Path) -> None:
    """Caching "mine" here would serve it after "theirs" was acknowledged."""
    shared = SharedSealState.create(lock_memory=False)
    cache = CachedStorage(RacedStorage(str(tmp_path), shared), shared)
    cache.put("k", b"mine")
    assert cache.get("k") == b"theirs"


def test_a_write_in_another_process_is_seen_at_once(tmp_path: Path) -> None:
    shared = SharedSealState.create(lock_memory=False)
    cache = CachedStorage(FileStorage(str(tmp_path)), shared)
    cache.put("k", b"v1")
    assert cache.get("k") == b"v1"
    for value in (b"v2", b"v3"):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child: another worker writing
            other = CachedStorage(FileStorage(str(tmp_path)), shared)
            other.put("k", value)
            os._exit(0)
        os.waitpid(pid, 0)
        assert cache.get("k") == value
    pid = os.fork()
    if pid == 0:  # pragma: no cover
        CachedStorage(FileStorage(str(tmp_path)), shared).delete("k")
        os._exit(0)
    os.waitpid(pid, 0)
    assert cache.get("k") is None


def test_the_cache_is_bounded(tmp_path: Path) -> None:
    shared = SharedSealState.create(lock_memory=False)
    cache = CachedStorage(FileStorage(str(tmp_path)), shared, max_entries=10)
    for i in range(25):
        cache.put(f"k{i}", b"x")
        cache.get(f"k{i}")
    assert len(cache._cache) <= 10


def test_a_full_cache_drops_its_oldest_entry_not_everything(tmp_path: Path) -> None:
    shared = SharedSealState.create(lock_memory=False)
    cache = CachedStorage(FileStorage(str(tmp_path)), shared, max_entries=10)
    for i in range(11):
        cache.put(f"k{i}", b"x")
        cache.get(f"k{i}")
    assert sorted(cache._cache) == sorted(f"k{i}" for i in range(1, 11))


def test_the_decode_memo_is_bounded_and_keyed_on_the_stored_object() -> None:
    memo: DecodeMemo[str] = DecodeMemo(max_entries=3)
    calls: list[bytes] = []

    def decode(raw: bytes) -> str:
        calls.append(raw)
        return raw.decode()

    first = b"one"
    assert memo.get("a", first, decode) == "one"
    assert memo.get("a", first, decode) == "one"
    assert calls == [first]  # the same object: not decoded again
    assert memo.get("a", bytes(bytearray(b"one")), decode) == "one"
    assert len(calls) == 2  # equal bytes but another object: a new read, decoded
    for key in "bcd":
        memo.get(key, key.encode(), decode)
    assert sorted(memo._memo) == ["b", "c", "d"]
