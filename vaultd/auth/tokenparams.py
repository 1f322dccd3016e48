"""The ``token_*`` settings every auth method's roles and users carry
(Vault's ``sdk/helper/tokenutil``), so userpass and AppRole declare them
once and issue tokens the same way."""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field
from typing import Any

from vaultd.engines.framework import FieldData, FieldSpec
from vaultd.errors import BadRequest
from vaultd.logical import Auth

TOKEN_FIELDS: dict[str, FieldSpec] = {
    "token_policies": FieldSpec("lower_strings", description="policies of issued tokens"),
    "token_ttl": FieldSpec("duration"),
    "token_max_ttl": FieldSpec("duration"),
    "token_period": FieldSpec("duration"),
    "token_explicit_max_ttl": FieldSpec("duration"),
    "token_num_uses": FieldSpec("int"),
    "token_bound_cidrs": FieldSpec("strings"),
    "token_no_default_policy": FieldSpec("bool"),
    "token_type": FieldSpec("string", default="default"),
    # Deprecated spellings Vault still reads (and older clients still send).
    "policies": FieldSpec("lower_strings"),
    "ttl": FieldSpec("duration"),
    "max_ttl": FieldSpec("duration"),
    "period": FieldSpec("duration"),
    "bound_cidrs": FieldSpec("strings"),
}
_LEGACY = {"policies": "token_policies", "ttl": "token_ttl", "max_ttl": "token_max_ttl",
           "period": "token_period", "bound_cidrs": "token_bound_cidrs"}
_TOKEN_TYPES = ("default", "service", "default-service")


def check_cidrs(values: list[str], what: str) -> list[str]:
    """IP addresses or CIDR blocks, or a 400 naming the field."""
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise BadRequest(f"invalid {what}: {value!r} is not an IP address or CIDR block") from None
    return values


def address_in(address: str, cidrs: list[str]) -> bool:
    """Whether ``address`` lies in one of ``cidrs`` (an empty list admits all)."""
    if not cidrs:
        return True
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


@dataclass
class TokenParams:
    token_policies: list[str] = field(default_factory=list)
    token_ttl: int = 0
    token_max_ttl: int = 0
    token_period: int = 0
    token_explicit_max_ttl: int = 0
    token_num_uses: int = 0
    token_bound_cidrs: list[str] = field(default_factory=list)
    token_no_default_policy: bool = False
    token_type: str = "default"  # noqa: S105 - a token kind, not a secret

    @classmethod
    def load(cls, stored: dict[str, Any]) -> TokenParams:
        return cls(**{k: v for k, v in stored.items() if k in cls.__dataclass_fields__})

    def update(self, data: FieldData) -> None:
        """Apply what the request gives (token_* first, the old names when
        the new one is absent), then check the whole."""
        for legacy, current in _LEGACY.items():
            if data.given(current):
                setattr(self, current, data.get(current))
            elif data.given(legacy):
                setattr(self, current, data.get(legacy))
        for name in ("token_explicit_max_ttl", "token_num_uses", "token_no_default_policy", "token_type"):
            if data.given(name):
                setattr(self, name, data.get(name))
        if self.token_num_uses < 0:
            raise BadRequest("token_num_uses cannot be negative")
        if self.token_max_ttl and self.token_ttl > self.token_max_ttl:
            raise BadRequest("token ttl should not be greater than token max ttl")
        if self.token_type not in _TOKEN_TYPES:
            raise BadRequest(f"invalid 'token_type' value {self.token_type!r}: vaultd issues service tokens only")
        check_cidrs(self.token_bound_cidrs, "token_bound_cidrs")

    def describe(self) -> dict[str, Any]:
        return asdict(self)

    def auth(self, *, display_name: str, metadata: dict[str, str], extra_policies: list[str] | None = None) -> Auth:
        return Auth(
            policies=sorted(set(self.token_policies) | set(extra_policies or [])),
            display_name=display_name,
            metadata=metadata,
            ttl=self.token_ttl,
            max_ttl=self.token_max_ttl,
            period=self.token_period,
            explicit_max_ttl=self.token_explicit_max_ttl,
            num_uses=self.token_num_uses,
            bound_cidrs=list(self.token_bound_cidrs),
            no_default_policy=self.token_no_default_policy,
        )
