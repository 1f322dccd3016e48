"""What a secrets engine is to the router.

An engine is built for one mount and given only a storage view under that
mount's prefix (over the barrier, so it reads and writes plaintext and cannot
reach anything else).  It never imports the core.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

from vaultd.logical import Request, Response
from vaultd.storage.base import Storage


@dataclass
class MountSettings:
    """The parts of a mount's entry an engine may need."""

    path: str
    """Mount path with trailing slash, e.g. ``secret/``."""
    options: dict[str, str] = field(default_factory=dict)
    default_lease_ttl: int = 0
    """Seconds; 0 means the system default (``system_default_lease_ttl``)."""
    system_default_lease_ttl: int = 32 * 24 * 3600


class Engine(abc.ABC):
    def __init__(self, storage: Storage, mount: MountSettings) -> None:
        self.storage = storage
        self.mount = mount

    @abc.abstractmethod
    def handle(self, request: Request) -> Response:
        """Serve one request; raise :mod:`vaultd.errors` types for failures."""

    def exists(self, request: Request) -> bool:
        """Whether the request's target exists (Vault's ExistenceCheck), used
        by policy to tell ``create`` from ``update``.  Engines that do not know
        answer True, which makes a write an ``update``."""
        return True
