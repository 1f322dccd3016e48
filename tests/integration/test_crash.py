"""``kill -9`` of the whole server (master and every worker at once, as the
kernel's OOM killer or systemd's final SIGKILL does) in the middle of a
stream of KV writes, several times over.

The promise under test: a write the server acknowledged is on disk, with
its value, whatever happens after; a write it did not acknowledge may or
may not be there, but nothing is ever half there, and the server starts
and unseals cleanly every time.
"""

from __future__ import annotations

import random
import re
import threading
import time
from dataclasses import dataclass, field

import pytest
import requests

from tests.integration.support import InitResult, Server, ServerFactory, wait_for

ROUNDS = 5
WRITERS = 4


@dataclass
class Ledger:
    """What the server acknowledged, and anything it should never have said."""

    v1: dict[str, str] = field(default_factory=dict)
    """kv1 key -> value (every write goes to a fresh key)."""
    v2: dict[tuple[str, int], str] = field(default_factory=dict)
    """(kv2 key, version) -> value."""
    server_errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _writer(server: Server, token: str, ledger: Ledger, stop: threading.Event, round_no: int, n: int) -> None:
    shared_key = f"shared-{n % 2}"  # two writers per kv2 key: versions interleave
    i = 0
    while not stop.is_set():
        i += 1
        value = f"r{round_no}-w{n}-{i}-{random.random()}"
        try:
            if i % 2:
                key = f"r{round_no}/w{n}/{i}"
                response = server.request("PUT", f"kv1/{key}", token=token, json_body={"value": value}, timeout=5)
                if response.status_code == 204:
                    with ledger.lock:
                        ledger.v1[key] = value
            else:
                response = server.request("PUT", f"kv2/data/{shared_key}", token=token,
                                          json_body={"data": {"value": value}}, timeout=5)
                if response.status_code == 200:
                    version = response.json()["data"]["version"]
                    with ledger.lock:
                        ledger.v2[(shared_key, version)] = value
        except requests.RequestException:
            continue  # the server died under this request: not acknowledged
        if response.status_code >= 500 and response.status_code != 503:
            with ledger.lock:
                ledger.server_errors.append(f"{response.status_code} {response.text[:200]}")


def _verify(server: Server, token: str, ledger: Ledger) -> None:
    with ledger.lock:
        v1, v2 = dict(ledger.v1), dict(ledger.v2)
    for key, value in v1.items():
        response = server.request("GET", f"kv1/{key}", token=token)
        assert response.status_code == 200, server.explain(f"acknowledged kv1 write {key} lost: {response.text}")
        assert response.json()["data"] == {"value": value}, f"kv1 {key} has the wrong value"
    for (key, version), value in v2.items():
        response = server.request("GET", f"kv2/data/{key}?version={version}", token=token)
        assert response.status_code == 200, server.explain(
            f"acknowledged kv2 write {key} v{version} lost: {response.status_code} {response.text}"
        )
        assert response.json()["data"]["data"] == {"value": value}, f"kv2 {key} v{version} has the wrong value"
    for key in ("shared-0", "shared-1"):
        response = server.request("GET", f"kv2/metadata/{key}", token=token)
        if response.status_code == 404:
            assert not any(k == key for k, _ in v2), f"metadata of {key} lost"
            continue
        meta = response.json()["data"]
        acked = [v for k, v in v2 if k == key]
        assert meta["current_version"] >= max(acked, default=0)
        # Every version the metadata lists has its data: nothing half written.
        for version in meta["versions"]:
            read = server.request("GET", f"kv2/data/{key}?version={version}", token=token)
            assert read.status_code == 200, server.explain(f"{key} v{version} listed but unreadable: {read.text}")


@pytest.mark.parametrize("storage", ["file", "sqlite"])
def test_kill_9_of_the_whole_tree_loses_no_acknowledged_write(server_factory: ServerFactory, storage: str) -> None:
    server = server_factory(storage=storage)
    init: InitResult = server.init()
    server.unseal(init.keys[:3])
    token = init.root_token
    server.call("POST", "sys/mounts/kv1", 204, token=token, json_body={"type": "kv"})
    server.call("POST", "sys/mounts/kv2", 204, token=token, json_body={"type": "kv", "options": {"version": "2"}})
    server.call("POST", "kv2/config", 204, token=token, json_body={"max_versions": 100000})
    ledger = Ledger()
    rng = random.Random()

    for round_no in range(ROUNDS):
        stop = threading.Event()
        before = len(ledger.v1) + len(ledger.v2)
        threads = [
            threading.Thread(target=_writer, args=(server, token, ledger, stop, round_no, n), daemon=True)
            for n in range(WRITERS)
        ]
        for thread in threads:
            thread.start()
        # Once writes are flowing, kill at a random moment among them.
        wait_for(lambda want=before + 8: len(ledger.v1) + len(ledger.v2) >= want, "writes to be acknowledged")
        time.sleep(rng.uniform(0.0, 1.2))
        server.kill_tree()
        stop.set()
        for thread in threads:
            thread.join(timeout=10)

        server.start()
        status = server.seal_status()
        assert status["initialized"] is True and status["sealed"] is True
        # Shares differ every round: any three of the five unseal.
        server.unseal(rng.sample(init.keys, 3))
        _verify(server, token, ledger)

    assert not ledger.server_errors, server.explain(f"server errors during the writes: {ledger.server_errors[:5]}")
    log = server.log_text()
    assert "Traceback" not in log and "internal error" not in log, server.explain("the server logged an error")
    assert not re.search(r"\b(ERROR|CRITICAL)\b", log), server.explain("the server logged an error")
    assert log.count("===== start #") == ROUNDS + 1
    # Served by the backend asked for: sqlite's database holds the data.
    assert (server.directory / "data" / "vaultd.db").is_file() == (storage == "sqlite")
    for secret in init.secrets:
        assert secret not in log
