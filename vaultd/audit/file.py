"""The ``file`` audit device: one JSON line per entry, appended.

Every gunicorn worker opens the file itself with ``O_APPEND`` and writes
each line with one ``write(2)``: the kernel appends it whole at the end of
the file, so lines from many workers never interleave, with no lock between
them.  ``file_path=stdout`` writes to the process's standard output (the
journal, under systemd); ``discard`` writes nothing.

Rotation: a worker keeps its descriptor until it is replaced, so after
``logrotate`` renames the file a SIGHUP to the daemon (gunicorn replaces
its workers, whose devices open the path afresh) or a call to
:meth:`FileDevice.reopen` moves writing to the new file.  Nothing is lost:
lines written in between land in the renamed file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
from collections.abc import Mapping

from vaultd.audit.base import Device, OptionError

DEFAULT_MODE = 0o600

_forks = 0
"""How many forks this process descends from (counted in each child): a
device opened under another count holds its parent's descriptor.  Cheaper
than ``os.getpid()``, a system call, on each of a request's two lines."""


def _forked() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_forked)


def parse_mode(options: Mapping[str, str], path: str) -> int | None:
    """``mode``: octal, default 0600; ``0`` keeps the mode of an existing
    file (None).  Execute bits are dropped, as Vault drops them."""
    raw = options.get("mode")
    if raw is None:
        return DEFAULT_MODE
    try:
        mode = int(str(raw), 8)
    except ValueError:
        raise OptionError(f'strconv.ParseUint: parsing "{raw}": invalid syntax') from None
    if mode == 0:
        if path not in ("stdout", "discard") and not os.path.exists(path):
            raise OptionError(f"mode 0 keeps the mode of an existing file, and there is none at {path}")
        return None
    if mode > 0o7777:
        raise OptionError("file mode does not represent a regular file")
    return mode & ~0o111


class FileDevice(Device):
    def __init__(self, options: Mapping[str, str]) -> None:
        path = options.get("file_path", options.get("path"))
        if not path:
            raise OptionError("file_path is required")
        path = str(path)
        if path.lower() in ("stdout", "discard"):
            path = path.lower()
        elif not os.path.isabs(path):
            raise OptionError("file_path must be absolute, stdout or discard")
        self.path = path
        self.mode = parse_mode(options, path)
        self._fd: int | None = None
        self._forks = -1
        self._lock = threading.Lock()

    def check(self) -> None:
        """Open (creating) the file once now, so that enabling a device on a
        path it cannot write is refused at once, as Vault's sanity check does."""
        with self._lock:
            self._open()

    def _open(self) -> int:
        if self.path == "stdout":
            return 1
        if self._fd is not None and self._forks == _forks:
            return self._fd
        # A descriptor inherited across fork is shared with the parent; open our own.
        self._fd = None
        directory = os.path.dirname(self.path)
        if directory and not os.path.isdir(directory):
            os.makedirs(directory, mode=0o700, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, self.mode or DEFAULT_MODE)
        if self.mode is not None and self.path != "/dev/null":
            try:
                os.fchmod(fd, self.mode)
            except OSError:
                os.close(fd)
                raise
        self._fd, self._forks = fd, _forks
        return fd

    def write(self, line: bytes) -> None:
        if self.path == "discard":
            return
        with self._lock:
            fd = self._open()
            try:
                written = os.write(fd, line)
            except OSError:
                if self.path != "stdout":
                    self._drop()  # the next line opens the path again
                raise
            if written != len(line):
                self._cut_partial(fd, written)
                raise OSError(errno.ENOSPC, "short write to the audit file")

    def _cut_partial(self, fd: int, written: int) -> None:
        """A full disk may take part of a line.  Cut it back off if nothing
        was appended after it, so the file stays whole lines; a reader meets
        at worst one torn line if another worker appended in between."""
        if fd == 1:
            return
        with contextlib.suppress(OSError):
            end = os.lseek(fd, 0, os.SEEK_CUR)
            fcntl.lockf(fd, fcntl.LOCK_EX)
            try:
                if os.fstat(fd).st_size == end:
                    os.ftruncate(fd, end - written)
            finally:
                fcntl.lockf(fd, fcntl.LOCK_UN)

    def _drop(self) -> None:
        if self._fd is not None and self._forks == _forks:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = None

    def reopen(self) -> None:
        with self._lock:
            self._drop()

    def close(self) -> None:
        self.reopen()
