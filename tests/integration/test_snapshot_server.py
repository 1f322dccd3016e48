"""Online snapshots against a real ``vaultd server`` on sqlite with several
workers: ``vaultctl operator snapshot save`` while writers write, more
writes, ``restore``, and the server comes back (sealed, then unsealed with
its keys) holding exactly the snapshot's data."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.integration.support import Server, ServerFactory

VAULTCTL = Path(sys.executable).parent / "vaultctl"
WRITERS = 4


def _vaultctl(server: Server, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VAULT_ADDR": server.addr, "VAULT_TOKEN": token, "HOME": str(server.directory)}
    return subprocess.run([str(VAULTCTL), *args], capture_output=True, text=True, env=env, timeout=300, check=False)


def _value(server: Server, token: str, name: str) -> int | None:
    response = server.request("GET", f"secret/data/{name}", token=token)
    if response.status_code == 404:
        return None
    return int(server.expect(response, 200)["data"]["data"]["n"])


def test_snapshot_save_and_restore_under_concurrent_writes(server_factory: ServerFactory, tmp_path: Path) -> None:
    server = server_factory(workers=2, storage="sqlite")
    init = server.init(shares=3, threshold=2)
    server.unseal(init.keys[:2])
    root = init.root_token
    server.call("POST", "sys/mounts/secret", 204, token=root, json_body={"type": "kv", "options": {"version": "2"}})
    for i in range(100):
        server.call("POST", f"secret/data/seed{i}", token=root, json_body={"data": {"n": i}})

    # Each writer counts up its own secret; acked[n] is the last value the
    # server acknowledged.
    acked = [0] * WRITERS
    stop = threading.Event()
    failures: list[str] = []

    def writer(n: int) -> None:
        value = 0
        while not stop.is_set():
            value += 1
            response = server.request("POST", f"secret/data/w{n}", token=root, json_body={"data": {"n": value}})
            if response.status_code != 200:
                failures.append(f"{response.status_code} {response.text[:200]}")
                return
            acked[n] = value

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    for thread in threads:
        thread.start()
    try:
        while min(acked) < 5:
            time.sleep(0.01)
        before = list(acked)
        snap = tmp_path / "backup.snap"
        started = time.monotonic()
        result = _vaultctl(server, root, "operator", "snapshot", "save", str(snap))
        took = time.monotonic() - started
        after = list(acked)
        time.sleep(0.3)  # writes go on after the snapshot too
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert result.returncode == 0, result.stderr
    assert not failures, failures
    print(f"snapshot save took {took:.3f} s under {WRITERS} writers ({snap.stat().st_size} bytes)")
    assert snap.stat().st_mode & 0o777 == 0o600
    assert snap.read_bytes()[:16] == b"SQLite format 3\x00"
    assert not list(tmp_path.glob(".vaultd-snapshot-*"))

    # More changes after the snapshot: a new secret, a new policy, a deleted seed.
    server.call("POST", "secret/data/after", token=root, json_body={"data": {"n": 1}})
    policy = 'path "x" { capabilities = ["read"] }'
    server.call("PUT", "sys/policy/after", 204, token=root, json_body={"policy": policy})
    server.call("DELETE", "secret/metadata/seed0", 204, token=root)

    result = _vaultctl(server, root, "operator", "snapshot", "restore", str(snap))
    assert result.returncode == 0, result.stderr
    # Sealed in every worker (each request lands on whichever accepts first).
    for _ in range(6):
        assert server.seal_status()["sealed"] is True
        assert server.request("GET", "secret/data/seed1", token=root).status_code == 503
    server.unseal(init.keys[1:3])

    # Exactly the snapshot's data, from every worker.
    restored = [_value(server, root, f"w{n}") for n in range(WRITERS)]
    for n in range(WRITERS):
        value = restored[n]
        assert value is not None and before[n] <= value <= after[n] + 1, (n, before, value, after)
        metadata = server.call("GET", f"secret/metadata/w{n}", token=root)["data"]
        assert metadata["current_version"] == value
    for _ in range(4):
        assert [_value(server, root, f"w{n}") for n in range(WRITERS)] == restored
        assert _value(server, root, "seed0") == 0
        assert server.request("GET", "secret/data/after", token=root).status_code == 404
        assert server.request("GET", "sys/policy/after", token=root).status_code == 404
    for i in range(100):
        assert _value(server, root, f"seed{i}") == i

    # The server writes on after the restore.
    server.call("POST", "secret/data/w0", token=root, json_body={"data": {"n": 10**6}})
    assert _value(server, root, "w0") == 10**6


def test_refusals_over_http(server_factory: ServerFactory, tmp_path: Path) -> None:
    server = server_factory(workers=2, storage="sqlite")
    init = server.init(shares=1, threshold=1)
    server.unseal(init.keys)
    root = init.root_token
    plain = server.call("POST", "auth/token/create", token=root, json_body={"policies": ["default"]})
    token = plain["auth"]["client_token"]
    result = _vaultctl(server, token, "operator", "snapshot", "save", str(tmp_path / "no.snap"))
    assert result.returncode == 2 and "403" in result.stderr
    assert not list(tmp_path.glob("*.snap")) and not list(tmp_path.glob(".vaultd-snapshot-*"))
    garbage = tmp_path / "garbage.snap"
    garbage.write_bytes(b"SQLite format 3\x00" + os.urandom(4096))
    result = _vaultctl(server, root, "operator", "snapshot", "restore", str(garbage))
    assert result.returncode == 2 and "400" in result.stderr, result.stderr
    assert server.seal_status()["sealed"] is False
    response = server.request("GET", "sys/storage/raft/snapshot")
    assert response.status_code == 403 and response.json()["errors"]


def test_the_documented_backup_token(server_factory: ServerFactory, tmp_path: Path) -> None:
    """README "Backups": a periodic token from a token role, whose policy
    allows saving (read + sudo) but not restoring; each save renews it."""
    server = server_factory(workers=2, storage="sqlite")
    init = server.init(shares=1, threshold=1)
    server.unseal(init.keys)
    root = init.root_token
    policy = 'path "sys/storage/raft/snapshot" {\n  capabilities = ["read", "sudo"]\n}\n'
    server.call("PUT", "sys/policy/snapshot", 204, token=root, json_body={"policy": policy})
    server.call("POST", "auth/token/roles/snapshot", 204, token=root,
                json_body={"allowed_policies": ["snapshot"], "orphan": True, "token_period": "48h"})
    created = server.call("POST", "auth/token/create/snapshot", token=root, json_body={"policies": ["snapshot"]})
    token = created["auth"]["client_token"]
    assert created["auth"]["lease_duration"] == 48 * 3600
    snap = tmp_path / "daily.snap"
    result = _vaultctl(server, token, "operator", "snapshot", "save", "-renew-token", str(snap))
    assert result.returncode == 0, result.stderr
    assert snap.stat().st_mode & 0o777 == 0o600
    result = _vaultctl(server, token, "operator", "snapshot", "restore", str(snap))
    assert result.returncode == 2 and "403" in result.stderr
    assert server.seal_status()["sealed"] is False
