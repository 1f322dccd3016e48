"""The embedded default backend: one file per key under one directory.

It is built for the two ways a single server loses data: a crash mid-write
and two gunicorn workers racing.

- Crash safety: a value is written to a temp file in the target directory,
  fsynced, renamed over the old file and the directory fsynced.  A reader
  sees the old value or the new one, never a mix, and an acknowledged
  ``put`` survives ``kill -9`` (and power loss, as far as the filesystem
  honours fsync).  Temp files left by a killed writer start with ``.`` and
  are invisible to ``get`` and ``list``.
- Races: ``lock`` is a ``flock`` on lock files under ``.locks/``, striped by
  a hash of the lock name (all stripes for ``""`` and names ending in
  ``/``), so it excludes other processes (forked workers included: the
  descriptors are reopened after ``fork``) as well as other threads.

Layout: key ``a/b/c`` is the file ``a/b/_c``.  The ``_`` mark keeps a value
and a folder of the same name apart (Vault allows both ``a`` and ``a/b``),
every segment is percent-encoded, and a leading ``.`` or ``_`` is encoded
too, so no key can name ``.``, ``..``, a temp file or the lock directory.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from urllib.parse import quote, unquote

from vaultd.errors import StorageError
from vaultd.storage.base import Storage, make_private_dirs
from vaultd.storage.keys import split_key, split_prefix
from vaultd.storage.locks import StripedLocks

DIR_MODE = 0o700
FILE_MODE = 0o600

_VALUE_MARK = "_"
_TEMP_PREFIX = ".tmp-"
_LOCK_DIR = ".locks"
_MAX_ENCODED_SEGMENT = 254  # NAME_MAX (255) minus the value mark
_PUT_ATTEMPTS = 100


def _encode_segment(segment: str) -> str:
    name = quote(segment, safe="")
    if name[0] in "._":
        name = f"%{ord(name[0]):02X}{name[1:]}"
    if len(name) > _MAX_ENCODED_SEGMENT:
        raise ValueError("storage key segment is too long for the file backend")
    return name


def _decode_name(name: str) -> str | None:
    """The key segment a directory entry stands for, or ``None`` for anything
    this backend did not write (``lost+found``, stray files)."""
    try:
        segment = unquote(name, errors="strict")
        if segment in ("", "..") or _encode_segment(segment) != name:
            return None
    except (UnicodeDecodeError, ValueError):
        return None
    return segment


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _has_values(path: str) -> bool:
    """Whether a folder holds any key, however deep.

    Directories can outlive their keys (a writer killed between ``mkdir`` and
    its temp file, a temp file that was never renamed); listing them would
    show folders that contain nothing.
    """
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.name.startswith(_VALUE_MARK):
                    if entry.is_file(follow_symlinks=False):
                        return True
                elif (
                    not entry.name.startswith(".")
                    and entry.is_dir(follow_symlinks=False)
                    and _has_values(entry.path)
                ):
                    return True
    except (FileNotFoundError, NotADirectoryError):
        return False
    return False





class FileStorage(Storage):
    def __init__(self, path: str) -> None:
        if not path:
            raise ValueError('storage "file" needs a non-empty path')
        self._root = os.path.abspath(path)
        self._lock_dir = os.path.join(self._root, _LOCK_DIR)
        try:
            make_private_dirs(os.path.dirname(self._root))
            self._ensure_dir(self._root)
            self._ensure_dir(self._lock_dir)
        except OSError as exc:
            raise StorageError(f"file storage: cannot create {self._root}: {exc.strerror}") from exc
        self._locks = StripedLocks(self._lock_dir, label="file storage")

    def __repr__(self) -> str:
        return f"FileStorage({self._root!r})"

    @property
    def path(self) -> str:
        return self._root

    @staticmethod
    def _ensure_dir(path: str) -> None:
        try:
            os.mkdir(path, DIR_MODE)
        except FileExistsError:
            if not os.path.isdir(path):
                raise
            return
        os.chmod(path, DIR_MODE)  # mkdir's mode is filtered by the umask

    # -- keys and values -------------------------------------------------

    def _locate(self, key: str) -> tuple[list[str], str]:
        names = [_encode_segment(segment) for segment in split_key(key)]
        return names[:-1], _VALUE_MARK + names[-1]

    def get(self, key: str) -> bytes | None:
        dirnames, leaf = self._locate(key)
        path = os.path.join(self._root, *dirnames, leaf)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise StorageError(f"file storage: cannot read: {exc.strerror}") from exc
        try:
            with os.fdopen(fd, "rb") as handle:
                return handle.read()
        except OSError as exc:
            raise StorageError(f"file storage: cannot read: {exc.strerror}") from exc

    def put(self, key: str, value: bytes) -> None:
        dirnames, leaf = self._locate(key)
        data = bytes(value)
        for _ in range(_PUT_ATTEMPTS):
            try:
                directory = self._make_dirs(dirnames)
                self._replace(directory, leaf, data)
                return
            except FileNotFoundError:
                # A concurrent delete pruned a directory on our path between
                # our mkdir and our temp file: make it again.
                continue
            except OSError as exc:
                raise StorageError(f"file storage: cannot write: {exc.strerror}") from exc
        raise StorageError("file storage: cannot write: directory keeps disappearing")

    def _make_dirs(self, dirnames: list[str]) -> str:
        path = self._root
        for name in dirnames:
            parent, path = path, os.path.join(path, name)
            try:
                os.mkdir(path, DIR_MODE)
            except FileExistsError:
                continue
            os.chmod(path, DIR_MODE)
            _fsync_dir(parent)  # make the new entry itself durable
        return path

    @staticmethod
    def _replace(directory: str, leaf: str, data: bytes) -> None:
        temp = os.path.join(directory, _TEMP_PREFIX + secrets.token_hex(8))
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(temp, flags, FILE_MODE)
        try:
            try:
                os.fchmod(fd, FILE_MODE)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(temp, os.path.join(directory, leaf))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        _fsync_dir(directory)

    def delete(self, key: str) -> None:
        dirnames, leaf = self._locate(key)
        directory = os.path.join(self._root, *dirnames)
        try:
            os.unlink(os.path.join(directory, leaf))
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise StorageError(f"file storage: cannot delete: {exc.strerror}") from exc
        try:
            _fsync_dir(directory)
        except FileNotFoundError:
            pass  # already pruned by a concurrent delete: nothing to make durable
        except OSError as exc:
            raise StorageError(f"file storage: cannot delete: {exc.strerror}") from exc
        self._prune(dirnames)

    def _prune(self, dirnames: list[str]) -> None:
        """Remove directories left empty, deepest first.

        ``rmdir`` refuses a non-empty directory atomically, so a concurrent
        ``put`` either already has its temp file inside (and the directory
        stays) or finds it gone and makes it again.
        """
        for depth in range(len(dirnames), 0, -1):
            try:
                os.rmdir(os.path.join(self._root, *dirnames[:depth]))
            except OSError:
                return

    def list(self, prefix: str) -> list[str]:
        names = [_encode_segment(segment) for segment in split_prefix(prefix)]
        directory = os.path.join(self._root, *names)
        children: list[str] = []
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.name.startswith(_VALUE_MARK):
                        segment = _decode_name(entry.name[1:])
                        if segment is not None and entry.is_file(follow_symlinks=False):
                            children.append(segment)
                    elif not entry.name.startswith("."):
                        segment = _decode_name(entry.name)
                        if (
                            segment is not None
                            and entry.is_dir(follow_symlinks=False)
                            and _has_values(entry.path)
                        ):
                            children.append(segment + "/")
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise StorageError(f"file storage: cannot list: {exc.strerror}") from exc
        return sorted(children)

    # -- locks -----------------------------------------------------------

    def lock(self, name: str = "") -> contextlib.AbstractContextManager[None]:
        """Exclusive across threads and processes (see ``storage/locks.py``):
        a name that is empty or ends in ``/`` locks that whole subtree, so a
        view's ``lock("")`` is ``lock("<prefix>/")``."""
        return self._locks.lock(name)
