"""Loopback ports for servers that tests, ``make run`` and ``make bench`` start."""

from __future__ import annotations

import secrets
import socket

LOW, HIGH = 20000, 32000


def free_port(host: str = "127.0.0.1") -> int:
    """A free port *below* Linux's ephemeral range (32768-60999).

    A port from ``bind(0)`` is an ephemeral one: once the server that had it
    stops (a restart, a ``kill -9`` in a test), any outgoing connection on the
    machine may get it as its source port, and the restarted server then
    cannot bind it again.  Ports below the range are never handed out that way.
    """
    for _ in range(500):
        port = LOW + secrets.randbelow(HIGH - LOW)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise OSError(f"no free port on {host} between {LOW} and {HIGH}")
