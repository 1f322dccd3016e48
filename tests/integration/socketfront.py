"""A counting relay between the agent and the daemon's unix socket, and the
short private directories sockets need in tests.

The relay is the unix-socket twin of the TCP front proxy the auto-unseal tests
used before the agent channel moved to a socket: it forwards bytes both ways
unchanged and counts the request lines the agent sends ("GET
/v1/sys/vaultd/state"), so a test can check "the agent looked again" against
a count rather than a sleep.  It runs as the test's own uid, so the agent's
and the daemon's peer checks both accept it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import pytest

_REQUEST_LINE = re.compile(rb"(GET|PUT|POST|DELETE) (/v1/[^ ?]+)[^ ]* HTTP/1\.[01]\r\n")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A private (0700) directory under /tmp: pytest's tmp_path is too long
    for a unix socket address (108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="vd-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class SocketFront:
    def __init__(self, upstream: Path, directory: Path) -> None:
        directory.mkdir(mode=0o700, exist_ok=True)
        self.upstream = upstream
        self.path = directory / "front.sock"
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._stopping = False

    def __enter__(self) -> Self:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self._listener.bind(str(self.path))
        self._listener.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping = True
        self._listener.close()

    def count(self, request: str) -> int:
        """How often ``"METHOD /v1/path"`` went through."""
        with self._lock:
            return self._counts[request]

    def _accept(self) -> None:
        while not self._stopping:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(str(self.upstream))
            except OSError:
                client.close()  # the daemon is down: so is the relay
                upstream.close()
                continue
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, count: bool) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if count:
                    with self._lock:
                        for method, path in _REQUEST_LINE.findall(data):
                            self._counts[f"{method.decode()} {path.decode()}"] += 1
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                source.close()
