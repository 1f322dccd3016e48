"""The systemd notifier of the gunicorn master: READY=1 only once unsealed,
STATUS= texts, EXTEND_TIMEOUT_USEC while waiting, reload and stop.

Messages go over a real AF_UNIX datagram socket bound where NOTIFY_SOCKET
points, as systemd's does."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kms_fixtures import KmsKey
from vaultd.core.core import Core, CoreSettings
from vaultd.core.lifecycle import InitRequest
from vaultd.core.seal_state import SharedSealState
from vaultd.logging import EVENTS, JOURNAL_FIELDS_ATTR
from vaultd.seal.awskms import AwsKmsSeal
from vaultd.server import Notifier, _memory_backed_dir
from vaultd.storage.inmem import InmemStorage


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def systemd_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(str(path))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def received(sock: socket.socket) -> list[str]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


def notifier_for(core: Core, shared: SharedSealState, clock: Clock) -> Notifier:
    send = Notifier.connect()
    assert send is not None
    assert "NOTIFY_SOCKET" not in os.environ  # gunicorn and the workers must not see it
    return Notifier(shared, core, send, workers=4, clock=clock)


def shamir_core() -> tuple[Core, SharedSealState]:
    shared = SharedSealState.create(lock_memory=False)
    return Core(InmemStorage(), shared, CoreSettings()), shared


def test_no_socket_no_notifier(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert Notifier.connect() is None


def test_shamir_life_ready_only_once_unsealed(systemd_socket: socket.socket) -> None:
    core, shared = shamir_core()
    clock = Clock()
    notifier = notifier_for(core, shared, clock)

    notifier.poll_once()
    assert received(systemd_socket) == [
        "STATUS=uninitialized: run vaultctl operator init\nEXTEND_TIMEOUT_USEC=30000000"
    ]
    notifier.poll_once()
    assert received(systemd_socket) == []  # nothing changed, no renewal due yet

    keys = [bytes.fromhex(k) for k in core.init(InitRequest(secret_shares=3, secret_threshold=2))["keys"]]
    notifier.poll_once()
    assert received(systemd_socket) == ["STATUS=sealed: 0/2 key shares"]
    core.lifecycle.submit_share(keys[0])
    notifier.poll_once()
    assert received(systemd_socket) == ["STATUS=sealed: 1/2 key shares"]
    assert not notifier.ready_sent
    core.lifecycle.submit_share(keys[2])
    notifier.poll_once()
    assert received(systemd_socket) == ["READY=1\nSTATUS=unsealed, 4 workers"]

    core.lifecycle.seal_now(by_operator=True)
    notifier.poll_once()
    assert received(systemd_socket) == ["STATUS=sealed by operator"]  # no second READY=1, no renewal
    clock.now += 60
    notifier.poll_once()
    assert received(systemd_socket) == []


def test_start_timeout_is_renewed_while_waiting(systemd_socket: socket.socket) -> None:
    core, shared = shamir_core()
    clock = Clock()
    notifier = notifier_for(core, shared, clock)
    notifier.poll_once()
    received(systemd_socket)
    clock.now += Notifier.EXTEND_INTERVAL - 0.5
    notifier.poll_once()
    assert received(systemd_socket) == []
    clock.now += 0.5
    notifier.poll_once()
    assert received(systemd_socket) == ["EXTEND_TIMEOUT_USEC=30000000"]
    # The renewal reaches well past the next one, so a late poll is no timeout.
    assert Notifier.EXTEND_BY_USEC / 1e6 >= 2 * Notifier.EXTEND_INTERVAL


def test_awskms_waits_for_the_unsealer(systemd_socket: socket.socket, kms_key: KmsKey,
                                       aws_env: dict[str, str]) -> None:
    shared = SharedSealState.create(lock_memory=False)
    storage = InmemStorage()
    seal = AwsKmsSeal(kms_key.seal_options())
    Core(storage, shared, CoreSettings(seal=seal)).init(InitRequest(recovery_shares=1, recovery_threshold=1))
    # A new run of the daemon over the same storage: sealed, the agent's turn.
    shared = SharedSealState.create(lock_memory=False)
    core = Core(storage, shared, CoreSettings(seal=seal))
    notifier = notifier_for(core, shared, Clock())
    notifier.poll_once()
    assert received(systemd_socket) == ["STATUS=sealed: waiting for unsealer\nEXTEND_TIMEOUT_USEC=30000000"]


def test_sealed_event_is_logged_once_per_sealed_spell(systemd_socket: socket.socket,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    core, shared = shamir_core()
    keys = [bytes.fromhex(k) for k in core.init(InitRequest(secret_shares=3, secret_threshold=2))["keys"]]
    notifier = notifier_for(core, shared, Clock())
    with caplog.at_level(logging.INFO, logger="vaultd.server"):
        notifier.poll_once()
        core.lifecycle.submit_share(keys[0])
        notifier.poll_once()
    sealed = [r for r in caplog.records
              if getattr(r, JOURNAL_FIELDS_ATTR, {}).get("MESSAGE_ID") == EVENTS["sealed"].message_id]
    assert len(sealed) == 1
    assert getattr(sealed[0], JOURNAL_FIELDS_ATTR)["BOOT_ID"] == shared.boot_id


def test_reload_and_stop(systemd_socket: socket.socket) -> None:
    core, shared = shamir_core()
    notifier = notifier_for(core, shared, Clock())
    notifier.reloading()  # not ready yet: systemd would not be reloading us
    assert received(systemd_socket) == []
    [key] = [bytes.fromhex(k) for k in core.init(InitRequest(secret_shares=1, secret_threshold=1))["keys"]]
    core.lifecycle.submit_share(key)
    notifier.poll_once()
    received(systemd_socket)

    notifier.reloading()
    [reloading] = received(systemd_socket)
    lines = reloading.split("\n")
    assert lines[0] == "RELOADING=1" and lines[1].startswith("MONOTONIC_USEC=") and int(lines[1].split("=")[1]) > 0
    notifier.reloaded()
    assert received(systemd_socket) == ["READY=1\nSTATUS=unsealed, 4 workers"]

    notifier.stopping()
    notifier.stopping()
    assert received(systemd_socket) == ["STOPPING=1\nSTATUS=stopping"]
    core.lifecycle.seal_now(by_operator=True)
    notifier.poll_once()
    assert received(systemd_socket) == []  # nothing after STOPPING=1


def test_a_forked_child_never_speaks(systemd_socket: socket.socket) -> None:
    """Workers inherit the notifier; systemd accepts only the main PID, and
    a worker unwinding through the reload code must not send READY=1."""
    core, shared = shamir_core()
    [key] = [bytes.fromhex(k) for k in core.init(InitRequest(secret_shares=1, secret_threshold=1))["keys"]]
    core.lifecycle.submit_share(key)
    notifier = notifier_for(core, shared, Clock())
    notifier.poll_once()
    received(systemd_socket)
    pid = os.fork()
    if pid == 0:  # the child: try everything, then leave without cleanup
        try:
            notifier.reloaded()
            notifier.stopping()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert received(systemd_socket) == []


def test_worker_heartbeat_files_go_to_the_unit_s_runtime_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gunicorn touches them on every loop of every worker; they belong on
    a tmpfs (/run/vaultd under systemd), not on the disk /tmp is on."""
    monkeypatch.setenv("RUNTIME_DIRECTORY", f"{tmp_path}:/elsewhere")
    assert _memory_backed_dir() == str(tmp_path)
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path / "missing"))
    assert _memory_backed_dir() == ("/dev/shm" if os.access("/dev/shm", os.W_OK) else None)


def test_a_fork_waits_for_the_notifier_to_finish_its_poll() -> None:
    """The master forks workers while the notifier thread polls and logs; a
    fork in the middle of a log line leaves the worker a stream lock that
    nobody will release (see Notifier.quiet)."""
    core, shared = shamir_core()
    notifier = Notifier(shared, core, None, workers=2)
    in_poll, release, polls = threading.Event(), threading.Event(), []

    def slow_poll() -> None:
        polls.append(1)
        in_poll.set()
        release.wait(10)

    notifier.poll_once = slow_poll  # type: ignore[method-assign]
    notifier.POLL_INTERVAL = 0.01
    notifier.start()
    try:
        assert in_poll.wait(10)
        forked = threading.Event()

        def fork() -> None:
            with notifier.quiet():
                forked.set()

        forker = threading.Thread(target=fork)
        forker.start()
        assert not forked.wait(0.3), "the fork did not wait for the poll in progress"
        release.set()
        assert forked.wait(10)
        forker.join(10)
        with notifier.quiet():
            count = len(polls)
            in_poll.clear()
            assert not in_poll.wait(0.3), "a poll started while a fork held the notifier quiet"
            assert len(polls) == count
    finally:
        notifier.stopping()
        release.set()
