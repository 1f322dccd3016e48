"""Shared test set-up: the KMS emulator fixtures (tests/kms_fixtures.py), a
real PostgreSQL (tests/postgres_fixtures.py), and ``serve`` (small socket
servers on threads, stopped after the test)."""

import socketserver
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

# Helpers are imported as ``tests.*``; make the repository root importable
# also when pytest runs as the bare ``pytest`` script (not ``python -m``).
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

pytest_plugins = ["tests.kms_fixtures", "tests.postgres_fixtures"]


@pytest.fixture
def serve() -> Iterator[object]:
    servers: list[socketserver.BaseServer] = []

    def start(server: socketserver.BaseServer) -> socketserver.BaseServer:
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
