"""What a secrets engine is to the router.

An engine is built for one mount and given only a storage view under that
mount's prefix (over the barrier, so it reads and writes plaintext and cannot
reach anything else).  It never imports the core.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from urllib.parse import quote

from vaultd.errors import BadRequest
from vaultd.logical import Request, Response
from vaultd.storage.base import Storage

MAX_SEGMENT = 254
"""The longest path segment an engine hands to storage, counted the way
the file backend names files: percent-encoded (every byte but letters,
digits and ``-._~`` takes three, and a leading ``.`` or ``_`` is encoded
too), under NAME_MAX (255) less the backend's one-character value mark."""


def check_segments(path: str) -> None:
    """A 400, before any storage is touched, for a path storage could not
    hold: a segment over :data:`MAX_SEGMENT`, or text that is not valid
    Unicode (a lone surrogate cannot be encoded as UTF-8).  Without this the
    file backend refused the key deep inside a request, a 500."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("invalid path: not valid Unicode") from None
    for segment in path.split("/"):
        if len(segment) * 12 <= MAX_SEGMENT:
            continue  # short enough however it encodes (4 UTF-8 bytes, 3 each)
        encoded = len(quote(segment, safe="")) + (2 if segment[:1] in "._" else 0)
        if encoded > MAX_SEGMENT:
            raise BadRequest(
                f"invalid path: a path segment is longer than {MAX_SEGMENT} bytes "
                "(percent-encoded: bytes other than letters, digits and -._~ count as three)"
            )


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

    def is_unauthenticated(self, path: str) -> bool:
        """Whether ``path`` (relative to the mount) is served without a
        token: an auth method's login.  Secrets engines have none."""
        return False

    def exists(self, request: Request) -> bool:
        """Whether the request's target exists (Vault's ExistenceCheck), used
        by policy to tell ``create`` from ``update``.  Engines that do not know
        answer True, which makes a write an ``update``."""
        return True
