"""A real multi-worker ``vaultd server`` on ``storage "postgresql"``: the
lifecycle, KV v2 and tokens; a PostgreSQL restart in the middle of a stream
of writes (500s while it is down, service again after, no acknowledged write
lost, no vaultd restart); and ``operator migrate`` sqlite → postgresql →
sqlite with the same unseal keys."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import requests

from tests.integration.support import (
    VAULTD,
    Server,
    ServerFactory,
    requests_on_every_worker,
    wait_for,
    write_config,
)
from tests.postgres_fixtures import PostgresCluster

SUCCESS = "Success! All of the keys have been migrated."
PG_PASSWORD = "pg-password-never-logged"


def postgresql_block(url: str) -> str:
    return f'storage "postgresql" {{\n  connection_url = "{url}"\n  max_parallel = 8\n}}'


def use_postgresql(server: Server, url: str) -> None:
    """Point ``server``'s config at ``url`` (support.write_config knows the disk backends only)."""
    write_config(server.directory, server.port, workers=2, threads=4, storage="inmem")
    text = server.config.read_text().replace('storage "inmem" {}', postgresql_block(url))
    server.config.write_text(text)


def pg_server(server_factory: ServerFactory, url: str, name: str = "pg") -> Server:
    server = server_factory(workers=2, threads=4, storage="inmem", start=False, name=name)
    use_postgresql(server, url)
    server.start()
    return server


def migrate(config: Path, *extra: str) -> tuple[int, str, str]:
    import subprocess

    done = subprocess.run([str(VAULTD), "operator", "migrate", "-config", str(config), *extra],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)
    return done.returncode, done.stdout, done.stderr


def test_server_on_postgresql_survives_a_postgresql_restart(
    server_factory: ServerFactory, pg_url: str, postgres: PostgresCluster
) -> None:
    # trust authentication ignores the password; it is here to be looked for in the log
    server = pg_server(server_factory, pg_url.replace("postgres@", f"postgres:{PG_PASSWORD}@"))
    assert server.seal_status()["storage_type"] == "postgresql"
    init = server.init()
    server.unseal(init.keys[:3])
    root = init.root_token
    server.call("POST", "sys/mounts/secret", status=204, token=root,
                json_body={"type": "kv", "options": {"version": "2"}})
    for version in (1, 2, 3):
        server.call("POST", "secret/data/app", token=root, json_body={"data": {"v": version}})
    assert server.call("GET", "secret/data/app?version=2", token=root)["data"]["data"] == {"v": 2}
    token = server.call("POST", "auth/token/create", token=root, json_body={"policies": ["default"]})["auth"][
        "client_token"]
    assert server.call("GET", "auth/token/lookup-self", token=token)["data"]["policies"] == ["default"]

    acknowledged: dict[int, int] = {}
    failures: list[int] = []
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                response = server.request("POST", f"secret/data/stream/{i % 20}", token=root,
                                          json_body={"data": {"i": i}}, timeout=30)
            except requests.RequestException:
                failures.append(-1)
                continue
            if response.status_code == 200:
                acknowledged[i % 20] = i
            else:
                assert response.status_code >= 500, response.text
                assert response.json()["errors"], response.text
                failures.append(response.status_code)
            time.sleep(0.01)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        wait_for(lambda: len(acknowledged) >= 5, "writes before the restart")
        # Every worker serves once since the unseal, and so reads the audit
        # table: a worker whose first request came while PostgreSQL is down
        # would refuse it failing closed, with the audit's "internal error"
        # (as Vault's) rather than the storage's message checked below.
        requests_on_every_worker(server, "GET", "auth/token/lookup-self", token=root)
        postgres.stop()
        down = server.request("POST", "secret/data/during", token=root, json_body={"data": {"x": 1}})
        assert down.status_code == 500, server.explain(down.text)
        assert down.json()["errors"] and "postgresql storage" in down.json()["errors"][0]
        wait_for(lambda: failures, "a failed write while PostgreSQL is down")
        postgres.start()
        before = len(acknowledged), max(acknowledged.values())
        wait_for(lambda: max(acknowledged.values()) > before[1] + 10, "writes acknowledged after the restart",
                 timeout=30)
    finally:
        stop.set()
        thread.join(60)
        if not postgres.running():
            postgres.start()
    assert server.alive()
    for slot, last in acknowledged.items():
        got = server.call("GET", f"secret/data/stream/{slot}", token=root)["data"]["data"]["i"]
        assert got >= last, f"slot {slot}: acknowledged {last}, read {got}"
    assert server.call("GET", "auth/token/lookup-self", token=token)["data"]["policies"] == ["default"]
    assert server.call("GET", "secret/data/app", token=root)["data"]["data"] == {"v": 3}
    # Sealed and unsealed again: everything came from PostgreSQL, not a cache.
    server.call("PUT", "sys/seal", status=204, token=root)
    server.unseal(init.keys[1:4])
    assert server.call("GET", "secret/data/app?version=1", token=root)["data"]["data"] == {"v": 1}
    assert PG_PASSWORD not in server.log_text()


def test_migrate_sqlite_postgresql_sqlite(server_factory: ServerFactory, pg_url: str, tmp_path: Path) -> None:
    server = server_factory(workers=2, threads=4, storage="sqlite")
    init = server.init()
    server.unseal(init.keys[:3])
    root = init.root_token
    server.call("POST", "sys/mounts/secret", status=204, token=root,
                json_body={"type": "kv", "options": {"version": "2"}})
    for i in range(30):
        server.call("POST", f"secret/data/bulk/{i}", token=root, json_body={"data": {"i": i}})
    token = server.call("POST", "auth/token/create", token=root, json_body={"policies": ["default"]})["auth"][
        "client_token"]
    server.stop()

    sqlite_dir = server.directory / "data"
    to_pg = tmp_path / "to-pg.hcl"
    to_pg.write_text(f'storage_source "sqlite" {{\n  path = "{sqlite_dir}"\n}}\n'
                     f'storage_destination "postgresql" {{\n  connection_url = "{pg_url}"\n}}\n')
    code, out, err = migrate(to_pg)
    assert code == 0, err
    assert out.rstrip().endswith(SUCCESS)
    for secret in init.secrets:
        assert secret not in out + err

    pg = pg_server(server_factory, pg_url, name="on-pg")
    assert pg.seal_status()["sealed"] is True
    pg.unseal(init.keys[2:5])
    assert pg.call("GET", "secret/data/bulk/29", token=root)["data"]["data"] == {"i": 29}
    assert pg.call("GET", "auth/token/lookup-self", token=token)["data"]["policies"] == ["default"]
    pg.call("POST", "secret/data/added-on-pg", token=root, json_body={"data": {"pg": True}})

    back_dir = tmp_path / "sqlite-again"
    back = tmp_path / "back.hcl"
    back.write_text(f'storage_source "postgresql" {{\n  connection_url = "{pg_url}"\n}}\n'
                    f'storage_destination "sqlite" {{\n  path = "{back_dir}"\n}}\n')
    code, _, err = migrate(back)
    assert code == 1 and "in use by a running vaultd server" in err, err
    assert pg_url not in err
    pg.stop()
    code, out, err = migrate(back)
    assert code == 0, err
    # The destination now holds data: a second run is refused without -reset.
    code, _, err = migrate(to_pg)
    assert code == 1 and "not empty" in err and "-reset" in err

    again = server_factory(workers=2, threads=4, storage="sqlite", data_dir=back_dir, start=True, name="again")
    again.unseal(init.keys[:3])
    assert again.call("GET", "secret/data/added-on-pg", token=root)["data"]["data"] == {"pg": True}
    assert len(again.call("LIST", "secret/metadata/bulk", token=root)["data"]["keys"]) == 30
