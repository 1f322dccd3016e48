"""``vaultd operator migrate`` against a real server's store: refused while
the server runs, then file → sqlite offline, and a server on the sqlite copy
unseals with the same keys and serves the same data."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.integration.support import VAULTD, ServerFactory, write_config

SUCCESS = "Success! All of the keys have been migrated."


def migrate(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VAULTD), "operator", "migrate", "-config", str(config), *extra],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_file_to_sqlite_with_a_real_server(server_factory: ServerFactory, tmp_path: Path) -> None:
    server = server_factory(workers=2, storage="file")
    init = server.init()
    server.unseal(init.keys[:3])
    root = init.root_token
    server.call("POST", "sys/mounts/secret", status=204, token=root,
                json_body={"type": "kv", "options": {"version": "2"}})
    for version in (1, 2):
        server.call("POST", "secret/data/app/db", token=root, json_body={"data": {"password": f"pw-{version}"}})
    for i in range(50):
        server.call("POST", f"secret/data/bulk/{i}", token=root, json_body={"data": {"i": i}})
    server.call("PUT", "sys/policies/acl/app", status=204, token=root,
                json_body={"policy": 'path "secret/data/app/*" { capabilities = ["read"] }'})
    token = server.call("POST", "auth/token/create", token=root, json_body={"policies": ["app"]})["auth"][
        "client_token"]

    source, dest = server.directory / "data", tmp_path / "sqlite-data"
    config = tmp_path / "migrate.hcl"
    config.write_text(f'storage_source "file" {{\n  path = "{source}"\n}}\n'
                      f'storage_destination "sqlite" {{\n  path = "{dest}"\n}}\n')

    refused = migrate(config)
    assert refused.returncode == 1, refused
    assert "in use by a running vaultd server" in refused.stderr and str(source) in refused.stderr
    assert not (dest / "vaultd.db").exists()
    assert server.alive()

    server.stop()
    done = migrate(config)
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith(SUCCESS)
    for secret in init.secrets:
        assert secret not in done.stdout + done.stderr

    write_config(server.directory, server.port, workers=2, storage="sqlite", data_dir=dest)
    server.start()
    assert server.seal_status()["sealed"] is True
    server.unseal(init.keys[2:5])  # another three of the same five shares
    assert server.call("GET", "secret/data/app/db?version=1", token=root)["data"]["data"] == {"password": "pw-1"}
    assert server.call("GET", "secret/data/app/db", token=token)["data"]["data"] == {
        "password": "pw-2"}
    assert server.call("GET", "secret/data/bulk/49", token=root)["data"]["data"] == {"i": 49}
    assert len(server.call("LIST", "secret/metadata/bulk", token=root)["data"]["keys"]) == 50

    # Now the sqlite store is the one in use: migrating back is refused too.
    back = tmp_path / "back.hcl"
    back.write_text(f'storage_source "sqlite" {{\n  path = "{dest}"\n}}\n'
                    f'storage_destination "file" {{\n  path = "{tmp_path / "file-again"}"\n}}\n')
    refused = migrate(back)
    assert refused.returncode == 1 and "in use by a running vaultd server" in refused.stderr
