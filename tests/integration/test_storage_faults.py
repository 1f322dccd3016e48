"""Storage faults under a real ``vaultd server`` on ``storage "sqlite"``:

- a full disk (a small tmpfs filled to the brim): writes fail with a 5xx and
  Vault's ``{"errors": [...]}``, reads go on, the process stays up, nothing
  acknowledged is lost, and writes work again once space returns;
- a corrupted database at start: refused with the file named, the server
  exits non-zero and never answers a request;
- a database locked by another process: writes wait, then fail with a 5xx
  instead of hanging, reads go on meanwhile, and the store is intact after;
- a read-only filesystem (an ext4 image on a loop device that the kernel
  forces read-only, as it does on a failing disk): writes fail with a 5xx,
  reads go on, every process stays up, nothing acknowledged is lost; and a
  server started on a read-only filesystem refuses to start, naming it.
"""

from __future__ import annotations

import concurrent.futures
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.integration.support import VAULTD, InitResult, Server, ServerFactory, fill_up, small_tmpfs

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


def settled_workers(server: Server, count: int, quiet: float = 1.5) -> set[int]:
    """The worker pids once ``count`` of them have stayed the same for ``quiet``
    seconds (the master polls the seal state every 0.2 s)."""
    deadline = time.monotonic() + 30
    pids, since = server.worker_pids(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = server.worker_pids()
        if now != pids:
            pids, since = now, time.monotonic()
        elif len(pids) == count and time.monotonic() - since >= quiet:
            return pids
    raise AssertionError(server.explain(f"the workers did not settle: {pids}"))


def assert_vault_5xx(server: Server, response: requests.Response) -> None:
    assert 500 <= response.status_code < 600, server.explain(f"expected a 5xx, got {response.status_code}")
    body = response.json()
    assert isinstance(body.get("errors"), list) and body["errors"], body


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path, "4m") as mount:
        yield mount


def test_full_disk_fails_writes_keeps_reads_and_recovers(server_factory: ServerFactory, small_disk: Path) -> None:
    server = server_factory(workers=2, storage="sqlite", data_dir=small_disk / "data")
    init = ready(server)
    root = init.root_token
    acknowledged: dict[str, int] = {}
    for i in range(20):
        server.call("POST", f"secret/data/before/{i}", token=root, json_body={"data": {"i": i}})
        acknowledged[f"before/{i}"] = i

    fill_up(small_disk / "filler")
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


# -- a read-only filesystem ----------------------------------------------------------

IMAGE_SIZE = 64 * 1024 * 1024


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


@dataclass
class Ext4Disk:
    """An ext4 filesystem of its own (an image file on a loop device),
    mounted ``errors=remount-ro`` as Debian's installer mounts the root.

    Linux refuses an administrator's ``mount -o remount,ro`` (and the
    per-mount ``bind,remount,ro``) with EBUSY while any file on it is open
    for writing, which SQLite's always are: while vaultd runs, the only way
    its filesystem becomes read-only is the kernel's own, on an error from
    the disk.  ``force_read_only`` takes that path (ext4's
    ``trigger_fs_error``: the error a failing disk would raise), so what
    vaultd sees is what it would see on a real failing disk."""

    image: Path
    mount: Path

    def device(self) -> str:
        done = run("findmnt", "-n", "-o", "SOURCE", "--mountpoint", str(self.mount))
        assert done.returncode == 0, done.stderr
        return os.path.basename(done.stdout.strip())

    def attach(self, *options: str) -> None:
        done = run("mount", "-t", "ext4", "-o", ",".join(["loop", "errors=remount-ro", *options]),
                   str(self.image), str(self.mount))
        assert done.returncode == 0, done.stderr

    def force_read_only(self) -> None:
        Path(f"/sys/fs/ext4/{self.device()}/trigger_fs_error").write_text("vaultd test: a failing disk\n")
        with pytest.raises(OSError) as raised:
            (self.mount / "probe").write_bytes(b"x")
        assert raised.value.errno == 30, raised.value  # EROFS

    def remount(self, mode: str) -> None:
        done = run("mount", "-o", f"remount,{mode}", str(self.mount))
        assert done.returncode == 0, done.stderr

    def repair(self) -> None:
        """What an operator does once the disk is healthy again: unmount
        (possible only with vaultd stopped), check, mount."""
        done = run("umount", str(self.mount))
        assert done.returncode == 0, done.stderr
        fsck = run("e2fsck", "-f", "-y", str(self.image))
        assert fsck.returncode in (0, 1), fsck.stdout + fsck.stderr  # 1: errors corrected
        self.attach()


@pytest.fixture
def ext4_disk(tmp_path: Path) -> Iterator[Ext4Disk]:
    """Requested before ``server_factory``, so torn down after its servers."""
    if os.geteuid() != 0:
        pytest.skip("mounting a filesystem image needs root")
    for tool in ("mkfs.ext4", "e2fsck", "findmnt"):
        if run("which", tool).returncode != 0:
            pytest.skip(f"{tool} is not installed (e2fsprogs, util-linux)")
    disk = Ext4Disk(image=tmp_path / "ext4.img", mount=tmp_path / "ext4")
    disk.mount.mkdir()
    with open(disk.image, "wb") as image:
        image.truncate(IMAGE_SIZE)
    made = run("mkfs.ext4", "-q", "-F", str(disk.image))
    assert made.returncode == 0, made.stderr
    mounted = run("mount", "-t", "ext4", "-o", "loop,errors=remount-ro", str(disk.image), str(disk.mount))
    if mounted.returncode != 0:
        pytest.skip(f"cannot loop-mount an ext4 image here: {mounted.stderr.strip()}")
    try:
        if not Path(f"/sys/fs/ext4/{disk.device()}/trigger_fs_error").exists():
            pytest.skip("this kernel has no /sys/fs/ext4/*/trigger_fs_error to make a filesystem fail")
        yield disk
    finally:
        if run("umount", str(disk.mount)).returncode != 0:
            run("umount", "-l", str(disk.mount))


def test_read_only_filesystem_fails_writes_keeps_reads(ext4_disk: Ext4Disk, server_factory: ServerFactory) -> None:
    """The kernel turns the data directory's filesystem read-only under a
    running server.  Writes fail with a 5xx and Vault's errors body, reads
    (the cross-worker cache and SQLite's reads from the read-only disk) go
    on, and no process dies.

    Writes come back only after a restart: ext4 never makes a filesystem
    it forced read-only writable again before it is unmounted and checked
    (``mount -o remount,rw`` leaves it ``emergency_ro``), and it cannot be
    unmounted while vaultd holds its database open, so the operator's path
    is stop, ``e2fsck``, mount, start, and then every acknowledged write is
    there and none of the refused ones."""
    server = server_factory(workers=2, storage="sqlite", data_dir=ext4_disk.mount / "data")
    init = ready(server)
    root = init.root_token
    # The master may replace both workers once after an init and unseal
    # that fell between two of its polls (it cannot tell whether a seal came
    # between them); the workers that write below must be the ones that
    # meet the read-only disk, holding the lock files they opened.
    settled_workers(server, 2)
    acknowledged: dict[str, int] = {}
    for i in range(20):
        server.call("POST", f"secret/data/before/{i}", token=root, json_body={"data": {"i": i}})
        acknowledged[f"before/{i}"] = i
    child = server.call("POST", "auth/token/create", token=root, json_body={"ttl": "1h"})["auth"]["client_token"]
    workers = server.worker_pids()

    ext4_disk.force_read_only()
    refused: list[requests.Response] = []
    for i in range(8):  # several, so that both workers meet it
        refused.append(server.request("POST", f"secret/data/refused/{i}", token=root, json_body={"data": {"i": i}}))
    for i in range(20):
        # Keys written before, whose lock files the worker that wrote each
        # holds open: these reach SQLite, whose log cannot grow on the disk
        # (or whose connection, opened since, SQLite made read-only).
        refused.append(server.request("POST", f"secret/data/before/{i}", token=root, json_body={"data": {"i": -1}}))
    refused.append(server.request("POST", "auth/token/create", token=root, json_body={"ttl": "1h"}))
    refused.append(server.request("POST", "sys/mounts/other", token=root, json_body=KV_MOUNT))
    for response in refused:
        assert_vault_5xx(server, response)
        assert "Read-only file system" in response.text, response.text
        assert "refused" not in response.text and "before" not in response.text  # no key in the message
    # Both kinds met: a lock file that cannot be made, and SQLite's log that cannot grow.
    assert any("cannot write" in r.text for r in refused), [r.text for r in refused]

    # Let the background checkpointers (once a second) meet it too.
    time.sleep(3)
    assert server.alive() and server.worker_pids() == workers, server.explain("a process died")
    for _ in range(2):  # each read twice, on new connections: both workers
        for path, i in acknowledged.items():
            assert server.call("GET", f"secret/data/{path}", token=root)["data"]["data"]["i"] == i
    assert server.call("GET", "secret/data/before/3", token=child)["data"]["data"] == {"i": 3}
    listed = server.call("LIST", "secret/metadata/before", token=root)["data"]["keys"]
    assert sorted(listed) == sorted(str(i) for i in range(20))
    assert server.seal_status()["sealed"] is False
    assert server.alive() and server.worker_pids() == workers, server.explain("a process died")

    server.stop()
    ext4_disk.repair()
    server.start()
    server.unseal(init.keys)
    for path, i in acknowledged.items():
        assert server.call("GET", f"secret/data/{path}", token=root)["data"]["data"]["i"] == i
    for i in range(8):
        assert server.request("GET", f"secret/data/refused/{i}", token=root).status_code == 404
    server.call("POST", "secret/data/after", token=root, json_body={"data": {"ok": True}})
    assert server.call("GET", "secret/data/after", token=child)["data"]["data"] == {"ok": True}
    server.stop()
    with sqlite3.connect(ext4_disk.mount / "data" / "vaultd.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    for secret in [*init.secrets, child]:
        assert secret not in server.log_text()


def test_a_server_refuses_to_start_on_a_read_only_filesystem(
    ext4_disk: Ext4Disk, server_factory: ServerFactory
) -> None:
    """Started on a filesystem mounted read-only, vaultd refuses to start,
    naming the database and the cause, rather than come up serving reads
    with every write failing.  An operator expects the latter to fail
    loudly: unseal, logins, token creation and lease renewals all write,
    so such a server looks healthy (its health and seal-status answer)
    while nobody can log in; a unit that fails at start is what systemd,
    monitoring and the operator see at once.  It is also what Vault does
    with its integrated storage, which cannot open its database there."""
    data = ext4_disk.mount / "data"
    server = server_factory(workers=2, storage="sqlite", data_dir=data)
    init = ready(server)
    server.call("POST", "secret/data/kept", token=init.root_token, json_body={"data": {"v": 1}})
    server.stop()

    ext4_disk.remount("ro")
    done = subprocess.run([str(VAULTD), "server", "--config", str(server.config)], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL, cwd=server.directory)
    assert done.returncode != 0, done
    assert str(data / "vaultd.db") in done.stderr, done.stderr
    assert "Read-only file system" in done.stderr, done.stderr
    assert "Error starting vaultd" in done.stderr and "Traceback" not in done.stderr, done.stderr
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url("sys/seal-status"), timeout=2)

    ext4_disk.remount("rw")
    server.start()
    server.unseal(init.keys)
    assert server.call("GET", "secret/data/kept", token=init.root_token)["data"]["data"] == {"v": 1}
    server.call("POST", "secret/data/after", token=init.root_token, json_body={"data": {"v": 2}})
