"""Leases, as far as vaultd has them: every token is one.

vaultd's secrets engines (KV) issue no leases, so ``sys/leases/*`` speaks
of tokens: a token's lease id is its creation path and its storage hash
(``auth/userpass/login/alice/<hash>``), as Vault names auth leases.  That
lets operators revoke every token one login mount issued
(``sys/leases/revoke-prefix/auth/userpass/``) with Vault's own commands.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vaultd.durations import rfc3339
from vaultd.errors import BadRequest

if TYPE_CHECKING:
    from vaultd.core.token_entry import TokenEntry
    from vaultd.core.tokens import TokenStore


def lease_id(entry: TokenEntry) -> str:
    return f"{entry.path}/{entry.id_hash}"


class Leases:
    def __init__(self, tokens: TokenStore) -> None:
        self._tokens = tokens

    def entry(self, lease: str) -> TokenEntry:
        path, _, id_hash = lease.rpartition("/")
        entry = self._tokens.lookup_hash(id_hash)
        if entry is None or entry.path != path:
            raise BadRequest("invalid lease")
        return entry

    def lookup(self, lease: str) -> dict[str, Any]:
        entry = self.entry(lease)
        return {
            "id": lease,
            "issue_time": rfc3339(entry.creation_time),
            "expire_time": rfc3339(entry.expire_time) if entry.expire_time else None,
            "last_renewal": None,
            "renewable": entry.renewable,
            "ttl": entry.remaining_ttl(),
        }

    def list(self, prefix: str) -> list[str]:
        """Lease ids under ``prefix`` as Vault lists them: direct children."""
        children: set[str] = set()
        for entry in self._tokens.entries():
            lease = lease_id(entry)
            if lease.startswith(prefix) and not entry.expired():
                head, sep, _ = lease[len(prefix):].partition("/")
                children.add(head + sep)
        return sorted(children)

    def renew(self, lease: str, increment: int) -> tuple[TokenEntry, list[str]]:
        return self._tokens.renew(self.entry(lease), increment)

    def revoke(self, lease: str) -> None:
        path, _, id_hash = lease.rpartition("/")
        entry = self._tokens.lookup_hash(id_hash)
        if entry is not None and entry.path == path:
            self._tokens.revoke(entry)

    def revoke_prefix(self, prefix: str) -> int:
        if not prefix.strip("/"):
            raise BadRequest("empty prefix")
        return self._tokens.revoke_prefix(prefix)
