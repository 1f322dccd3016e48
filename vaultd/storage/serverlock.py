"""The per-directory "server lock": who is using a disk backend's directory.

``vaultd operator migrate`` copies a store offline: a server still writing
to the source would leave the copy behind it, and one writing to the
destination would mix two stores.  Neither ``file`` nor ``sqlite`` holds
anything for a server's whole life (their locks are per write), so the
server takes this one: a shared ``flock`` on ``<path>/.locks/server``,
taken by ``vaultd server``'s master at start and held until it exits.
Shared, because nothing stops two servers on one directory today and this
lock is not the place to start; the migrator takes it exclusively and
without waiting, so it refuses to run while any server holds either
directory, and a server refuses to start while a migration runs.

The descriptor is close-on-exec and closed in forked children (gunicorn's
workers), so the lock lives exactly as long as the master: a stray child
never keeps a directory "in use" after the server is gone.  ``flock`` locks
belong to the open file description, so the children's close does not
release the master's lock.  The kernel drops the lock when the master dies,
``kill -9`` included: no stale lock file to clean up.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator

from vaultd.errors import StorageError
from vaultd.storage.base import make_private_dirs

LOCK_DIR = ".locks"
LOCK_NAME = "server"
FILE_MODE = 0o600

_HELD: list[int] = []
"""Descriptors this process holds shared (a server's master)."""


def _close_in_child() -> None:
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


def lock_path(directory: str) -> str:
    return os.path.join(os.path.abspath(directory), LOCK_DIR, LOCK_NAME)


def _open(directory: str) -> int:
    path = lock_path(directory)
    try:
        make_private_dirs(os.path.dirname(path))
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE)
    except OSError as exc:
        raise StorageError(f"cannot open the server lock {path}: {exc.strerror}") from None
    return fd


def _try_lock(fd: int, mode: int) -> bool:
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    return True


def hold_for_server(directory: str) -> None:
    """Mark ``directory`` in use by this server until the process exits;
    refuse (``StorageError``) while ``vaultd operator migrate`` holds it."""
    fd = _open(directory)
    try:
        taken = _try_lock(fd, fcntl.LOCK_SH)
    except OSError as exc:
        os.close(fd)
        raise StorageError(f"cannot lock {lock_path(directory)}: {exc.strerror}") from None
    if not taken:
        os.close(fd)
        raise StorageError(f"{os.path.abspath(directory)} is in use by a running vaultd operator migrate")
    _HELD.append(fd)


@contextlib.contextmanager
def exclusive(directory: str, role: str) -> Iterator[None]:
    """Hold ``directory`` alone (the migrator), or raise ``StorageError``
    naming it when a server (or another migration) holds it.  ``role`` says
    which side it is in the message ("source", "destination")."""
    fd = _open(directory)
    try:
        try:
            taken = _try_lock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            raise StorageError(f"cannot lock the {role} {lock_path(directory)}: {exc.strerror}") from None
        if not taken:
            raise StorageError(
                f"the {role} {os.path.abspath(directory)} is in use by a running vaultd server "
                "(or another migration); stop it first"
            )
        yield
    finally:
        os.close(fd)
