"""The ``syslog`` audit device: each entry one datagram to the local syslog
socket, ``/dev/log``; under systemd that is journald, which files it under
the device's ``tag`` as ``SYSLOG_IDENTIFIER`` (``journalctl -t
vaultd-audit``).

The datagram is sent here rather than through Python's :mod:`syslog`
module for two reasons: ``syslog.syslog()`` returns nothing, so a socket
that is gone could never be noticed and the device would never fail
closed; and its ident and facility are global to the process, while two
devices may want two tags.  Vault's defaults are facility ``AUTH`` and tag
``vault``; vaultd's tag is ``vaultd-audit``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Mapping

from vaultd.audit.base import Device, OptionError

DEFAULT_TAG = "vaultd-audit"
DEFAULT_FACILITY = "AUTH"
SOCKET_PATH = "/dev/log"
_INFO = 6

FACILITIES = {
    "KERN": 0, "USER": 1, "MAIL": 2, "DAEMON": 3, "AUTH": 4, "SYSLOG": 5, "LPR": 6, "NEWS": 7,
    "UUCP": 8, "CRON": 9, "AUTHPRIV": 10, "FTP": 11,
    **{f"LOCAL{i}": 16 + i for i in range(8)},
}


class SyslogDevice(Device):
    def __init__(self, options: Mapping[str, str], *, socket_path: str = SOCKET_PATH) -> None:
        facility = str(options.get("facility", DEFAULT_FACILITY)).upper()
        if facility not in FACILITIES:
            raise OptionError(f"unknown syslog facility {facility!r}")
        tag = str(options.get("tag", DEFAULT_TAG))
        if not tag or not tag.isprintable() or " " in tag or ":" in tag or "[" in tag:
            raise OptionError("tag must be a non-empty word without spaces, ':' or '['")
        self.tag = tag
        self.priority = FACILITIES[facility] * 8 + _INFO
        self.socket_path = socket_path
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def check(self) -> None:
        with self._lock:
            self._connect()

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                sock.connect(self.socket_path)
            except OSError:
                sock.close()
                raise
            self._sock = sock
        return self._sock

    def write(self, line: bytes) -> None:
        message = f"<{self.priority}>{self.tag}: ".encode() + line.rstrip(b"\n")
        with self._lock:
            try:
                self._connect().send(message)
            except OSError:
                self.reopen_locked()
                raise

    def reopen_locked(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        self._sock = None

    def reopen(self) -> None:
        with self._lock:
            self.reopen_locked()

    def close(self) -> None:
        self.reopen()
