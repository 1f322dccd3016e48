"""The seal state and the data are consistent across gunicorn workers.

An unseal request lands on whichever worker accepts the connection, and
gunicorn replaces a dead worker with a fresh fork at any time, so "unsealed"
must be a property of the server, not of the worker that happened to get
the last share.  Which worker served a request is established from the
kernel's view of the connection (``/proc/net/tcp`` plus each worker's open
sockets), not guessed.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections import Counter

import pytest

from tests.integration.support import (
    InitResult,
    Server,
    ServerFactory,
    pid_owning_connection,
    request_with_worker,
    requests_on_every_worker,
    wait_for,
)

WORKERS = 4


@pytest.fixture(params=["file", "sqlite"])
def unsealed(request: pytest.FixtureRequest, server_factory: ServerFactory) -> tuple[Server, InitResult]:
    """An unsealed 4-worker server on each durable backend: sqlite's
    per-process connections and checkpointer must survive gunicorn's forks
    and worker replacements as the file backend's lock files do."""
    server = server_factory(storage=request.param)
    result = server.init()
    server.unseal(result.keys[:3])
    return server, result


def _sealed_and_replaced(server: Server, token: str) -> set[int]:
    """``sys/seal``, then wait until the master has replaced every worker
    (it does after each seal, so no plaintext outlives it): the old ones
    stop gracefully and keep no connection open meanwhile."""
    before = server.worker_pids()
    server.call("PUT", "sys/seal", 204, token=token)
    return wait_for(
        lambda: (lambda now: now if len(now) == WORKERS and not now & before else None)(server.worker_pids()),
        "the master to replace every worker after the seal",
    )


def _kv_setup(server: Server, token: str) -> None:
    server.call("POST", "sys/mounts/kv", 204, token=token, json_body={"type": "kv", "options": {"version": "2"}})
    server.call("POST", "kv/data/probe", token=token, json_body={"data": {"v": "1"}})


def test_every_worker_serves_unsealed_and_replacements_too(unsealed: tuple[Server, InitResult]) -> None:
    server, init = unsealed
    token = init.root_token
    _kv_setup(server, token)
    workers = server.worker_pids()
    assert len(workers) == WORKERS

    # 200 consecutive requests, each on a new connection, all unsealed.
    for i in range(200):
        response = server.request("GET", "kv/data/probe", token=token)
        assert response.status_code == 200, server.explain(f"request {i}: {response.status_code} {response.text}")
        assert response.json()["data"]["data"] == {"v": "1"}

    # Every worker, identified by the socket it accepted, serves unsealed.
    for status, body, pid in requests_on_every_worker(server, "GET", "kv/data/probe", token=token):
        assert status == 200, server.explain(f"worker {pid}: {status} {body}")

    # kill -9 every worker; gunicorn forks replacements, which serve unsealed.
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    replacements = wait_for(
        lambda: (lambda now: now if len(now) == WORKERS and not now & workers else None)(server.worker_pids()),
        "gunicorn to replace every killed worker",
    )
    wait_for(lambda: server.request("GET", "sys/seal-status").status_code == 200, "a replacement to answer")
    served = requests_on_every_worker(server, "GET", "kv/data/probe", token=token)
    assert {pid for _, _, pid in served} == replacements
    for status, body, pid in served:
        assert status == 200, server.explain(f"replacement worker {pid}: {status} {body}")
        assert body["data"]["data"] == {"v": "1"}
    assert server.seal_status()["sealed"] is False

    # After sys/seal, every request to every worker (all new ones) is sealed.
    replacements = _sealed_and_replaced(server, token)
    for i in range(50):
        response = server.request("GET", "kv/data/probe", token=token)
        assert response.status_code == 503, server.explain(f"request {i} after seal: {response.status_code}")
        assert response.json() == {"errors": ["Vault is sealed"]}
    served = requests_on_every_worker(server, "GET", "kv/data/probe", token=token)
    assert {pid for _, _, pid in served} == replacements
    for status, body, pid in served:
        assert status == 503, server.explain(f"worker {pid} after seal: {status} {body}")


def test_shares_sent_to_different_workers_add_up(unsealed: tuple[Server, InitResult]) -> None:
    server, init = unsealed
    token = init.root_token
    _sealed_and_replaced(server, token)

    status, body, first_worker = request_with_worker(server, "PUT", "sys/unseal", body={"key": init.keys[0]})
    assert status == 200 and body["progress"] == 1, body
    nonce = body["nonce"]

    # The worker that took share 1 dies: its progress must not die with it.
    os.kill(first_worker, signal.SIGKILL)
    wait_for(lambda: first_worker not in server.worker_pids(), "the first worker to be gone")

    status, body, second_worker = request_with_worker(server, "PUT", "sys/unseal", body={"key": init.keys_base64[1]})
    assert second_worker != first_worker
    assert status == 200, body
    assert body["sealed"] is True and body["progress"] == 2 and body["nonce"] == nonce, body

    # Any worker sees the same progress.
    for _ in range(8):
        assert server.seal_status()["progress"] == 2

    # The third share completes the unseal, wherever it lands.
    status, body, _ = request_with_worker(server, "PUT", "sys/unseal", body={"key": init.keys[4]})
    assert status == 200 and body["sealed"] is False, body
    for _ in range(20):
        assert server.call("GET", "auth/token/lookup-self", token=token)["data"]["policies"] == ["root"]

    # A reset on one worker clears progress made on another.
    _sealed_and_replaced(server, token)
    server.call("PUT", "sys/unseal", json_body={"key": init.keys[0]})
    for _ in range(8):
        status, body, _pid = request_with_worker(server, "GET", "sys/seal-status")
        assert body["progress"] == 1
    reset = server.call("PUT", "sys/unseal", json_body={"reset": True})
    assert reset["progress"] == 0 and reset["nonce"] == ""
    for _ in range(8):
        assert server.seal_status()["progress"] == 0


def test_concurrent_kv_writes_across_workers(unsealed: tuple[Server, InitResult]) -> None:
    server, init = unsealed
    token = init.root_token
    _kv_setup(server, token)
    server.call("POST", "kv/config", 204, token=token, json_body={"max_versions": 1000})
    threads_n, writes_each = 8, 15

    # Plain writes to one key from many threads: every acknowledged write is
    # a distinct version, and none is lost.
    acked: list[int] = []
    failures: list[str] = []
    lock = threading.Lock()

    def writer(n: int) -> None:
        for i in range(writes_each):
            response = server.request("POST", "kv/data/shared", token=token,
                                      json_body={"data": {"writer": str(n), "i": str(i)}})
            with lock:
                if response.status_code == 200:
                    acked.append(response.json()["data"]["version"])
                else:
                    failures.append(f"{response.status_code} {response.text[:200]}")

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, server.explain(f"writes failed: {failures[:5]}")
    assert len(acked) == threads_n * writes_each
    assert sorted(acked) == list(range(1, len(acked) + 1)), "two writes got the same version"
    meta = server.call("GET", "kv/metadata/shared", token=token)["data"]
    assert meta["current_version"] == len(acked)
    assert len(meta["versions"]) == len(acked)

    # Check-and-set from many threads: each thread reads the version and
    # writes with cas=version.  Conflicts are 400, never 500, and exactly the
    # acknowledged ones became versions.
    server.call("POST", "kv/data/cas", token=token, json_body={"data": {"n": "0"}})
    cas_acked: list[tuple[int, str]] = []
    statuses: Counter[int] = Counter()

    def cas_writer(n: int) -> None:
        for i in range(writes_each):
            current = server.request("GET", "kv/data/cas", token=token).json()["data"]["metadata"]["version"]
            value = f"{n}-{i}"
            response = server.request("POST", "kv/data/cas", token=token,
                                      json_body={"data": {"n": value}, "options": {"cas": current}})
            with lock:
                statuses[response.status_code] += 1
                if response.status_code == 200:
                    cas_acked.append((response.json()["data"]["version"], value))
                elif response.status_code == 400:
                    assert "check-and-set parameter did not match" in response.text, response.text
                else:
                    failures.append(f"{response.status_code} {response.text[:200]}")

    threads = [threading.Thread(target=cas_writer, args=(n,)) for n in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, server.explain(f"cas writes failed: {failures[:5]}")
    assert set(statuses) <= {200, 400}, statuses
    final = server.call("GET", "kv/metadata/cas", token=token)["data"]["current_version"]
    assert final == 1 + len(cas_acked), (final, statuses)
    assert sorted(v for v, _ in cas_acked) == list(range(2, final + 1))
    for version, value in cas_acked:
        read = server.call("GET", f"kv/data/cas?version={version}", token=token)["data"]["data"]
        assert read == {"n": value}


def test_a_burst_of_connections_is_shared_by_the_workers(server_factory: ServerFactory) -> None:
    """48 keep-alive connections opened at once, as a load balancer's pool
    or a benchmark does, end up spread over the workers: before each worker
    published its count, whichever woke first took nearly the whole burst
    (64 connections on 2 workers split up to 62/2) and the other worker's
    core idled for as long as the connections lasted.  Every connection is
    then served."""
    server = server_factory(workers=3)
    init = server.init()
    server.unseal(init.keys[:3])
    # Every worker in its loop first: one still loading the app takes
    # nothing, and is rightly not counted by the others.
    requests_on_every_worker(server, "GET", "sys/health")
    count = 48
    connections = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(count)]
    try:
        owners = wait_for(
            lambda: (lambda seen: seen if None not in seen else None)(
                [pid_owning_connection(server, conn.getsockname()[1]) for conn in connections]
            ),
            "every connection to be accepted",
            timeout=10,
        )
        spread = Counter(owners)
        assert len(spread) == 3 and max(spread.values()) <= count // 3 + 4, spread
        for conn in connections:
            conn.sendall(b"GET /v1/sys/health HTTP/1.1\r\nHost: vaultd\r\n\r\n")
        for conn in connections:
            assert conn.recv(65536).startswith(b"HTTP/1.1 200 "), "a connection was not served"
    finally:
        for conn in connections:
            conn.close()
