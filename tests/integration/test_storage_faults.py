"""Storage faults under a real ``vaultd server`` on ``storage "sqlite"``:

- a full disk (a small tmpfs filled to the brim): writes fail with a 5xx and
  Vault's ``{"errors": [...]}``, reads go on, the process stays up, nothing
  acknowledged is lost, and writes work again once space returns;
- a corrupted database at start: refused with the file named, the server
  exits non-zero and never answers a request;
- a database locked by another process: writes wait, then fail with a 5xx
  instead of hanging, reads go on meanwhile, and the store is intact after.
"""

from __future__ import annotations

import concurrent.futures
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tests.integration.support import VAULTD, InitResult, Server, ServerFactory

KV_MOUNT = {"type": "kv", "options": {"version": "2"}}
LOCK_WAIT_BOUND = 90.0
"""A write blocked by a foreign lock must be answered within this (SQLite's
busy timeout is 30 s; the rest is slack for a loaded 2-core box)."""
WRITERS = 6


def ready(server: Server) -> InitResult:
    init = server.init(shares=1, threshold=1)
    server.unseal(init.keys)
    server.call("POST", "sys/mounts/secret", status=204, token=init.root_token, json_body=KV_MOUNT)
    return init


def assert_vault_5xx(server: Server, response: requests.Response) -> None:
    assert 500 <= response.status_code < 600, server.explain(f"expected a 5xx, got {response.status_code}")
    body = response.json()
    assert isinstance(body.get("errors"), list) and body["errors"], body


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path) -> None:
    """Write zeros until the filesystem says no more."""
    with open(path, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
        with pytest.raises(OSError):
            for _ in range(64):
                handle.write(b"\0" * 512)
                handle.flush()


def test_full_disk_fails_writes_keeps_reads_and_recovers(server_factory: ServerFactory, small_disk: Path) -> None:
    server = server_factory(workers=2, storage="sqlite", data_dir=small_disk / "data")
    init = ready(server)
    root = init.root_token
    acknowledged: dict[str, int] = {}
    for i in range(20):
        server.call("POST", f"secret/data/before/{i}", token=root, json_body={"data": {"i": i}})
        acknowledged[f"before/{i}"] = i

    fill(small_disk / "filler")
    failed: requests.Response | None = None
    payload = "x" * 8192
    for i in range(400):  # until the space SQLite had left (its log, its pages) is gone too
        body = {"data": {"i": i, "p": payload}}
        response = server.request("POST", f"secret/data/full/{i}", token=root, json_body=body)
        if response.status_code == 200:
            acknowledged[f"full/{i}"] = i
            continue
        failed = response
        break
    assert failed is not None, "writes never failed on a full disk"
    assert_vault_5xx(server, failed)
    assert "full" in " ".join(failed.json()["errors"]).lower() or "disk" in failed.text.lower(), failed.text
    for _ in range(3):
        again = server.request("POST", "secret/data/full/again", token=root, json_body={"data": {"p": payload}})
        assert_vault_5xx(server, again)

    # Let the background checkpointers (once a second) try a few times on the full disk.
    time.sleep(3)
    assert server.alive()
    for path, i in acknowledged.items():
        assert server.call("GET", f"secret/data/{path}", token=root)["data"]["data"]["i"] == i
    assert server.seal_status()["sealed"] is False

    (small_disk / "filler").unlink()
    server.call("POST", "secret/data/after", token=root, json_body={"data": {"ok": True}})
    assert server.call("GET", "secret/data/after", token=root)["data"]["data"] == {"ok": True}

    # Nothing acknowledged was lost, across a restart too.
    server.stop()
    server.start()
    server.unseal(init.keys)
    for path, i in acknowledged.items():
        assert server.call("GET", f"secret/data/{path}", token=root)["data"]["data"]["i"] == i
    for secret in init.secrets:
        assert secret not in server.log_text()


def corrupt_pages(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(db.read_bytes())
    page = 4096
    assert len(data) > 4 * page, len(data)
    for offset in range(page, len(data), page):
        data[offset:offset + 64] = b"\xa5" * 64
    db.write_bytes(bytes(data))


def corrupt_header(db: Path) -> None:
    data = bytearray(db.read_bytes())
    data[:100] = b"\x00" * 100
    db.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [corrupt_pages, corrupt_header], ids=["pages", "header"])
def test_a_corrupted_database_is_refused_at_start(
    server_factory: ServerFactory, damage: Callable[[Path], None]
) -> None:
    server = server_factory(workers=2, storage="sqlite")
    init = ready(server)
    for i in range(60):
        server.call("POST", f"secret/data/s/{i}", token=init.root_token, json_body={"data": {"v": "y" * 500}})
    server.stop()
    db = server.directory / "data" / "vaultd.db"
    assert callable(damage)
    damage(db)

    done = subprocess.run([str(VAULTD), "server", "--config", str(server.config)], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL, cwd=server.directory)
    assert done.returncode != 0, done
    assert str(db) in done.stderr, done.stderr
    assert "Error starting vaultd" in done.stderr and "Traceback" not in done.stderr, done.stderr
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url("sys/seal-status"), timeout=2)


HOLD_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


def test_a_locked_database_makes_writes_fail_cleanly(server_factory: ServerFactory) -> None:
    server = server_factory(workers=2, storage="sqlite")
    init = ready(server)
    root = init.root_token
    server.call("POST", "secret/data/kept", token=root, json_body={"data": {"v": 1}})
    db = server.directory / "data" / "vaultd.db"

    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(db)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        # Several writers at once, across both workers: each is answered
        # within about one busy timeout, not one timeout per writer ahead.
        def write(i: int) -> tuple[requests.Response, float]:
            started = time.monotonic()
            response = server.request("POST", f"secret/data/blocked/{i}", token=root,
                                      json_body={"data": {"v": i}}, timeout=LOCK_WAIT_BOUND * 3)
            return response, time.monotonic() - started

        with concurrent.futures.ThreadPoolExecutor(WRITERS) as pool:
            results = list(pool.map(write, range(WRITERS)))
        for blocked, waited in results:
            assert_vault_5xx(server, blocked)
            assert "database is locked" in blocked.text, blocked.text
            assert "blocked" not in blocked.text  # the key is not in the message
            assert waited < LOCK_WAIT_BOUND, [w for _, w in results]
        # Readers are not blocked by a writer's lock (WAL).
        assert server.call("GET", "secret/data/kept", token=root)["data"]["data"] == {"v": 1}
        assert server.alive()
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.close()
        holder.wait(timeout=30)

    server.call("POST", "secret/data/after", token=root, json_body={"data": {"v": 3}})
    assert server.call("GET", "secret/data/after", token=root)["data"]["data"] == {"v": 3}
    for i in range(WRITERS):
        assert server.request("GET", f"secret/data/blocked/{i}", token=root).status_code == 404
    server.stop()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
