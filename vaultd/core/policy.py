"""Policies and the one authorisation check every request passes through.

Only two policies exist so far: ``root`` (everything) and Vault's built-in
``default`` (a token may look itself up, renew and revoke itself, and ask its
own capabilities).  They are expressed as ordinary path rules so that
user-written ACL policies can later be added by loading more :class:`Policy`
objects, without changing :func:`authorize`.
"""

from __future__ import annotations

from dataclasses import dataclass

from vaultd.errors import PermissionDenied
from vaultd.logical import Operation


@dataclass(frozen=True)
class Rule:
    path: str
    capabilities: frozenset[str]
    prefix: bool = False
    """A trailing ``*`` in the policy: the rule covers every path below."""

    def matches(self, path: str) -> bool:
        return path.startswith(self.path) if self.prefix else path == self.path


@dataclass(frozen=True)
class Policy:
    name: str
    rules: tuple[Rule, ...]


def _rule(path: str, *caps: str) -> Rule:
    if path.endswith("*"):
        return Rule(path[:-1], frozenset(caps), prefix=True)
    return Rule(path, frozenset(caps))


DEFAULT_POLICY = Policy(
    "default",
    (
        _rule("auth/token/lookup-self", "read"),
        _rule("auth/token/renew-self", "update"),
        _rule("auth/token/revoke-self", "update"),
        _rule("sys/capabilities-self", "update"),
        _rule("sys/internal/ui/resultant-acl", "read"),
        _rule("sys/leases/renew", "update"),
        _rule("sys/leases/lookup", "update"),
        _rule("sys/renew", "update"),
        _rule("sys/tools/hash", "update"),
        _rule("sys/tools/hash/*", "update"),
        _rule("sys/wrapping/lookup", "update"),
        _rule("sys/wrapping/unwrap", "update"),
        _rule("sys/wrapping/wrap", "update"),
        _rule("sys/control-group/request", "update"),
    ),
)

BUILTIN_POLICIES = {"default": DEFAULT_POLICY}

CAPABILITY_OF = {
    Operation.READ: "read",
    Operation.CREATE: "create",
    Operation.UPDATE: "update",
    Operation.DELETE: "delete",
    Operation.LIST: "list",
    Operation.PATCH: "patch",
}


def capabilities(policy_names: list[str], path: str) -> set[str]:
    """The capabilities the named policies grant on ``path``.

    As in Vault, the most specific matching rule of each policy counts: an
    exact rule beats a prefix rule, a longer prefix beats a shorter one, and
    ``deny`` anywhere wins."""
    if "root" in policy_names:
        return {"root"}
    granted: set[str] = set()
    for name in policy_names:
        policy = BUILTIN_POLICIES.get(name)
        if policy is None:
            continue
        best: Rule | None = None
        for rule in policy.rules:
            if rule.matches(path) and (
                best is None or (best.prefix and not rule.prefix) or (best.prefix and len(rule.path) > len(best.path))
            ):
                best = rule
        if best is not None:
            if "deny" in best.capabilities:
                return {"deny"}
            granted |= best.capabilities
    return granted


def authorize(policy_names: list[str], path: str, operation: Operation, *, sudo: bool = False) -> None:
    """Raise :class:`PermissionDenied` unless the policies allow ``operation``
    on ``path`` (and ``sudo`` on it when the endpoint is root-protected)."""
    caps = capabilities(policy_names, path)
    if "root" in caps:
        return
    if "deny" in caps or CAPABILITY_OF[operation] not in caps or (sudo and "sudo" not in caps):
        raise PermissionDenied()
