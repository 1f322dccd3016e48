"""What a seal and the logs leave behind (issue 9, "Why" 5).

A seal wipes every worker's keys and caches, but decrypted values a worker
handled stay in its heap until overwritten; so after a seal the master
replaces its workers, and a dead process's memory is gone.  Tokens never
reach the log, whatever a client sends."""

from __future__ import annotations

import socket
import threading
import time

import requests

from tests.integration.support import Server, ServerFactory, wait_for

TOKEN = "s.Zq3XwV7bN2mK9pL4tR8yU1cE"  # vaultd's own shape: s. and 24 letters and digits
SECRET_VALUE = "correct-horse-battery-staple"


def _unsealed_with_a_secret(server: Server) -> tuple[list[str], str]:
    result = server.init(shares=1, threshold=1)
    server.unseal(result.keys)
    root = result.root_token
    server.call("POST", "sys/mounts/secret", 204, token=root, json_body={"type": "kv", "options": {"version": "2"}})
    server.call("POST", "secret/data/app", token=root, json_body={"data": {"password": SECRET_VALUE}})
    for _ in range(8):  # into the caches of most workers
        assert server.call("GET", "secret/data/app", token=root)["data"]["data"]["password"] == SECRET_VALUE
    assert len(server.worker_pids()) == 4
    return result.keys, root


def _replaced(server: Server, before: set[int]) -> set[int]:
    def check() -> set[int] | None:
        pids = server.worker_pids()
        return pids if len(pids) == 4 and not pids & before else None

    return wait_for(check, "every worker to be replaced after the seal")


def test_workers_are_replaced_after_a_seal_and_come_up_sealed(vaultd: Server) -> None:
    keys, root = _unsealed_with_a_secret(vaultd)
    before = vaultd.worker_pids()
    vaultd.call("PUT", "sys/seal", 204, token=root)
    after = _replaced(vaultd, before)
    # The new workers start sealed; an unseal (here with the share, as an
    # operator's break-glass would) still works, and the data is all there.
    for _ in range(8):
        assert vaultd.request("GET", "sys/health").status_code == 503
        vaultd.call("GET", "secret/data/app", 503, token=root)
    vaultd.unseal(keys)
    for _ in range(8):
        assert vaultd.call("GET", "secret/data/app", token=root)["data"]["data"]["password"] == SECRET_VALUE
    assert vaultd.worker_pids() == after  # an unseal replaces nothing


def test_clients_get_answers_while_the_workers_are_replaced(vaultd: Server) -> None:
    """The old workers stop gracefully: what they accepted, they answer."""
    _, root = _unsealed_with_a_secret(vaultd)
    before = vaultd.worker_pids()
    stop = threading.Event()
    answers: list[int] = []
    failures: list[str] = []

    def client() -> None:
        while not stop.is_set():
            try:
                answers.append(vaultd.request("GET", "secret/data/app", token=root, timeout=30).status_code)
            except requests.RequestException as exc:
                failures.append(f"{type(exc).__name__}: {exc}"[:300])

    clients = [threading.Thread(target=client) for _ in range(4)]
    for thread in clients:
        thread.start()
    try:
        time.sleep(0.3)
        vaultd.call("PUT", "sys/seal", 204, token=root)
        _replaced(vaultd, before)
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in clients:
            thread.join()
    assert not failures, vaultd.explain(f"requests failed while the workers changed: {failures}")
    assert set(answers) <= {200, 503} and 503 in answers, answers


def _raw(server: Server, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
        conn.sendall(payload)
        chunks = []
        while True:
            try:
                data = conn.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


def test_tokens_never_reach_the_log(server_factory: ServerFactory) -> None:
    server = server_factory(workers=2)
    result = server.init(shares=1, threshold=1)
    server.unseal(result.keys)
    # Header lines gunicorn's parser refuses (it quotes them in its error),
    # with and without a colon, and a header name it finds invalid.
    for line in (f"X-Vault-Token {TOKEN}", f"X-Vault-Token:\x01{TOKEN}", f"X-Vault(Token): {TOKEN}"):
        answer = _raw(server, f"GET /v1/sys/health HTTP/1.1\r\nHost: x\r\n{line}\r\n\r\n".encode())
        assert answer.startswith(b"HTTP/1.1 4"), answer[:200]
        assert TOKEN.encode() not in answer
    # A line vaultd itself logs with a client's text in it: the mount path.
    server.call("POST", f"sys/mounts/{TOKEN}", 204, token=result.root_token, json_body={"type": "kv"})
    wait_for(lambda: "mounted kv engine at" in server.log_text(), "the mount to be logged", timeout=10)
    log = server.log_text()
    assert TOKEN not in log, server.explain("a token reached the log")
    assert result.root_token not in log
    assert "mounted kv engine at [redacted]/" in log, server.explain("the redaction marker is missing")
