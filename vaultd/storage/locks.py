"""Named locks held across threads *and* processes, for the disk backends.

Every gunicorn worker opens the same storage, so a read-modify-write (a KV
v2 version, check-and-set, init) must exclude the other workers as well as
the other threads of its own.  ``flock`` on lock files does both once each
thread also takes a thread lock (``flock`` is per open file description, and
the threads of one process share theirs).

Names are striped by a hash onto a fixed number of lock files, so any number
of secrets costs a bounded number of descriptors; two names on one stripe
only wait for each other.  The empty name and names ending in ``/`` lock a
whole subtree by taking every stripe, in order.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
import weakref
from collections.abc import Iterator

from vaultd.errors import StorageError

LOCK_STRIPES = 64
"""Fixed, so every process maps a name to the same lock file."""
FILE_MODE = 0o600


def is_subtree(name: str) -> bool:
    """The empty name and names ending in ``/`` lock a whole subtree."""
    return name == "" or name.endswith("/")


@contextlib.contextmanager
def reenter(held: dict[str, int], name: str) -> Iterator[None]:
    """A lock asked for by a thread that already holds locks (``held``: name
    -> depth), for every backend's ``lock``: it may re-enter a name it
    holds, and take any name under a subtree lock it holds.  A *different*
    name under only named locks raises: two such locks taken in an order
    that depends on the names can deadlock against another worker, and an
    immediate error is easier to find than a rare hang."""
    if name not in held and not any(is_subtree(h) for h in held):
        raise RuntimeError(
            "storage lock requested while holding a different one; "
            "take a subtree lock (e.g. lock('')) to hold several"
        )
    held[name] = held.get(name, 0) + 1
    try:
        yield
    finally:
        held[name] -= 1
        if not held[name]:
            del held[name]


class _ProcessLocks:
    """Lock state that belongs to one process and must not survive ``fork``.

    A child that kept the parent's descriptors would share their open file
    description, and ``flock`` on a shared description succeeds while the
    other process holds it; thread locks copied mid-acquire would never be
    released.  So a child gets a fresh instance.
    """

    def __init__(self, stripes: int) -> None:
        self.pid = os.getpid()
        self.threads = [threading.Lock() for _ in range(stripes)]
        self.fds: dict[int, int] = {}
        self.local = threading.local()

    def held(self) -> dict[str, int]:
        held: dict[str, int] | None = getattr(self.local, "held", None)
        if held is None:
            held = {}
            self.local.held = held
        return held

    def close(self) -> None:
        for fd in self.fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()


_INSTANCES: weakref.WeakSet[StripedLocks] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for locks in list(_INSTANCES):
        locks.reset()


os.register_at_fork(after_in_child=_reset_after_fork)


class StripedLocks:
    """The stripes of one lock directory (which the caller creates, 0700)."""

    def __init__(self, directory: str, *, label: str, stripes: int = LOCK_STRIPES, file_prefix: str = "") -> None:
        self._dir = directory
        self._label = label  # "file storage", "sqlite storage": for error messages
        self._stripes = stripes
        self._file_prefix = file_prefix
        self._state = _ProcessLocks(stripes)
        _INSTANCES.add(self)

    def reset(self) -> None:
        old, self._state = self._state, _ProcessLocks(self._stripes)
        old.close()

    def _current(self) -> _ProcessLocks:
        # The at-fork hook covers os.fork(); this covers forks it cannot see.
        if self._state.pid != os.getpid():
            self.reset()
        return self._state

    def _stripe(self, name: str) -> int:
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).digest()
        return int.from_bytes(digest[:8], "big") % self._stripes

    @staticmethod
    def _is_subtree(name: str) -> bool:
        return is_subtree(name)

    @contextlib.contextmanager
    def lock(self, name: str = "") -> Iterator[None]:
        """Exclusive across threads and processes.

        A thread may re-enter a lock it holds, and may take any name while it
        holds a subtree lock.  Taking a *different* name while holding only
        named locks raises ``RuntimeError``: two stripes taken in
        hash-dependent order can deadlock against another worker, and an
        immediate error is easier to find than a rare hang.
        """
        state = self._current()
        held = state.held()
        if held:
            with reenter(held, name):
                yield
            return
        stripes = range(self._stripes) if self._is_subtree(name) else [self._stripe(name)]
        taken: list[int] = []
        try:
            for stripe in stripes:
                self._acquire(state, stripe)
                taken.append(stripe)
            held[name] = 1
            try:
                yield
            finally:
                held.pop(name, None)
        finally:
            # After a fork inside the block these belong to the parent.
            if state is self._state:
                for stripe in reversed(taken):
                    self._release(state, stripe)

    def _acquire(self, state: _ProcessLocks, stripe: int) -> None:
        state.threads[stripe].acquire()
        try:
            fd = state.fds.get(stripe)
            if fd is None:
                path = os.path.join(self._dir, f"{self._file_prefix}{stripe}")
                flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
                fd = os.open(path, flags, FILE_MODE)
                state.fds[stripe] = fd
                os.fchmod(fd, FILE_MODE)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            state.threads[stripe].release()
            raise StorageError(f"{self._label}: cannot lock: {exc.strerror}") from exc
        except BaseException:
            state.threads[stripe].release()
            raise

    @staticmethod
    def _release(state: _ProcessLocks, stripe: int) -> None:
        try:
            fcntl.flock(state.fds[stripe], fcntl.LOCK_UN)
        finally:
            state.threads[stripe].release()
