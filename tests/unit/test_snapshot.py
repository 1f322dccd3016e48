"""Online snapshots (``sys/storage/raft/snapshot``) in process, over sqlite
storage: a consistent copy while writers write, restore, and refusals."""

from __future__ import annotations

import base64
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from vaultd.api.app import create_app
from vaultd.core import snapshot
from vaultd.core.core import Core, CoreSettings
from vaultd.core.seal_state import SharedSealState
from vaultd.server import dev_bootstrap
from vaultd.storage.file import FileStorage
from vaultd.storage.sqlite import SqliteStorage

SNAPSHOT_POLICY = 'path "sys/storage/raft/snapshot" { capabilities = ["read", "update", "sudo"] }'
NO_SUDO_POLICY = 'path "sys/storage/raft/snapshot" { capabilities = ["read", "update"] }'


class Server:
    """One core over its own storage, with its dev unseal key and root token."""

    def __init__(self, storage: Any) -> None:
        self.storage = storage
        self.shared = SharedSealState.create(lock_memory=False)
        self.core = Core(storage, self.shared, CoreSettings(storage_type="sqlite"))
        self.key_b64, self.root = dev_bootstrap(self.core)
        self.client: FlaskClient = create_app(self.core, max_request_size=None).test_client()

    def call(self, method: str, path: str, token: str | None = None, body: Any = None) -> tuple[int, Any]:
        response = self.client.open(f"/v1/{path}", method=method, headers={"X-Vault-Token": token or self.root},
                                    json=body)
        return response.status_code, (response.get_json(silent=True) if response.data else None)

    def write(self, name: str, value: str) -> None:
        status, body = self.call("POST", f"secret/data/{name}", body={"data": {"v": value}})
        assert status == 200, body

    def read(self, name: str) -> str | None:
        status, body = self.call("GET", f"secret/data/{name}")
        return None if status == 404 else str(body["data"]["data"]["v"])

    def save(self, token: str | None = None) -> tuple[int, bytes]:
        response = self.client.get("/v1/sys/storage/raft/snapshot", headers={"X-Vault-Token": token or self.root})
        return response.status_code, response.data

    def restore(self, data: bytes, *, force: bool = False, token: str | None = None) -> tuple[int, Any]:
        path = "snapshot-force" if force else "snapshot"
        response = self.client.post(f"/v1/sys/storage/raft/{path}", data=data,
                                    headers={"X-Vault-Token": token or self.root,
                                             "Content-Type": "application/octet-stream"})
        return response.status_code, response.get_json(silent=True)

    def unseal(self, key_b64: str | None = None) -> None:
        result = self.core.lifecycle.submit_share(base64.b64decode(key_b64 or self.key_b64))
        assert result["sealed"] is False, result

    def token_with(self, policy: str) -> str:
        assert self.call("PUT", "sys/policy/snap", body={"policy": policy})[0] == 204
        status, body = self.call("POST", "auth/token/create", body={"policies": ["snap"]})
        assert status == 200, body
        return str(body["auth"]["client_token"])


def _rows(path: Path) -> dict[str, bytes]:
    conn = sqlite3.connect(path)
    try:
        assert [r[0] for r in conn.execute("PRAGMA quick_check")] == ["ok"]
        return {k: bytes(v) for k, v in conn.execute("SELECT key, value FROM kv")}
    finally:
        conn.close()


@pytest.fixture
def server(tmp_path: Path) -> Server:
    return Server(SqliteStorage(str(tmp_path / "a")))


def test_save_while_writers_write_is_consistent_and_restores(server: Server, tmp_path: Path) -> None:
    for i in range(50):
        server.write(f"seed{i}", "0")
    stop = threading.Event()
    errors: list[BaseException] = []
    counters = [0, 0, 0]

    def writer(n: int) -> None:
        try:
            while not stop.is_set():
                counters[n] += 1
                # One transaction per write: the version and the metadata.
                server.write(f"w{n}", str(counters[n]))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    try:
        snaps = []
        for _ in range(3):
            status, data = server.save()
            assert status == 200
            snaps.append(data)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not errors
    assert all(counters)
    assert snaps[-1].startswith(b"SQLite format 3\x00")
    target = tmp_path / "snap.db"
    target.write_bytes(snaps[-1])
    rows = _rows(target)
    assert {"core/keyring", "core/root-key", "core/seal-config"} <= set(rows)
    # No temp file left behind.
    assert not list(Path(snapshot.tempfile.gettempdir()).glob("vaultd-snapshot-*"))

    # Into a second server, initialised with other keys: refused without
    # force, and restored with force; the first server's key unseals it.
    other = Server(SqliteStorage(str(tmp_path / "b")))
    other.write("only-in-b", "b")
    status, body = other.restore(snaps[-1])
    assert status == 400 and "different set of unseal keys" in body["errors"][0]
    assert other.read("only-in-b") == "b"
    status, body = other.restore(snaps[-1], force=True)
    assert status == 204, body
    assert other.call("GET", "sys/seal-status")[1]["sealed"] is True
    with pytest.raises(Exception):
        other.unseal()
    other.unseal(server.key_b64)
    other.root = server.root  # the snapshot's tokens, not b's
    # Every KV v2 version is whole: each writer's latest value in the
    # snapshot is a number, and the seeds are all there.
    for i in range(50):
        assert other.read(f"seed{i}") == "0"
    for n in range(3):
        value = other.read(f"w{n}")
        assert value is not None and 1 <= int(value) <= counters[n]
    assert other.read("only-in-b") is None
    status, body = other.call("GET", "secret/metadata/w0")
    assert status == 200 and body["data"]["current_version"] == int(str(other.read("w0")))


def test_restore_into_the_same_server_gives_exactly_the_snapshot(server: Server) -> None:
    server.write("kept", "1")
    server.write("changed", "before")
    status, data = server.save()
    assert status == 200
    server.write("changed", "after")
    server.write("added", "x")
    assert server.call("PUT", "sys/policy/later", body={"policy": SNAPSHOT_POLICY})[0] == 204
    status, body = server.restore(data)
    assert status == 204, body
    # Sealed: every worker drops its caches; the same key unseals.
    assert server.call("GET", "sys/seal-status")[1]["sealed"] is True
    assert server.call("GET", "secret/data/kept")[0] == 503
    server.unseal()
    assert server.read("kept") == "1"
    assert server.read("changed") == "before"
    assert server.read("added") is None
    assert server.call("GET", "sys/policy/later")[0] == 404
    assert server.call("GET", "secret/metadata/changed")[1]["data"]["current_version"] == 1


def test_restore_waits_for_a_read_modify_write_under_way(server: Server) -> None:
    """A KV v2 write that read the old metadata under its key's lock (as one
    in another worker would) must finish before the restore replaces the
    store; otherwise it writes what it read from the old store into the new.
    The lock is held here by hand, standing for that write."""
    server.write("busy", "before")
    status, data = server.save()
    assert status == 200
    server.write("busy", "after")
    restored = threading.Event()
    answer: list[Any] = []

    def restore() -> None:
        answer.append(server.restore(data))
        restored.set()

    mount_uuid = server.core.router.route("secret/data/busy")[0].uuid  # type: ignore[index]
    with server.core.physical.lock(f"logical/{mount_uuid}/meta/busy"):
        worker = threading.Thread(target=restore)
        worker.start()
        assert not restored.wait(1.0), "the restore replaced the store under a write's lock"
        assert server.call("GET", "sys/seal-status")[1]["sealed"] is False
    worker.join(30)
    assert answer and answer[0][0] == 204, answer
    server.unseal()
    assert server.read("busy") == "before"


def test_tokens_without_sudo_or_policy_are_refused(server: Server) -> None:
    no_sudo = server.token_with(NO_SUDO_POLICY)
    assert server.save(no_sudo)[0] == 403
    assert server.restore(b"x", token=no_sudo)[0] == 403
    status, body = server.call("POST", "auth/token/create", body={"policies": ["default"]})
    plain = body["auth"]["client_token"]
    assert server.save(plain)[0] == 403
    assert server.save("not-a-token")[0] == 403
    allowed = server.token_with(SNAPSHOT_POLICY)
    status, data = server.save(allowed)
    assert status == 200 and data.startswith(b"SQLite format 3")
    # snapshot-force is its own path, as in Vault.
    assert server.restore(data, force=True, token=allowed)[0] == 403


@pytest.mark.parametrize(
    "garbage",
    [b"", b"not a database", b"SQLite format 3\x00" + b"\x00" * 200, b"SQLite format 3\x00" + bytes(range(256)) * 40],
)
def test_a_garbage_file_is_a_400_that_changes_nothing(server: Server, garbage: bytes) -> None:
    server.write("k", "v")
    status, body = server.restore(garbage)
    assert status == 400, body
    assert body["errors"]
    assert server.call("GET", "sys/seal-status")[1]["sealed"] is False
    assert server.read("k") == "v"


def test_a_sqlite_file_that_is_not_a_snapshot_is_refused(server: Server, tmp_path: Path) -> None:
    server.write("k", "v")
    for n, statements in enumerate([
        ["CREATE TABLE other (a)"],
        ["CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB)", "INSERT INTO kv VALUES ('a/b', x'00')"],
        ["CREATE TABLE kv (key TEXT, value BLOB)", "INSERT INTO kv VALUES ('../x', x'00')"],
    ]):
        path = tmp_path / f"fake{n}.db"
        conn = sqlite3.connect(path)
        for statement in statements:
            conn.execute(statement)
        conn.commit()
        conn.close()
        status, body = server.restore(path.read_bytes())
        assert status == 400, body
    assert server.read("k") == "v"
    assert server.call("GET", "sys/seal-status")[1]["sealed"] is False


def test_file_storage_snapshot_restores_into_sqlite(tmp_path: Path) -> None:
    """One format for both backends."""
    source = Server(FileStorage(str(tmp_path / "f")))
    source.write("from-file", "yes")
    status, data = source.save()
    assert status == 200
    target = Server(SqliteStorage(str(tmp_path / "s")))
    assert target.restore(data, force=True)[0] == 204
    target.unseal(source.key_b64)
    target.root = source.root
    assert target.read("from-file") == "yes"


def test_snapshot_file_is_private(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "s.db"
    count = snapshot.save(server.core.physical, str(dest))
    assert count > 0
    assert dest.stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        snapshot.save(server.core.physical, str(dest))
