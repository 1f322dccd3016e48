"""The barrier's keyring: one AES-256-GCM data key per term.

The newest term encrypts; every term still decrypts, so ``sys/rotate`` never
has to re-encrypt existing data.  The keyring is stored encrypted by the root
key, which is itself stored encrypted by the unseal key (KEK).
"""

from __future__ import annotations

import base64
import functools
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

from vaultd.crypto import aead


def now_rfc3339() -> str:
    """RFC 3339 with nanosecond precision and ``Z``, as Go formats time."""
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond:06d}000Z"


@dataclass
class Term:
    number: int
    key: bytes = field(repr=False)
    install_time: str

    @functools.cached_property
    def cipher(self) -> aead.Cipher:
        """The key schedule, made once per term rather than per message."""
        return aead.Cipher(self.key)


@dataclass
class Keyring:
    terms: dict[int, Term]
    active: int

    @classmethod
    def new(cls) -> Keyring:
        return cls({1: Term(1, aead.generate_key(), now_rfc3339())}, 1)

    @property
    def active_term(self) -> Term:
        return self.terms[self.active]

    def rotated(self) -> Keyring:
        """A copy with one more term, which becomes the active one."""
        number = max(self.terms) + 1
        terms = dict(self.terms)
        terms[number] = Term(number, aead.generate_key(), now_rfc3339())
        return Keyring(terms, number)

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "active": self.active,
                "terms": [
                    {"term": t.number, "key": base64.b64encode(t.key).decode(), "install_time": t.install_time}
                    for t in self.terms.values()
                ],
            }
        ).encode()

    @classmethod
    def from_bytes(cls, blob: bytes) -> Keyring:
        raw = json.loads(blob)
        terms = {
            int(t["term"]): Term(int(t["term"]), base64.b64decode(t["key"]), str(t["install_time"]))
            for t in raw["terms"]
        }
        return cls(terms, int(raw["active"]))
