"""Storage backends, chosen by the config file's ``storage "<kind>"`` stanza."""

from __future__ import annotations

import logging
import os

from vaultd.storage.base import Storage
from vaultd.storage.file import FileStorage
from vaultd.storage.inmem import InmemStorage
from vaultd.storage.sqlite import DB_NAME, SqliteStorage
from vaultd.storage.view import StorageView

SUPPORTED_KINDS = ("file", "inmem", "postgresql", "sqlite")

__all__ = [
    "SUPPORTED_KINDS", "FileStorage", "InmemStorage", "SqliteStorage", "Storage", "StorageView", "holds_file_data",
    "open_storage",
]

log = logging.getLogger("vaultd.storage")

FILE_DATA_MARKER = os.path.join("core", "_seal-config")
"""Where the file backend keeps the seal config (key ``core/seal-config``),
which ``operator init`` writes first: a directory holding it holds an
initialised file-backend store."""


def holds_file_data(path: str) -> bool:
    """Whether ``path`` is a file-backend store and not (yet) a sqlite one.

    The package's default config moved from ``file`` to ``sqlite`` on the
    same directory, and dpkg replaces an unmodified conffile on upgrade: an
    existing server would come back up on an empty database, uninitialised,
    its secrets out of sight.  Once ``vaultd.db`` exists (a new install, or
    ``operator migrate`` has run) the directory is sqlite's.
    """
    if os.path.exists(os.path.join(path, DB_NAME)):
        return False
    return os.path.isfile(os.path.join(path, FILE_DATA_MARKER))


def open_postgresql(options: dict[str, str], *, create: bool = True) -> Storage:
    """``storage "postgresql"``: imported only when configured, so the other
    backends need no PostgreSQL driver."""
    from vaultd.storage.postgresql import DEFAULT_MAX_PARALLEL, DEFAULT_TABLE, PostgresStorage

    raw = options.get("max_parallel") or str(DEFAULT_MAX_PARALLEL)
    try:
        max_parallel = int(raw)
    except ValueError:
        raise ValueError(f'storage "postgresql": max_parallel must be a whole number, not {raw!r}') from None
    return PostgresStorage(options.get("connection_url"), table=options.get("table") or DEFAULT_TABLE,
                           max_parallel=max_parallel, create=create)


def open_storage(kind: str, options: dict[str, str]) -> Storage:
    """The backend named in the config; errors name what is wrong so that the
    config loader can report them against the file."""
    if kind == "inmem":
        return InmemStorage()
    if kind == "postgresql":
        return open_postgresql(options)
    if kind in ("file", "sqlite"):
        path = options.get("path")
        if not path:
            raise ValueError(f'storage "{kind}" requires a "path" option')
        if kind == "file":
            return FileStorage(path)
        if holds_file_data(path):
            log.warning(
                "found file-backend data in %s; serving it with the file backend; "
                "run vaultd operator migrate to move it to sqlite", path,
            )
            return FileStorage(path)
        return SqliteStorage(path)
    supported = ", ".join(f'"{name}"' for name in SUPPORTED_KINDS)
    raise ValueError(f'unsupported storage type "{kind}"; supported types: {supported}')
