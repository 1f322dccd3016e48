"""The file backend against real processes: forked workers and ``kill -9``."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vaultd.storage import FileStorage, Storage

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")


def run_in_child(body: Callable[[], None]) -> int:
    """Fork, run ``body`` in the child, and never return into pytest there."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            body()
            code = 0
        finally:
            os._exit(code)
    return pid


def exit_code(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def walk(storage: Storage, prefix: str = "") -> Iterator[str]:
    for child in storage.list(prefix):
        if child.endswith("/"):
            yield from walk(storage, prefix + child)
        else:
            yield prefix + child


def increment(storage: Storage, name: str) -> None:
    with storage.lock(name):
        value = int(storage.get("counter") or b"0")
        storage.put("counter", str(value + 1).encode())


def test_forked_workers_never_lose_an_increment(tmp_path: Path) -> None:
    storage = FileStorage(str(tmp_path / "store"))
    # Open the lock files before forking, as a gunicorn master would: the
    # children must not keep sharing these descriptors.
    increment(storage, "counter")
    increment(storage, "")
    processes, threads_each, rounds = 4, 2, 25

    def worker() -> None:
        # Half the threads lock the name, half lock everything: both must
        # exclude each other across processes too.
        threads = [
            threading.Thread(
                target=lambda name=name: [increment(storage, name) for _ in range(rounds)]
            )
            for name in ("counter", "")[:threads_each]
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    pids = [run_in_child(worker) for _ in range(processes)]
    assert [exit_code(pid) for pid in pids] == [0] * processes
    assert storage.get("counter") == str(2 + processes * threads_each * rounds).encode()


def test_lock_held_across_fork_is_not_inherited(tmp_path: Path) -> None:
    storage = FileStorage(str(tmp_path / "store"))
    storage.put("order", b"")

    def append(mark: bytes) -> None:
        with storage.lock("order"):
            storage.put("order", (storage.get("order") or b"") + mark)

    with storage.lock("order"):
        pid = run_in_child(lambda: append(b"c"))
        # The child forked while we hold the lock; it must wait for us, so
        # whatever the scheduling, our mark comes first.
        time.sleep(0.2)
        storage.put("order", (storage.get("order") or b"") + b"p")
    assert exit_code(pid) == 0
    assert storage.get("order") == b"pc"


def test_delete_pruning_does_not_break_concurrent_puts(tmp_path: Path) -> None:
    storage = FileStorage(str(tmp_path / "store"))

    def churn(mine: str) -> None:
        for i in range(150):
            value = f"{mine} {i}".encode()
            storage.put(f"race/a/b/{mine}", value)
            if storage.get(f"race/a/b/{mine}") != value:
                raise AssertionError("lost a write")
            storage.delete(f"race/a/b/{mine}")

    pids = [run_in_child(lambda m=mine: churn(m)) for mine in ("k1", "k2", "k3")]
    assert [exit_code(pid) for pid in pids] == [0, 0, 0]
    assert storage.list("") == []


# -- kill -9 in the middle of a stream of writes ---------------------------

Op = tuple[str, str, bytes | None]


def make_value(key: str, round_no: int, index: int, payload: bytes) -> bytes:
    body = f"{key}|{round_no}|{index}|".encode() + payload
    return body + hashlib.sha256(body).digest()


def value_is_intact(key: str, value: bytes) -> bool:
    body, digest = value[:-32], value[-32:]
    return hashlib.sha256(body).digest() == digest and body.startswith(f"{key}|".encode())


def ops_for(round_no: int, count: int) -> list[Op]:
    rng = random.Random(round_no)
    ops: list[Op] = []
    for index in range(count):
        key = f"d{rng.randrange(3)}/s{rng.randrange(3)}/k{rng.randrange(25)}"
        if rng.random() < 0.2:
            ops.append(("delete", key, None))
        else:
            size = rng.choice([0, 10, 1000, 8000, 70000])
            ops.append(("put", key, make_value(key, round_no, index, rng.randbytes(size))))
    return ops


def apply(state: dict[str, bytes], op: Op) -> dict[str, bytes]:
    kind, key, value = op
    out = dict(state)
    if kind == "put":
        assert value is not None
        out[key] = value
    else:
        out.pop(key, None)
    return out


def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    path = str(tmp_path / "store")
    storage = FileStorage(path)
    model: dict[str, bytes] = {}
    rng = random.Random()
    for round_no in range(20):
        ops = ops_for(round_no, 1500)
        read_end, write_end = os.pipe()

        def writer(ops: list[Op] = ops, read_end: int = read_end, write_end: int = write_end) -> None:
            os.close(read_end)
            child = FileStorage(path)
            for index, (kind, key, value) in enumerate(ops):
                with child.lock(key):
                    if kind == "put":
                        assert value is not None
                        child.put(key, value)
                    else:
                        child.delete(key)
                # Acknowledge only once the call has returned.
                os.write(write_end, b"%d\n" % index)

        pid = run_in_child(writer)
        os.close(write_end)
        time.sleep(rng.uniform(0.0, 0.15))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        with os.fdopen(read_end, "rb") as pipe:
            acked = [int(line) for line in pipe.read().split()]
        assert acked == list(range(len(acked)))

        done = model
        for op in ops[: len(acked)]:
            done = apply(done, op)
        allowed = [done]
        if len(acked) < len(ops):
            allowed.append(apply(done, ops[len(acked)]))  # the write in flight

        found = {key: storage.get(key) for key in walk(storage)}
        for key, value in found.items():
            assert value is not None and value_is_intact(key, value), (round_no, key)
        assert found in allowed, (round_no, len(acked))
        model = found  # type: ignore[assignment]

        # The killed writer's flock died with it.
        with storage.lock(""):
            pass
