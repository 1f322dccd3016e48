"""Storage backends, chosen by the config file's ``storage "<kind>"`` stanza."""

from __future__ import annotations

from vaultd.storage.base import Storage
from vaultd.storage.file import FileStorage
from vaultd.storage.inmem import InmemStorage
from vaultd.storage.sqlite import SqliteStorage
from vaultd.storage.view import StorageView

SUPPORTED_KINDS = ("file", "inmem", "sqlite")

__all__ = ["SUPPORTED_KINDS", "FileStorage", "InmemStorage", "SqliteStorage", "Storage", "StorageView", "open_storage"]


def open_storage(kind: str, options: dict[str, str]) -> Storage:
    """The backend named in the config; errors name what is wrong so that the
    config loader can report them against the file."""
    if kind == "inmem":
        return InmemStorage()
    if kind in ("file", "sqlite"):
        path = options.get("path")
        if not path:
            raise ValueError(f'storage "{kind}" requires a "path" option')
        return FileStorage(path) if kind == "file" else SqliteStorage(path)
    supported = ", ".join(f'"{name}"' for name in SUPPORTED_KINDS)
    raise ValueError(f'unsupported storage type "{kind}"; supported types: {supported}')
