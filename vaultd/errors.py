"""Errors that cross floors.

Every layer raises these; only the HTTP layer turns them into Vault's
``{"errors": [...]}`` body.  Living on the lowest floor lets engines and
storage raise them without importing the core.
"""

from __future__ import annotations


class VaultError(Exception):
    """An error the client should see, with the HTTP status Vault uses for it.

    Messages must never contain secret material: they are returned to the
    client and logged.
    """

    status: int = 500

    def __init__(self, *messages: str, status: int | None = None) -> None:
        super().__init__(*messages)
        self.messages: list[str] = list(messages)
        if status is not None:
            self.status = status


class BadRequest(VaultError):
    status = 400


class PermissionDenied(VaultError):
    status = 403

    def __init__(self, *messages: str) -> None:
        super().__init__(*(messages or ("permission denied",)))


class NotFound(VaultError):
    """404.  Vault answers a missing secret with an empty ``errors`` list."""

    status = 404


class MethodNotAllowed(VaultError):
    status = 405


class PayloadTooLarge(VaultError):
    status = 413


class Sealed(VaultError):
    status = 503

    def __init__(self, *messages: str) -> None:
        super().__init__(*(messages or ("Vault is sealed",)))


class StorageError(VaultError):
    """The backend failed (disk full, I/O error).  500, and nothing half-written."""

    status = 500
