"""Token roles (``auth/token/roles/<name>``): what ``auth/token/create/<role>``
may make.

A role lets a token that is not root create tokens with policies it does not
hold itself (the role's ``allowed_policies``), orphans, and periodic tokens,
within bounds an operator set once.  Roles live beside the tokens, under the
token store's view (``roles/<name>``), one key each.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from vaultd.errors import BadRequest
from vaultd.storage.base import Storage

_TOKEN_TYPES = ("default", "service", "default-service")


@dataclass
class TokenRole:
    name: str
    allowed_policies: list[str] = field(default_factory=list)
    disallowed_policies: list[str] = field(default_factory=list)
    allowed_policies_glob: list[str] = field(default_factory=list)
    disallowed_policies_glob: list[str] = field(default_factory=list)
    orphan: bool = False
    renewable: bool = True
    path_suffix: str = ""
    token_period: int = 0
    token_explicit_max_ttl: int = 0
    token_bound_cidrs: list[str] = field(default_factory=list)
    token_no_default_policy: bool = False
    token_num_uses: int = 0
    token_type: str = "default-service"  # noqa: S105 - a token kind, not a secret
    allowed_entity_aliases: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        """Vault's read shape, with the deprecated spellings it still sends."""
        out = asdict(self)
        out["period"] = self.token_period
        out["explicit_max_ttl"] = self.token_explicit_max_ttl
        out["bound_cidrs"] = list(self.token_bound_cidrs)
        return out

    @property
    def grants_policies(self) -> bool:
        """Whether the role's allowed policies decide (not the parent's)."""
        return bool(self.allowed_policies or self.allowed_policies_glob)

    def _allowed(self, policy: str) -> bool:
        return policy in self.allowed_policies or any(
            fnmatch.fnmatchcase(policy, g) for g in self.allowed_policies_glob
        )

    def _disallowed(self, policy: str) -> bool:
        return policy in self.disallowed_policies or any(
            fnmatch.fnmatchcase(policy, g) for g in self.disallowed_policies_glob
        )

    def apply(self, params: dict[str, Any], parent_policies: list[str]) -> dict[str, Any]:
        """``params`` of a create against this role, with the role's rules
        applied (Vault's ``handleCreateCommon``): its policies checked or
        filled in, and its period, limits and bindings."""
        out = dict(params)
        requested = [p for p in (params.get("policies") or []) if p != "default"]
        if self.grants_policies:
            if not requested:
                requested = list(self.allowed_policies)
            outside = [p for p in requested if not self._allowed(p)]
            if outside:
                raise BadRequest(
                    f"token policies ({sorted(requested)}) must be subset of the role's allowed policies "
                    f"({sorted(self.allowed_policies)})"
                )
        elif not requested:
            # The parent's policies, less what the role forbids.
            requested = [p for p in parent_policies if p not in ("default", "root") and not self._disallowed(p)]
        forbidden = [p for p in requested if self._disallowed(p)]
        if forbidden:
            raise BadRequest(f"token policy {forbidden[0]!r} is disallowed by this role")
        out["policies"] = requested or (["default"] if not self.token_no_default_policy else [])
        out["no_default_policy"] = bool(params.get("no_default_policy")) or self.token_no_default_policy
        if self.token_period:
            out["period"] = self.token_period
        if self.token_explicit_max_ttl:
            asked = int(params.get("explicit_max_ttl") or 0)
            out["explicit_max_ttl"] = min(asked, self.token_explicit_max_ttl) if asked else self.token_explicit_max_ttl
        if self.token_num_uses and not params.get("num_uses"):
            out["num_uses"] = self.token_num_uses
        if not self.renewable:
            out["renewable"] = False
        if self.token_bound_cidrs:
            out["bound_cidrs"] = list(self.token_bound_cidrs)
        return out


class TokenRoles:
    def __init__(self, storage: Storage) -> None:
        """``storage``: the token store's view."""
        self._storage = storage

    def get(self, name: str) -> TokenRole | None:
        raw = self._storage.get(f"roles/{name}")
        if raw is None:
            return None
        stored = json.loads(raw)
        return TokenRole(**{k: v for k, v in stored.items() if k in TokenRole.__dataclass_fields__})

    def names(self) -> list[str]:
        return [n for n in self._storage.list("roles/") if not n.endswith("/")]

    def put(self, role: TokenRole) -> None:
        if role.token_type not in _TOKEN_TYPES:
            raise BadRequest(f"invalid 'token_type' value {role.token_type!r}: vaultd issues service tokens only")
        if role.token_num_uses < 0:
            raise BadRequest("token_num_uses cannot be negative")
        if role.path_suffix and (".." in role.path_suffix.split("/") or role.path_suffix.startswith("/")):
            raise BadRequest("path_suffix cannot contain '..' or start with '/'")
        self._storage.put(f"roles/{role.name}", json.dumps(asdict(role)).encode())

    def delete(self, name: str) -> None:
        self._storage.delete(f"roles/{name}")
