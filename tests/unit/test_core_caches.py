"""What one worker caches (barrier state, mount table, engines) stays in
line with what other workers do, also while several threads of the worker
serve requests at once.

Two :class:`Core` objects over one storage and one shared seal state stand
for two gunicorn workers, as in the server.
"""

from __future__ import annotations

import logging
import threading
import time

import pytest

from vaultd.core.core import Core, CoreSettings
from vaultd.core.lifecycle import KEYRING, InitRequest
from vaultd.core.seal_state import SharedSealState
from vaultd.errors import NotFound, PermissionDenied, Sealed
from vaultd.logical import Operation, Request
from vaultd.storage.inmem import InmemStorage


class SlowKeyringStorage(InmemStorage):
    """Real in-memory storage whose keyring read takes a while, as a disk
    read under load does: it widens the window in which other threads of
    the same worker arrive while one is still catching up with an unseal."""

    def get(self, key: str) -> bytes | None:
        if key == KEYRING:
            time.sleep(0.05)
        return super().get(key)


KEYS: dict[int, bytes] = {}


def _workers(storage: InmemStorage | None = None) -> tuple[Core, Core, str]:
    storage = storage or InmemStorage()
    shared = SharedSealState.create(lock_memory=False)
    first, second = Core(storage, shared, CoreSettings()), Core(storage, shared, CoreSettings())
    result = first.init(InitRequest(secret_shares=1, secret_threshold=1))
    KEYS[id(first)] = bytes.fromhex(result["keys"][0])
    first.lifecycle.submit_share(KEYS[id(first)])
    return first, second, result["root_token"]


def _write(core: Core, token: str, path: str, data: dict) -> None:
    core.handle(token, Request(operation=Operation.UPDATE, path=path, data=data))


def _read(core: Core, token: str, path: str) -> dict | None:
    return core.handle(token, Request(operation=Operation.READ, path=path)).data


def test_every_thread_of_a_worker_sees_an_unseal_made_elsewhere() -> None:
    _, second, _ = _workers(SlowKeyringStorage())
    start = threading.Barrier(16)
    sealed: list[int] = []

    def request(n: int) -> None:
        start.wait()
        try:
            second.begin()
        except Sealed:
            sealed.append(n)

    threads = [threading.Thread(target=request, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sealed == [], f"{len(sealed)} threads were told 'sealed' after the unseal"


def test_a_worker_sees_mounts_another_worker_made() -> None:
    first, second, token = _workers()
    second.begin()
    assert "kv/" not in second.list_mounts(token)
    first.enable_mount(token, "kv/", "kv", "", {"version": "2"}, {})
    second.begin()
    _write(second, token, "kv/data/app", {"data": {"a": "1"}})
    assert _read(first, token, "kv/data/app")["data"] == {"a": "1"}


def test_a_remount_at_the_same_path_gets_a_fresh_engine() -> None:
    first, second, token = _workers()
    first.enable_mount(token, "kv/", "kv", "", {"version": "2"}, {})
    second.begin()
    _write(second, token, "kv/data/app", {"data": {"a": "1"}})  # second now has a kv v2 engine cached

    first.disable_mount(token, "kv/")
    first.enable_mount(token, "kv/", "kv", "", {"version": "1"}, {})
    second.begin()
    with pytest.raises(NotFound):
        _read(second, token, "kv/data/app")  # the old data went with the old mount
    _write(second, token, "kv/plain", {"v": "1"})  # and this is kv v1 now
    assert _read(first, token, "kv/plain") == {"v": "1"}


def test_sealing_and_unsealing_elsewhere_is_followed() -> None:
    first, second, token = _workers()
    first.enable_mount(token, "kv/", "kv", "", {"version": "1"}, {})
    second.begin()
    _write(second, token, "kv/x", {"v": "1"})
    first.seal(token)
    with pytest.raises(Sealed):
        second.begin()
    first.lifecycle.submit_share(KEYS[id(first)])
    second.begin()
    assert _read(second, token, "kv/x") == {"v": "1"}


# -- read memos: plaintext and parsed values kept per stored value -------------------


def _kv2(first: Core, token: str) -> None:
    first.enable_mount(token, "kv/", "kv", "", {"version": "2"}, {})


def test_a_worker_reads_what_another_worker_wrote_after_it_cached_the_old_value() -> None:
    first, second, token = _workers()
    _kv2(first, token)
    _write(first, token, "kv/data/app", {"data": {"v": "one"}})
    for _ in range(3):  # the second read is served from the memos
        assert _read(second, token, "kv/data/app")["data"] == {"v": "one"}
    _write(first, token, "kv/data/app", {"data": {"v": "two"}})
    body = _read(second, token, "kv/data/app")
    assert body["data"] == {"v": "two"}
    assert body["metadata"]["version"] == 2


def test_a_token_revoked_in_one_worker_is_refused_by_another_that_cached_it() -> None:
    first, second, token = _workers()
    child = first.tokens.create(first.authenticate(token), {"policies": ["default"]})[0]
    assert second.authenticate(child).policies == ["default"]
    assert second.authenticate(child).policies == ["default"]
    first.tokens.revoke(first.authenticate(child))
    with pytest.raises(PermissionDenied):
        second.authenticate(child)


def test_changing_a_looked_up_token_entry_does_not_change_the_next_lookup() -> None:
    first, _, token = _workers()
    entry = first.authenticate(token)
    entry.policies.append("extra")
    entry.children.append("nobody")
    entry.num_uses = 7
    again = first.authenticate(token)
    assert (again.policies, again.children, again.num_uses) == (["root"], [], 0)


def test_changing_a_read_response_does_not_change_the_next_read() -> None:
    first, _, token = _workers()
    _kv2(first, token)
    _write(first, token, "kv/data/app", {"data": {"v": "one"}})
    _read(first, token, "kv/data/app")["metadata"]["version"] = 99
    assert _read(first, token, "kv/data/app")["metadata"]["version"] == 1


def test_a_seal_in_one_worker_wipes_an_idle_worker_s_keys_and_plaintext() -> None:
    first, second, token = _workers()
    _kv2(first, token)
    _write(first, token, "kv/data/app", {"data": {"v": "secret-value"}})
    _read(second, token, "kv/data/app")
    assert second.barrier._plaintexts._memo, "the read should have left plaintext in the memo"
    stop = threading.Event()
    second.watch_seal(interval=0.05, stop=stop)
    first.seal(token)
    # The sealing worker drops its own at once; the idle one within its watch.
    assert first.barrier.sealed and not first.barrier._plaintexts._memo
    deadline = time.monotonic() + 10
    while not second.barrier.sealed and time.monotonic() < deadline:
        time.sleep(0.02)
    assert second.barrier.sealed
    assert not second.barrier._plaintexts._memo
    assert second.router._cached is None, "engines (and their parsed reads) must go with the seal"
    stop.set()


def test_a_lasting_failure_of_the_seal_watch_is_logged_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    first, _, _ = _workers()
    calls: list[int] = []

    def broken() -> bool:
        calls.append(1)
        raise OSError("disk gone")

    monkeypatch.setattr(first.lifecycle, "refresh", broken)
    caplog.set_level(logging.WARNING, logger="vaultd.core")
    stop = threading.Event()
    first.watch_seal(interval=0.01, stop=stop)
    deadline = time.monotonic() + 10
    while len(calls) < 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    assert len(calls) >= 10
    warnings = [r for r in caplog.records if "seal watch" in r.getMessage()]
    assert [r.getMessage() for r in warnings] == ["seal watch: OSError"]
