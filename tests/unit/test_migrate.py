"""``vaultd operator migrate``: a store built by a real Core goes file →
sqlite → file and comes back whole, every key byte for byte, and still
unseals with the same key; a non-empty destination and a source in use by a
server are refused without touching either side."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from vaultd import migrate
from vaultd.api.app import create_app
from vaultd.core.core import Core, CoreSettings
from vaultd.core.seal_state import SharedSealState
from vaultd.server import dev_bootstrap
from vaultd.server import main as vaultd_main
from vaultd.storage import FileStorage, SqliteStorage, Storage

POLICY = 'path "secret/data/app/*" {\n  capabilities = ["read"]\n}\n'


class Api:
    def __init__(self, core: Core, token: str) -> None:
        self.core = core
        self.token = token
        self.client: FlaskClient = create_app(core).test_client()

    def call(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        response = self.client.open(f"/v1/{path}", method=method, headers={"X-Vault-Token": token or self.token},
                                    json=body)
        return response.status_code, (response.get_json(silent=True) if response.data else None)

    def ok(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        status, data = self.call(method, path, body, token)
        assert status in (200, 204), (method, path, status, data)
        return data


def open_store(kind: str, path: Path) -> Storage:
    return FileStorage(str(path)) if kind == "file" else SqliteStorage(str(path), background_checkpoints=False)


def dump(storage: Storage) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for key in storage.keys():
        value = storage.get(key)
        assert value is not None
        out[key] = value
    if isinstance(storage, SqliteStorage):
        storage.close()
    return out


def write_config(path: Path, src: tuple[str, Path], dst: tuple[str, Path]) -> Path:
    path.write_text(
        f'storage_source "{src[0]}" {{\n  path = "{src[1]}"\n}}\n'
        f'storage_destination "{dst[0]}" {{\n  path = "{dst[1]}"\n}}\n'
    )
    return path


def run(config: Path, *extra: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = migrate.main(str(config), reset="-reset" in extra, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def populated(tmp_path: Path) -> dict[str, Any]:
    """A file store holding KV v2 versions, a token, a mount and a policy."""
    core = Core(FileStorage(str(tmp_path / "src")), SharedSealState.create(lock_memory=False),
                CoreSettings(storage_type="file"))
    unseal_key, root = dev_bootstrap(core)
    api = Api(core, root)
    for version in range(1, 4):
        api.ok("POST", "secret/data/app/db", {"data": {"password": f"pw-{version}", "n": version}})
    api.ok("POST", "sys/mounts/kv1", {"type": "kv", "options": {"version": "1"}})
    api.ok("POST", "kv1/plain", {"value": "v1-value"})
    api.ok("PUT", "sys/policies/acl/app", {"policy": POLICY})
    token = api.ok("POST", "auth/token/create", {"policies": ["app"]})["auth"]["client_token"]
    return {"unseal_key": unseal_key, "root": root, "token": token, "path": tmp_path / "src"}


def reopen(kind: str, path: Path, unseal_key: str, root: str) -> Api:
    """A new Core (a restarted server) on the migrated store, unsealed with the original key."""
    core = Core(open_store(kind, path), SharedSealState.create(lock_memory=False), CoreSettings(storage_type=kind))
    core.lifecycle.submit_share(base64.b64decode(unseal_key))
    core.begin()
    return Api(core, root)


def test_round_trip_file_sqlite_file_keeps_everything(tmp_path: Path, populated: dict[str, Any]) -> None:
    src = populated["path"]
    original = dump(FileStorage(str(src)))
    assert len(original) > 10

    code, out, err = run(write_config(tmp_path / "to-sqlite.hcl", ("file", src), ("sqlite", tmp_path / "db")))
    assert code == 0, err
    assert out.rstrip().endswith(migrate.SUCCESS)
    assert f"Copying {len(original)} keys" in out
    assert dump(open_store("sqlite", tmp_path / "db")) == original

    code, out, err = run(write_config(tmp_path / "back.hcl", ("sqlite", tmp_path / "db"), ("file", tmp_path / "back")))
    assert code == 0, err
    assert dump(FileStorage(str(tmp_path / "back"))) == original

    for kind, path in (("sqlite", tmp_path / "db"), ("file", tmp_path / "back")):
        api = reopen(kind, path, populated["unseal_key"], populated["root"])
        for version in range(1, 4):
            data = api.ok("GET", f"secret/data/app/db?version={version}")["data"]["data"]
            assert data == {"password": f"pw-{version}", "n": version}
        assert api.ok("GET", "secret/metadata/app/db")["data"]["current_version"] == 3
        assert api.ok("GET", "kv1/plain")["data"] == {"value": "v1-value"}
        assert "kv1/" in api.ok("GET", "sys/mounts")["data"]
        assert api.ok("GET", "sys/policies/acl/app")["data"]["policy"] == POLICY
        assert api.ok("GET", "secret/data/app/db", token=populated["token"])["data"]["data"]["n"] == 3
        assert api.ok("GET", "auth/token/lookup-self", token=populated["token"])["data"]["policies"] == [
            "app", "default"]


def test_a_non_empty_destination_is_refused_then_reset(tmp_path: Path, populated: dict[str, Any]) -> None:
    dest = open_store("sqlite", tmp_path / "db")
    dest.put("stale/key", b"old bytes")
    assert isinstance(dest, SqliteStorage)
    dest.close()
    config = write_config(tmp_path / "m.hcl", ("file", populated["path"]), ("sqlite", tmp_path / "db"))

    code, _out, err = run(config)
    assert code == 1
    assert "Error migrating" in err and "not empty (1 keys)" in err and "-reset" in err
    assert dump(open_store("sqlite", tmp_path / "db")) == {"stale/key": b"old bytes"}

    code, _out, err = run(config, "-reset")
    assert code == 0, err
    after = dump(open_store("sqlite", tmp_path / "db"))
    assert "stale/key" not in after
    assert after == dump(FileStorage(str(populated["path"])))


@pytest.fixture
def held_by_server(populated: dict[str, Any]) -> Iterator[Path]:
    """Another process holding the source's server lock as `vaultd server`'s master does."""
    code = (
        "import sys\n"
        "from vaultd.storage import serverlock\n"
        "serverlock.hold_for_server(sys.argv[1])\n"
        "print('held', flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(populated["path"])], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield populated["path"]
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)


def test_refused_while_a_server_holds_the_source(tmp_path: Path, held_by_server: Path) -> None:
    config = write_config(tmp_path / "m.hcl", ("file", held_by_server), ("sqlite", tmp_path / "db"))
    code, _out, err = run(config)
    assert code == 1
    assert "in use by a running vaultd server" in err and str(held_by_server) in err
    assert not (tmp_path / "db" / "vaultd.db").exists()


def test_refused_while_a_server_holds_the_destination(tmp_path: Path, populated: dict[str, Any]) -> None:
    other = tmp_path / "other"
    code = "import sys\nfrom vaultd.storage import serverlock\nserverlock.hold_for_server(sys.argv[1])\n" \
           "print('held', flush=True)\nsys.stdin.read()\n"
    proc = subprocess.Popen([sys.executable, "-c", code, str(other)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        config = write_config(tmp_path / "m.hcl", ("file", populated["path"]), ("file", other))
        rc, _, err = run(config)
        assert rc == 1 and "destination" in err and "in use" in err
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)
    assert dump(FileStorage(str(other))) == {}


def test_config_errors_name_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "m.hcl"
    config.write_text('storage_source "file" {\n  path = "/x"\n}\nstorage_destination "inmem" {}\n')
    code, _, err = run(config)
    assert code == 1
    assert f"{config}:4: storage_destination.inmem: unsupported storage type 'inmem'" in err
    config.write_text('storage_source "file" {\n  path = "/x"\n}\n')
    code, _, err = run(config)
    assert code == 1 and "storage_destination: exactly one storage_destination block is required" in err


def test_a_missing_source_is_refused_not_created(tmp_path: Path) -> None:
    config = write_config(tmp_path / "m.hcl", ("file", tmp_path / "nope"), ("sqlite", tmp_path / "db"))
    code, _, err = run(config)
    assert code == 1 and "does not exist" in err
    assert not (tmp_path / "nope").exists()


def test_the_command_is_wired_into_vaultd(tmp_path: Path, populated: dict[str, Any],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path / "m.hcl", ("file", populated["path"]), ("sqlite", tmp_path / "db"))
    assert vaultd_main(["operator", "migrate", "-config", str(config)]) == 0
    assert capsys.readouterr().out.rstrip().endswith(migrate.SUCCESS)
    assert vaultd_main(["operator", "migrate", "-config", str(config)]) == 1  # now not empty
    assert vaultd_main(["operator", "migrate", "-config", str(config), "-reset"]) == 0


def test_progress_bar_on_a_terminal_only(tmp_path: Path) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, pipe = Tty(), io.StringIO()
    for out in (tty, pipe):
        bar = migrate.Progress(out, 4, "Copying")
        bar.update(2, force=True)
        bar.finish()
    assert "\rCopying [###############---------------] 2/4 keys (50%)" in tty.getvalue()
    assert "4/4 keys (100%)\n" in tty.getvalue()
    assert pipe.getvalue() == ""


def test_in_place_file_to_sqlite_for_the_package_upgrade(tmp_path: Path, populated: dict[str, Any]) -> None:
    """The package's new default config is sqlite on the old file directory:
    migrating in place makes that directory sqlite's, atomically."""
    from vaultd.storage import open_storage

    src = populated["path"]
    original = dump(FileStorage(str(src)))
    assert isinstance(open_storage("sqlite", {"path": str(src)}), FileStorage)  # served as file until migrated
    (src / migrate.STAGING_DIR).mkdir()
    (src / migrate.STAGING_DIR / "vaultd.db").write_bytes(b"left by an interrupted run")
    config = write_config(tmp_path / "m.hcl", ("file", src), ("sqlite", src))

    code, out, err = run(config)
    assert code == 0, err
    assert "left as it was" in out
    assert not (src / migrate.STAGING_DIR).exists()
    assert not (src / "vaultd.db-wal").exists()
    served = open_storage("sqlite", {"path": str(src)})
    assert isinstance(served, SqliteStorage)
    assert dump(served) == original
    assert dump(FileStorage(str(src))) == original  # the old store is untouched
    api = reopen("sqlite", src, populated["unseal_key"], populated["root"])
    assert api.ok("GET", "secret/data/app/db")["data"]["data"]["n"] == 3

    code, _, err = run(config)  # again: vaultd.db now holds the store
    assert code == 1 and "not empty" in err
    code, _, err = run(config, "-reset")
    assert code == 0, err
    assert dump(open_store("sqlite", src)) == original

    same = write_config(tmp_path / "same.hcl", ("file", src), ("file", src))
    code, _, err = run(same)
    assert code == 1 and "same store" in err
