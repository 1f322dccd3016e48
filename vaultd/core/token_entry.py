"""One token's stored entry, and the small helpers its answers use.

Kept apart from the store (``tokens.py``) so each stays a readable size:
this is what a token *is*; the store is how tokens change.
"""

from __future__ import annotations

import json
import secrets
import string
import time
from dataclasses import dataclass, field
from typing import Any

from vaultd.durations import human_duration, rfc3339

_ALPHABET = string.ascii_letters + string.digits
TOKEN_PREFIX = "s."  # noqa: S105 - the visible prefix, not a secret


def random_id(n: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(n))



@dataclass
class TokenEntry:
    """What the store knows about one token.  ``id_hash`` is not the token."""

    id_hash: str
    accessor: str
    policies: list[str]
    path: str
    display_name: str
    creation_time: float
    ttl: int
    """The current period in seconds (0: never expires)."""
    explicit_max_ttl: int = 0
    expire_time: float | None = None
    creation_ttl: int = 0
    renewable: bool = False
    num_uses: int = 0
    orphan: bool = False
    parent_hash: str = ""
    meta: dict[str, str] | None = None
    issue_time: float | None = None
    children: list[str] = field(default_factory=list)
    period: int = 0
    """A periodic token: every renewal sets its TTL back to this, with no
    cap but ``explicit_max_ttl`` (Vault's periodic tokens)."""
    bound_cidrs: list[str] = field(default_factory=list)
    """Addresses the token may be used from; empty: anywhere."""
    role: str = ""
    """The token role it was created against, if any."""

    @property
    def is_root(self) -> bool:
        return "root" in self.policies

    def copy(self) -> TokenEntry:
        """A copy whose lists and map are its own, for callers to change.
        (Not ``dataclasses.replace``: it re-runs ``__init__`` and was a
        seventh of a secret read.)"""
        twin = object.__new__(TokenEntry)
        twin.__dict__.update(self.__dict__)
        twin.policies = list(self.policies)
        twin.children = list(self.children)
        twin.meta = dict(self.meta) if self.meta is not None else None
        twin.bound_cidrs = list(self.bound_cidrs)
        return twin

    def remaining_ttl(self, now: float | None = None) -> int:
        if self.expire_time is None:
            return 0
        return max(0, int(self.expire_time - (now if now is not None else time.time())))

    def expired(self, now: float | None = None) -> bool:
        return self.expire_time is not None and (now if now is not None else time.time()) >= self.expire_time

    def lookup_data(self, token: str) -> dict[str, Any]:
        """Vault's ``auth/token/lookup`` data.  ``token`` is what the caller
        presented (or "" for lookups by accessor)."""
        data: dict[str, Any] = {
            "accessor": self.accessor,
            "creation_time": int(self.creation_time),
            "creation_ttl": self.creation_ttl,
            "display_name": self.display_name,
            "entity_id": "",
            "expire_time": rfc3339(self.expire_time) if self.expire_time is not None else None,
            "explicit_max_ttl": self.explicit_max_ttl,
            "id": token,
            "meta": self.meta,
            "num_uses": self.num_uses,
            "orphan": self.orphan,
            "path": self.path,
            "policies": list(self.policies),
            "ttl": self.remaining_ttl(),
            "type": "service",
        }
        if self.period:
            data["period"] = self.period
        if self.bound_cidrs:
            data["bound_cidrs"] = list(self.bound_cidrs)
        if self.role:
            data["role"] = self.role
        if self.issue_time is not None:
            data["issue_time"] = rfc3339(self.issue_time)
            data["renewable"] = self.renewable
        return data

    def auth_block(self, token: str) -> dict[str, Any]:
        """The ``auth`` object of a create/renew response."""
        return {
            "client_token": token,
            "accessor": self.accessor,
            "policies": list(self.policies),
            "token_policies": list(self.policies),
            "metadata": self.meta,
            # The TTL just granted, not what is left a moment later: Vault
            # answers 300 for a 300 s token, and clients compare.
            "lease_duration": self.ttl if self.expire_time is not None else 0,
            "renewable": self.renewable,
            "entity_id": "",
            "token_type": "service",
            "orphan": self.orphan,
            "mfa_requirement": None,
            "num_uses": self.num_uses,
        }


def parse_entry(blob: bytes) -> TokenEntry:
    return TokenEntry(**json.loads(blob))



def capped_warning(asked: int, allowed: int) -> str:
    return (
        f'TTL of "{human_duration(asked)}" exceeded the effective max_ttl of '
        f'"{human_duration(allowed)}"; TTL value is capped accordingly'
    )
