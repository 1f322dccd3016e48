"""Where ACL policies live, and the per-worker cache of compiled ACLs.

Policies are stored through the barrier under ``sys/policy/<name>`` as
``{"name": ..., "policy": <the text as written>}``: one key per policy, so a
write or delete is one storage operation, whole or not at all.

Every request needs the ACL of its token's policy set, and parsing HCL on
each request would cost more than the rest of a read.  So each worker keeps
the compiled :class:`~vaultd.core.acl.ACL` of every policy set it has seen,
and drops them all when the shared policies epoch moves: a write in any
worker bumps it after storing, and every worker reads it (one load from the
shared mapping) before it uses its cache, so a policy change applies to the
next request everywhere.

``root`` is not stored and cannot be written or deleted.  ``default`` is
Vault's built-in text until someone writes it; it can be edited but not
deleted.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable

from vaultd.core.acl import ACL, Policy, PolicyError, parse_policy
from vaultd.errors import BadRequest
from vaultd.storage.base import Storage
from vaultd.storage.keys import split_key

ROOT = "root"
DEFAULT = "default"
RESPONSE_WRAPPING = "response-wrapping"
ROOT_POLICY = Policy(ROOT, "", ())
RESPONSE_WRAPPING_TEXT = """
path "cubbyhole/response" {
    capabilities = ["create", "read"]
}

path "sys/wrapping/unwrap" {
    capabilities = ["update"]
}
"""
"""What a wrapping token may do, and nothing else (Vault's fixed policy)."""
IMMUTABLE = (ROOT, RESPONSE_WRAPPING)
DEFAULT_POLICY_TEXT = """
# Allow tokens to look up their own properties
path "auth/token/lookup-self" {
    capabilities = ["read"]
}

# Allow tokens to renew themselves
path "auth/token/renew-self" {
    capabilities = ["update"]
}

# Allow tokens to revoke themselves
path "auth/token/revoke-self" {
    capabilities = ["update"]
}

# Allow a token to look up its own capabilities on a path
path "sys/capabilities-self" {
    capabilities = ["update"]
}

# Allow a token to look up its own entity by id or name
path "identity/entity/id/{{identity.entity.id}}" {
  capabilities = ["read"]
}
path "identity/entity/name/{{identity.entity.name}}" {
  capabilities = ["read"]
}


# Allow a token to look up its resultant ACL from all policies. This is useful
# for UIs. It is an internal path because the format may change at any time
# based on how the internal ACL features and capabilities change.
path "sys/internal/ui/resultant-acl" {
    capabilities = ["read"]
}

# Allow a token to renew a lease via lease_id in the request body; old path for
# old clients, new path for newer
path "sys/renew" {
    capabilities = ["update"]
}
path "sys/leases/renew" {
    capabilities = ["update"]
}

# Allow looking up lease properties. This requires knowing the lease ID ahead
# of time and does not divulge any sensitive information.
path "sys/leases/lookup" {
    capabilities = ["update"]
}

# Allow a token to manage its own cubbyhole
path "cubbyhole/*" {
    capabilities = ["create", "read", "update", "delete", "list"]
}

# Allow a token to wrap arbitrary values in a response-wrapping token
path "sys/wrapping/wrap" {
    capabilities = ["update"]
}

# Allow a token to look up the creation time and TTL of a given
# response-wrapping token
path "sys/wrapping/lookup" {
    capabilities = ["update"]
}

# Allow a token to unwrap a response-wrapping token. This is a convenience to
# avoid client token swapping since this is also part of the response wrapping
# policy.
path "sys/wrapping/unwrap" {
    capabilities = ["update"]
}

# Allow general purpose tools
path "sys/tools/hash" {
    capabilities = ["update"]
}
path "sys/tools/hash/*" {
    capabilities = ["update"]
}

# Allow checking the status of a Control Group request if the user has the
# accessor
path "sys/control-group/request" {
    capabilities = ["update"]
}
"""
"""Vault's built-in ``default`` policy, word for word, so ``policy read
default`` shows operators what they know (the identity paths are templated
and match nothing here, as for a token without an entity in Vault)."""

_MAX_NAME = 128


def normalise_name(name: str) -> str:
    """Vault lower-cases policy names; a name must also be a valid storage
    key segment path (no empty or ``..`` segments)."""
    lowered = name.strip().lower()
    if not lowered:
        raise BadRequest("policy name must be provided in the URL")
    if len(lowered) > _MAX_NAME:
        raise BadRequest(f"policy name is longer than {_MAX_NAME} characters")
    try:
        split_key(lowered)
    except ValueError:
        raise BadRequest("invalid policy name") from None
    return lowered


class PolicyStore:
    def __init__(self, storage: Storage, epoch: Callable[[], int], bump_epoch: Callable[[], None]) -> None:
        """``storage`` is a view of the barrier under ``sys/policy/``;
        ``epoch``/``bump_epoch`` read and move the shared policies epoch."""
        self._storage = storage
        self._epoch = epoch
        self._bump = bump_epoch
        self._guard = threading.Lock()
        self._seen = -1
        self._policies: dict[str, Policy | None] = {}
        self._acls: dict[tuple[str, ...], ACL] = {}

    # -- the cache -------------------------------------------------------------

    def _fresh(self) -> None:
        epoch = self._epoch()
        if epoch != self._seen:
            with self._guard:
                self._policies = {}
                self._acls = {}
                self._seen = epoch

    def clear(self) -> None:
        """Drop everything (the server sealed: policy text is not a secret,
        but nothing read through the barrier outlives the seal)."""
        with self._guard:
            self._policies = {}
            self._acls = {}
            self._seen = -1

    def acl(self, names: Iterable[str]) -> ACL:
        """The compiled ACL of a token's policies; unknown names grant
        nothing, as in Vault (a policy may be deleted after the token was
        made)."""
        self._fresh()
        key = tuple(sorted(set(names)))
        acl = self._acls.get(key)
        if acl is None:
            if ROOT in key:
                acl = ACL([ROOT_POLICY])
            else:
                acl = ACL(p for p in (self.get(name) for name in key) if p is not None)
            if len(self._acls) >= 1024:
                self._acls.clear()
            self._acls[key] = acl
        return acl

    # -- reading ---------------------------------------------------------------

    def get(self, name: str) -> Policy | None:
        self._fresh()
        if name in self._policies:
            return self._policies[name]
        policy = self._load(name)
        self._policies[name] = policy
        return policy

    def _load(self, name: str) -> Policy | None:
        if name == ROOT:
            return ROOT_POLICY
        if name == RESPONSE_WRAPPING:
            return parse_policy(RESPONSE_WRAPPING, RESPONSE_WRAPPING_TEXT)
        try:
            split_key(name)
        except ValueError:
            return None
        raw = self._storage.get(name)
        if raw is None:
            return parse_policy(DEFAULT, DEFAULT_POLICY_TEXT) if name == DEFAULT else None
        text = json.loads(raw)["policy"]
        return parse_policy(name, text)

    def names(self) -> list[str]:
        """Stored policies plus ``default`` (always there), sorted; ``root``
        is added by the list endpoints that show it."""
        # keys(), not list(""): policy names may hold "/".
        return sorted((set(self._storage.keys()) | {DEFAULT}) - set(IMMUTABLE))

    # -- writing ---------------------------------------------------------------

    def put(self, name: str, text: str) -> None:
        """Parse first (a bad policy stores nothing), then one write."""
        if name in IMMUTABLE:
            raise BadRequest(f'cannot update "{name}" policy')
        try:
            parse_policy(name, text)
        except PolicyError as exc:
            raise BadRequest(str(exc)) from None
        self._storage.put(name, json.dumps({"name": name, "policy": text}).encode())
        self._bump()

    def delete(self, name: str) -> None:
        if name in IMMUTABLE:
            raise BadRequest(f'cannot delete "{name}" policy')
        if name == DEFAULT:
            raise BadRequest("cannot delete default policy")
        self._storage.delete(name)
        self._bump()
