"""ACL policies as Vault writes them, and the matcher compiled from a set.

A policy is HCL (or JSON) with ``path "<pattern>" { capabilities = [...] }``
blocks.  Patterns are exact, end in ``*`` (a prefix), or hold ``+`` (any one
segment).  A token's policies are compiled once into an :class:`ACL`:

- rules for the *same* pattern in several policies merge: capabilities add
  up, and ``deny`` in any of them leaves only ``deny``;
- a request path takes the exact rule if there is one, otherwise the
  highest-priority wildcard rule, by Vault's order: the later the first
  ``+``/``*``, the higher; a non-prefix beats a prefix; fewer ``+`` beat
  more; longer beats shorter; then lexical order;
- ``list`` of ``a/b/`` also finds a rule written ``a/b``.

What the matcher answers is then checked against the operation, the
request's parameters (``allowed_parameters``, ``denied_parameters``,
``required_parameters``) and its wrapping TTL (``min_wrapping_ttl``,
``max_wrapping_ttl``), as Vault's ``AllowOperation`` does.  Behaviour was
read from OpenBao's ``internal/vault/policy``; nothing here knows HTTP or
storage.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from vaultd.durations import parse_duration
from vaultd.errors import VaultError
from vaultd.hcl_source import SourceSyntaxError, parse_hcl, parse_json

CAPABILITIES = ("create", "read", "update", "patch", "delete", "list", "sudo", "deny")
"""Vault's capabilities, in the order ``sys/capabilities`` reports them
after ``sudo`` (see :meth:`ACL.capabilities`)."""
_REPORT_ORDER = ("sudo", "read", "list", "update", "delete", "create", "patch")
_OLD_POLICIES = {
    "deny": ("deny",),
    "read": ("read", "list"),
    "write": ("create", "read", "update", "delete", "list"),
    "sudo": ("create", "read", "update", "delete", "list", "sudo"),
}
_PATH_KEYS = frozenset(
    {
        "comment", "policy", "capabilities", "allowed_parameters", "denied_parameters",
        "required_parameters", "min_wrapping_ttl", "max_wrapping_ttl", "mfa_methods",
        "control_group", "expiration", "pagination_limit",
    }
)
_TOP_KEYS = frozenset({"name", "path"})
_MAX_POLICY_SIZE = 1024 * 1024


class PolicyError(ValueError):
    """A policy that cannot be stored; the message names the line (HCL) and
    the problem, and is returned to the client as a 400."""


@dataclass
class Permissions:
    """What one pattern grants once every policy's rule for it is merged."""

    capabilities: set[str] = field(default_factory=set)
    allowed_parameters: dict[str, list[Any]] | None = None
    denied_parameters: dict[str, list[Any]] | None = None
    required_parameters: list[str] = field(default_factory=list)
    min_wrapping_ttl: int = 0
    max_wrapping_ttl: int = 0

    @property
    def denied(self) -> bool:
        return "deny" in self.capabilities

    def copy(self) -> Permissions:
        return Permissions(
            set(self.capabilities),
            None if self.allowed_parameters is None else {k: list(v) for k, v in self.allowed_parameters.items()},
            None if self.denied_parameters is None else {k: list(v) for k, v in self.denied_parameters.items()},
            list(self.required_parameters),
            self.min_wrapping_ttl,
            self.max_wrapping_ttl,
        )

    def merge(self, other: Permissions) -> None:
        """Add another policy's rule for the same pattern (Vault's NewACL)."""
        if self.denied:
            return
        if other.denied:
            self.capabilities = {"deny"}
            self.allowed_parameters = self.denied_parameters = None
            return
        self.capabilities |= other.capabilities
        # The lesser of two bounds wins, the idea being the shortest lifetime.
        if other.max_wrapping_ttl and (not self.max_wrapping_ttl or other.max_wrapping_ttl < self.max_wrapping_ttl):
            self.max_wrapping_ttl = other.max_wrapping_ttl
        if other.min_wrapping_ttl and (not self.min_wrapping_ttl or other.min_wrapping_ttl < self.min_wrapping_ttl):
            self.min_wrapping_ttl = other.min_wrapping_ttl
        self.allowed_parameters = _merge_parameters(self.allowed_parameters, other.allowed_parameters)
        self.denied_parameters = _merge_parameters(self.denied_parameters, other.denied_parameters)
        for name in other.required_parameters:
            if name not in self.required_parameters:
                self.required_parameters.append(name)


def _merge_parameters(
    mine: dict[str, list[Any]] | None, theirs: dict[str, list[Any]] | None
) -> dict[str, list[Any]] | None:
    if not theirs:
        return mine
    if mine is None:
        return {k: list(v) for k, v in theirs.items()}
    for key, values in theirs.items():
        # An empty list (any value) overrides any list of values.
        if not values or (key in mine and not mine[key]):
            mine[key] = []
        else:
            mine[key] = list(values) + mine.get(key, [])
    return mine


@dataclass(frozen=True)
class PathRule:
    pattern: str
    """The path as written, without a trailing ``*`` unless it also has ``+``."""
    prefix: bool
    segment_wildcards: bool
    permissions: Permissions
    templated: bool = False


@dataclass(frozen=True)
class Policy:
    name: str
    raw: str
    rules: tuple[PathRule, ...]


# -- parsing -------------------------------------------------------------------------


def parse_policy(name: str, text: str) -> Policy:
    """A policy from its HCL or JSON text, or :class:`PolicyError`."""
    if len(text.encode("utf-8", "surrogatepass")) > _MAX_POLICY_SIZE:
        raise PolicyError("failed to parse policy: policy is larger than 1 MiB")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise PolicyError("failed to parse policy: not valid UTF-8") from None
    try:
        items = parse_json(text) if text.lstrip().startswith("{") else parse_hcl(text)
    except SourceSyntaxError as exc:
        where = f"At {exc.line}: " if exc.line else ""
        raise PolicyError(f"failed to parse policy: {where}{exc.reason}") from None
    except (RecursionError, ValueError, TypeError) as exc:
        raise PolicyError(f"failed to parse policy: {type(exc).__name__}") from None
    rules: list[PathRule] = []
    for item in items:
        line = item.lines.get((item.key,))
        if item.key not in _TOP_KEYS:
            raise PolicyError(f"failed to parse policy: {_at(line)}invalid key {item.key!r}")
        if item.key == "name":
            continue
        blocks = item.value if isinstance(item.value, list) else [item.value]
        for block in blocks:
            if not isinstance(block, dict):
                raise PolicyError(f"failed to parse policy: {_at(line)}'path' must be a block")
            for pattern, body in block.items():
                at = item.lines.get((item.key, pattern), line)
                rule = _parse_path(str(pattern), body, at, item.lines)
                if rule is not None:
                    rules.append(rule)
    return Policy(name=name, raw=text, rules=tuple(rules))


def _at(line: int | None) -> str:
    return f"line {line}: " if line else ""


def _parse_path(pattern: str, body: object, line: int | None, lines: Mapping[tuple[str, ...], int]) -> PathRule | None:
    where = f"{_at(line)}path {json.dumps(pattern)}: "
    if isinstance(body, list):  # the same pattern twice in JSON, or HCL list syntax
        if len(body) != 1:
            raise PolicyError(f"failed to parse policy: {where}expected one block")
        body = body[0]
    if not isinstance(body, dict):
        raise PolicyError(f"failed to parse policy: {where}expected a block")
    for key in body:
        if key not in _PATH_KEYS:
            at = lines.get(("path", pattern, key), line)
            raise PolicyError(f"failed to parse policy: {_at(at)}path {json.dumps(pattern)}: invalid key {key!r}")
    path = pattern[1:] if pattern.startswith("/") else pattern
    if "+*" in path:
        raise PolicyError(f"failed to parse policy: {where}invalid use of wildcards ('+*' is forbidden)")
    segment_wildcards = path == "+" or "/+" in path or path.startswith("+/")
    prefix = path.endswith("*")
    if prefix and not segment_wildcards:
        path = path[:-1]
    caps = _capabilities(body, where)
    perms = Permissions(capabilities=caps)
    if "deny" not in caps:
        perms.allowed_parameters = _parameters(body.get("allowed_parameters"), where, "allowed_parameters")
        perms.denied_parameters = _parameters(body.get("denied_parameters"), where, "denied_parameters")
        required = body.get("required_parameters")
        if required is not None:
            if not isinstance(required, list) or not all(isinstance(v, str) for v in required):
                raise PolicyError(f"failed to parse policy: {where}required_parameters must be a list of strings")
            perms.required_parameters = list(required)
        perms.min_wrapping_ttl = _ttl(body.get("min_wrapping_ttl"), where, "min_wrapping_ttl")
        perms.max_wrapping_ttl = _ttl(body.get("max_wrapping_ttl"), where, "max_wrapping_ttl")
        if perms.min_wrapping_ttl and perms.max_wrapping_ttl and perms.max_wrapping_ttl < perms.min_wrapping_ttl:
            raise PolicyError(f"failed to parse policy: {where}max_wrapping_ttl cannot be less than min_wrapping_ttl")
    return PathRule(
        pattern=path,
        prefix=prefix,
        segment_wildcards=segment_wildcards,
        permissions=perms,
        templated="{{" in path,
    )


def _capabilities(body: Mapping[str, Any], where: str) -> set[str]:
    caps: list[str] = []
    old = body.get("policy")
    if old is not None:
        if old not in _OLD_POLICIES:
            raise PolicyError(f"failed to parse policy: {where}invalid policy {json.dumps(old)}")
        caps.extend(_OLD_POLICIES[old])
    given = body.get("capabilities", [])
    if not isinstance(given, list) or not all(isinstance(c, str) for c in given):
        raise PolicyError(f"failed to parse policy: {where}capabilities must be a list of strings")
    for cap in [*caps, *given]:
        if cap not in CAPABILITIES:
            raise PolicyError(f"failed to parse policy: {where}invalid capability {json.dumps(cap)}")
        if cap == "deny":
            return {"deny"}
    return set(caps) | set(given)


def _parameters(raw: object, where: str, key: str) -> dict[str, list[Any]] | None:
    if raw is None:
        return None
    if isinstance(raw, list):  # HCL's repeated-block form: [{"a": [...]}, ...]
        merged: dict[str, Any] = {}
        for part in raw:
            if not isinstance(part, dict):
                raise PolicyError(f"failed to parse policy: {where}{key} must be a map of lists")
            merged.update(part)
        raw = merged
    if not isinstance(raw, dict):
        raise PolicyError(f"failed to parse policy: {where}{key} must be a map of lists")
    out: dict[str, list[Any]] = {}
    for name, values in raw.items():
        if not isinstance(values, list):
            raise PolicyError(f"failed to parse policy: {where}{key}.{name} must be a list")
        out[str(name).lower()] = list(values)
    return out


def _ttl(raw: object, where: str, key: str) -> int:
    if raw is None:
        return 0
    try:
        seconds = parse_duration(raw)
    except (VaultError, ValueError, TypeError):
        raise PolicyError(f"failed to parse policy: {where}error parsing {key}") from None
    if seconds is None or seconds < 0:
        raise PolicyError(f"failed to parse policy: {where}error parsing {key}")
    return int(seconds)


# -- the compiled matcher ------------------------------------------------------------


@dataclass(frozen=True)
class _Wildcard:
    pattern: str
    parts: tuple[str, ...]
    prefix: bool
    first_wildcard: int
    wildcards: int
    permissions: Permissions

    def rank(self) -> tuple[int, int, int, int, str]:
        """Larger is higher priority (Vault's CheckAllowedFromNonExactPaths)."""
        return (self.first_wildcard, 0 if self.prefix else 1, -self.wildcards, len(self.pattern), self.pattern)


@dataclass(frozen=True)
class Decision:
    """What the ACL says about one request."""

    allowed: bool
    sudo: bool


class ACL:
    """The merged rules of a set of policies; build once per set, reuse."""

    def __init__(self, policies: Iterable[Policy]) -> None:
        self.root = False
        self._exact: dict[str, Permissions] = {}
        self._prefix: dict[str, Permissions] = {}
        wild: dict[str, Permissions] = {}
        for policy in policies:
            if policy.name == "root":
                self.root = True
            for rule in policy.rules:
                if rule.templated:
                    continue  # identity templates: vaultd has no identity store
                table = wild if rule.segment_wildcards else self._prefix if rule.prefix else self._exact
                existing = table.get(rule.pattern)
                if existing is None:
                    table[rule.pattern] = rule.permissions.copy()
                else:
                    existing.merge(rule.permissions)
        self._prefix_lengths = sorted({len(p) for p in self._prefix}, reverse=True)
        self._wildcards = [_wildcard(pattern, perms) for pattern, perms in wild.items() if pattern]

    # -- lookup ----------------------------------------------------------------

    def permissions(self, path: str, *, listing: bool = False) -> Permissions | None:
        path = path.lstrip("/")
        found = self._exact.get(path)
        if found is not None:
            return found
        if listing:
            found = self._exact.get(path.removesuffix("/"))
            if found is not None:
                return found
        found = self._non_exact(path)
        if found is None and listing and path.endswith("/"):
            found = self._non_exact(path[:-1])
        return found

    def _non_exact(self, path: str) -> Permissions | None:
        best_prefix: str | None = None
        for length in self._prefix_lengths:
            if length <= len(path) and path[:length] in self._prefix:
                best_prefix = path[:length]
                break
        if not self._wildcards:
            return None if best_prefix is None else self._prefix[best_prefix]
        candidates: list[tuple[tuple[int, int, int, int, str], Permissions]] = []
        if best_prefix is not None:
            rank = (len(best_prefix), 0, 0, len(best_prefix), best_prefix)
            candidates.append((rank, self._prefix[best_prefix]))
        parts = path.split("/")
        for wc in self._wildcards:
            if _segments_match(wc, parts):
                candidates.append((wc.rank(), wc.permissions))
        if not candidates:
            return None
        return max(candidates, key=lambda item: item[0])[1]

    def capabilities(self, path: str) -> list[str]:
        """``sys/capabilities`` for one path: ``["root"]``, ``["deny"]``, or
        the granted capabilities in Vault's order."""
        if self.root:
            return ["root"]
        perms = self.permissions(path, listing=True)
        if perms is None or perms.denied:
            return ["deny"]
        caps = [c for c in _REPORT_ORDER if c in perms.capabilities]
        return caps or ["deny"]

    def check(
        self,
        path: str,
        capability: str,
        *,
        data: Mapping[str, Any] | None = None,
        wrap_ttl: int | None = None,
    ) -> Decision:
        """Whether ``capability`` on ``path`` is granted with this request's
        parameters and wrapping TTL; ``sudo`` says whether the rule also
        grants sudo (root-protected endpoints need it)."""
        if self.root:
            return Decision(True, True)
        perms = self.permissions(path, listing=capability == "list")
        if perms is None or perms.denied:
            return Decision(False, False)
        sudo = "sudo" in perms.capabilities
        if capability not in perms.capabilities:
            return Decision(False, sudo)
        if perms.max_wrapping_ttl and (wrap_ttl is None or wrap_ttl > perms.max_wrapping_ttl):
            return Decision(False, sudo)
        if perms.min_wrapping_ttl and (wrap_ttl is None or wrap_ttl < perms.min_wrapping_ttl):
            return Decision(False, sudo)
        if (
            perms.min_wrapping_ttl
            and perms.max_wrapping_ttl
            and perms.max_wrapping_ttl < perms.min_wrapping_ttl
        ):
            return Decision(False, sudo)
        if capability in ("read", "update", "create", "patch"):
            return Decision(_parameters_allowed(perms, data or {}), sudo)
        return Decision(True, sudo)

    def has_mount_access(self, mount_path: str) -> bool:
        """Whether any rule grants something at or below a mount (Vault's
        ``hasMountAccess``): what ``sys/internal/ui/mounts/<path>`` asks
        before it tells a client which engine serves a path."""
        if self.root or self.capabilities(mount_path) != ["deny"]:
            return True
        for table in (self._exact, self._prefix):
            for pattern, perms in table.items():
                if pattern.startswith(mount_path) and not perms.denied and perms.capabilities:
                    return True
        mount_parts = mount_path.rstrip("/").split("/")
        for wc in self._wildcards:
            perms = wc.permissions
            if perms.denied or not perms.capabilities:
                continue
            if _reaches_below(wc, mount_parts):
                return True
        return False

    def to_resultant(self) -> dict[str, Any]:
        """``sys/internal/ui/resultant-acl``'s ``exact_paths``/``glob_paths``."""

        def describe(perms: Permissions) -> dict[str, Any]:
            out: dict[str, Any] = {"capabilities": sorted(perms.capabilities)}
            if perms.allowed_parameters:
                out["allowed_parameters"] = perms.allowed_parameters
            if perms.denied_parameters:
                out["denied_parameters"] = perms.denied_parameters
            if perms.required_parameters:
                out["required_parameters"] = perms.required_parameters
            return out

        exact = {p: describe(v) for p, v in self._exact.items()}
        exact.update({wc.pattern: describe(wc.permissions) for wc in self._wildcards})
        glob = {p: describe(v) for p, v in self._prefix.items()}
        return {"exact_paths": exact, "glob_paths": glob, "root": self.root}


def _wildcard(pattern: str, perms: Permissions) -> _Wildcard:
    prefix = pattern.endswith("*")
    body = pattern[:-1] if prefix else pattern
    parts = tuple(body.split("/"))
    return _Wildcard(
        pattern=body,
        parts=parts,
        prefix=prefix,
        first_wildcard=pattern.find("+"),
        wildcards=sum(1 for p in parts if p == "+"),
        permissions=perms,
    )


def _segments_match(wc: _Wildcard, parts: list[str]) -> bool:
    if len(parts) < len(wc.parts):
        return False
    if not wc.prefix and len(parts) != len(wc.parts):
        return False
    last = len(wc.parts) - 1
    for i, want in enumerate(wc.parts):
        if want == "+" or want == parts[i]:
            continue
        if wc.prefix and i == last and parts[i].startswith(want):
            continue
        return False
    return True


def _reaches_below(wc: _Wildcard, mount_parts: list[str]) -> bool:
    """Whether a ``+`` pattern can match the mount path or something under it."""
    last = len(wc.parts) - 1
    for i, part in enumerate(mount_parts):
        if i > last:
            return False
        want = wc.parts[i]
        if want == "+" or want == part:
            continue
        return wc.prefix and i == last and part.startswith(want)
    return True


def _parameters_allowed(perms: Permissions, data: Mapping[str, Any]) -> bool:
    lowered = {str(k).lower(): v for k, v in data.items()}
    for name in perms.required_parameters:
        if name.lower() not in lowered:
            return False
    if not lowered:
        return True
    denied = perms.denied_parameters or {}
    if "*" in denied:
        return False
    for name, value in lowered.items():
        if name in denied and _value_in(value, denied[name]):
            return False
    allowed = perms.allowed_parameters
    if not allowed:
        return True
    allow_all = "*" in allowed
    if allow_all and len(allowed) == 1:
        return True
    for name, value in lowered.items():
        values = allowed.get(name)
        if values is None:
            if not allow_all:
                return False
        elif not _value_in(value, values):
            return False
    return True


def _value_in(value: Any, values: list[Any]) -> bool:
    """Vault's valueInParameterList: an empty list holds every value; strings
    match as globs (``*`` at either end); other values by equality."""
    if not values:
        return True
    for item in values:
        if item is None or value is None:
            if item is value:
                return True
        elif isinstance(item, str) and isinstance(value, str):
            if _glob_match(item, value):
                return True
        elif item == value and isinstance(item, bool) == isinstance(value, bool):
            return True
    return False


def _glob_match(pattern: str, value: str) -> bool:
    """go-secure-stdlib's GlobbedStringsMatch: one ``*`` as the first and/or
    last character, everything else literal; a pattern shorter than two
    characters (``*`` alone included) only matches itself."""
    if len(pattern) < 2:
        return value == pattern
    starts, ends = pattern.startswith("*"), pattern.endswith("*")
    if starts and ends:
        return pattern[1:-1] in value
    if starts:
        return value.endswith(pattern[1:])
    if ends:
        return value.startswith(pattern[:-1])
    return value == pattern
