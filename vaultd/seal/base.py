"""Seals: what protects the unseal key (KEK).

With the default Shamir seal there is no seal object at all: the KEK is split
into key shares that operators hold (see :mod:`vaultd.crypto.shamir`).  An
*auto seal* instead wraps the KEK with an external key service and keeps the
wrapped form in storage as the "stored key"; whoever can unwrap it (the
unsealer agent, with ``kms:Decrypt``) can unseal.  The daemon only ever calls
:meth:`AutoSeal.wrap`; :meth:`AutoSeal.unwrap` is for the agent.
"""

from __future__ import annotations

import abc
import base64
import json
from dataclasses import dataclass, field


@dataclass
class StoredKey:
    """The KEK wrapped by the seal, as kept in storage and served to the agent."""

    seal_type: str
    ciphertext: bytes
    key_id: str
    """The key that wrapped it, as the service reports it (for KMS, the ARN).
    For information only: the agent decrypts with its own configured key,
    never with the one a stored key names."""
    encryption_context: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "seal_type": self.seal_type,
            "ciphertext": base64.b64encode(self.ciphertext).decode(),
            "key_id": self.key_id,
            "encryption_context": dict(self.encryption_context),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, object]) -> StoredKey:
        context = raw.get("encryption_context") or {}
        if not isinstance(context, dict):
            raise ValueError("encryption_context must be an object")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in context.items()):
            # Not coerced: what the agent decrypts under must be what was sent.
            raise ValueError("encryption_context must map strings to strings")
        return cls(
            seal_type=str(raw["seal_type"]),
            ciphertext=base64.b64decode(str(raw["ciphertext"]), validate=True),
            key_id=str(raw.get("key_id", "")),
            encryption_context={str(k): str(v) for k, v in context.items()},
        )

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True).encode()

    @classmethod
    def from_json(cls, blob: bytes) -> StoredKey:
        return cls.from_dict(json.loads(blob))


class SealError(Exception):
    """The seal service refused or failed.

    ``code`` is the service's own error code (``AccessDeniedException``,
    ``ThrottlingException``...), ``permanent`` says whether retrying can help.
    Messages never carry key material.
    """

    def __init__(self, message: str, *, code: str = "", permanent: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.permanent = permanent


class AutoSeal(abc.ABC):
    type: str = ""

    @abc.abstractmethod
    def wrap(self, kek: bytes, context: dict[str, str]) -> StoredKey:
        """Wrap a freshly made KEK (init, rekey, migration)."""

    @abc.abstractmethod
    def describe_key(self) -> str:
        """Check that the seal's key can wrap at all and return its id (ARN),
        so init fails on a mistyped or disabled key before a KEK is made."""

    @abc.abstractmethod
    def unwrap(self, stored: StoredKey) -> bytes:
        """Recover the KEK; raise :class:`SealError` on failure."""

    def warm(self) -> None:  # noqa: B027 - an optional hook: most seals need nothing
        """An unwrap is likely within the next second (the unsealer agent
        saw the daemon stop answering): get ready for it.  Nothing by default."""

    def rest(self) -> None:  # noqa: B027 - an optional hook, as warm()
        """Nothing to unwrap until the daemon's next start: let go of what
        :meth:`warm` took.  Nothing by default."""
