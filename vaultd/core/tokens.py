"""The token store.

Tokens are never stored in clear: an entry is kept under the HMAC-SHA256 of
the token with a per-cluster salt (itself inside the barrier), so a copy of
the storage directory plus the root key still does not yield usable tokens.
An accessor indexes each entry, and a parent index (``parent/<parent>/<child>``,
Vault's layout) lets revocation take a token's children with it.

Every change to a stored entry happens under one storage lock (``tokens``),
which the backends hold across threads and gunicorn workers, and starts
from the entry as stored *now*, not as it was when the request
authenticated: a renewal changes only the expiry, spending a use only the
use count, so neither can undo a concurrent revocation, use or child.  A
token is live only while every ancestor is (see :meth:`TokenStore.lookup`),
so no child outlives its parent even if an index entry were lost.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, TypeVar

from vaultd.core.token_entry import (
    TOKEN_PREFIX,
    TokenEntry,
    capped_warning,
    parse_entry,
    random_id,
)
from vaultd.errors import BadRequest, PermissionDenied
from vaultd.logical import Auth
from vaultd.storage.base import Put, Storage, delete_tree
from vaultd.storage.cache import DecodeMemo

if TYPE_CHECKING:
    from vaultd.core.token_roles import TokenRole

T = TypeVar("T")


LOCK_NAME = "tokens"
"""The storage lock every change to the token store runs under."""
MAX_DEPTH = 1024
"""Ancestors a lookup follows before it calls a chain corrupt (a chain is
acyclic by construction; this bounds the walk if storage says otherwise)."""


class TokenStore:
    """Token entries under a barrier view (``sys/token/``)."""

    def __init__(self, storage: Storage, *, default_ttl: int, max_ttl: int) -> None:
        self.storage = storage
        self.default_ttl = default_ttl
        self.max_ttl = max_ttl
        self._salt: bytes | None = None
        self._keyed: hmac.HMAC | None = None
        self._entries: DecodeMemo[TokenEntry] = DecodeMemo()

    # -- keys ------------------------------------------------------------------

    def _salt_bytes(self) -> bytes:
        if self._salt is None:
            salt = self.storage.get("salt")
            if salt is None:
                raise RuntimeError("token store salt is missing; was the server initialised?")
            self._salt = salt
        return self._salt

    def hash_token(self, token: str) -> str:
        # Every authenticated request makes this call.  Keying HMAC-SHA256
        # (and, with OpenSSL 3, looking the digest up) once and copying the
        # keyed state per call costs half of a one-shot HMAC.
        if self._keyed is None:
            self._keyed = hmac.new(self._salt_bytes(), digestmod=hashlib.sha256)
        mac = self._keyed.copy()
        mac.update(token.encode())
        return mac.hexdigest()

    def initialise(self) -> None:
        """Create the salt.  Called once, at init."""
        if self.storage.get("salt") is None:
            self.storage.put("salt", secrets.token_bytes(32))

    # -- persistence -----------------------------------------------------------

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return self.storage.lock(LOCK_NAME)

    def _save(self, entry: TokenEntry) -> None:
        """Write the entry itself; its indexes are written once, at creation."""
        self.storage.put(f"id/{entry.id_hash}", json.dumps(asdict(entry)).encode())

    def _peek(self, id_hash: str) -> TokenEntry | None:
        """The stored entry, shared with the memo: callers must not change it."""
        blob = self.storage.get(f"id/{id_hash}")
        if blob is None:
            return None
        # Parsed once per stored version.
        return self._entries.get(id_hash, blob, parse_entry)

    def _load(self, id_hash: str) -> TokenEntry | None:
        """The stored entry, as a copy the caller may change."""
        entry = self._peek(id_hash)
        return entry.copy() if entry is not None else None

    def _children(self, id_hash: str) -> list[str]:
        return [name for name in self.storage.list(f"parent/{id_hash}/") if not name.endswith("/")]

    # -- operations ------------------------------------------------------------

    def lookup(self, token: str | None) -> TokenEntry | None:
        """The live entry for ``token``, or None (unknown, revoked or expired)."""
        if not token or len(token) > 512:
            return None
        return self._live(self._load(self.hash_token(token)))

    def peek_hash(self, id_hash: str) -> TokenEntry | None:
        """:meth:`lookup_hash` without the copy: the stored entry itself, the
        same object while it is unchanged.  For readers only (the audit)."""
        if not id_hash or "/" in id_hash or len(id_hash) > 128:
            return None
        return self._live(self._peek(id_hash))

    def lookup_hash(self, id_hash: str) -> TokenEntry | None:
        """The live entry stored under ``id_hash`` (a lease id's last part)."""
        if not id_hash or "/" in id_hash or len(id_hash) > 128:
            return None
        return self._live(self._load(id_hash))

    def entries(self) -> list[TokenEntry]:
        """Every stored entry, live or not (leases, tidy)."""
        out = []
        for name in self.storage.list("id/"):
            entry = self._peek(name) if not name.endswith("/") else None
            if entry is not None:
                out.append(entry)
        return out

    def revoke_prefix(self, prefix: str) -> int:
        """Revoke every token issued under a path prefix (``auth/userpass/``):
        what ``sys/leases/revoke-prefix`` does for logins.  Returns how many."""
        count = 0
        with self._locked():
            for entry in self.entries():
                if entry.path.startswith(prefix) and self._peek(entry.id_hash) is not None:
                    self._revoke_tree(entry.id_hash)
                    count += 1
        return count

    def tidy(self) -> int:
        """Revoke expired tokens (with their children and cubbyholes) and drop
        index entries that name nothing.  Run in the background by every
        worker (see ``Core.watch_seal``) and by ``sys/leases/tidy``; safe to
        run anywhere at once, since each step is done under the token lock."""
        now = time.time()
        revoked = 0
        for entry in self.entries():
            if entry.expired(now):
                with self._locked():
                    current = self._peek(entry.id_hash)
                    if current is not None and current.expired(now):
                        self._revoke_tree(entry.id_hash)
                        revoked += 1
        with self._locked():
            for accessor in self.accessors():
                target = self.storage.get(f"accessor/{accessor}")
                if target is None or self._peek(target.decode()) is None:
                    self.storage.delete(f"accessor/{accessor}")
        return revoked

    def accessors(self) -> list[str]:
        """Every live token's accessor (``auth/token/accessors``)."""
        return [name for name in self.storage.list("accessor/") if not name.endswith("/")]

    def lookup_accessor(self, accessor: str) -> TokenEntry | None:
        if not accessor or "/" in accessor:
            return None
        id_hash = self.storage.get(f"accessor/{accessor}")
        if id_hash is None:
            return None
        return self._live(self._load(id_hash.decode()))

    def _live(self, entry: TokenEntry | None) -> TokenEntry | None:
        """``entry`` if it and every ancestor are stored and unexpired.

        The parent index is what revocation follows, but validity does not
        rest on it: a child whose parent is gone or expired (an index entry
        lost to a crash, a parent that expired before anyone looked at it, a
        child left behind by an older vaultd) is dead too, and is revoked
        here.  An ancestor is one more cached read per request."""
        if entry is None:
            return None
        now = time.time()
        dead = entry.id_hash if entry.expired(now) else ""
        seen = {entry.id_hash}
        parent_hash = entry.parent_hash
        while parent_hash and not dead:
            if parent_hash in seen or len(seen) > MAX_DEPTH:
                dead = entry.id_hash
                break
            seen.add(parent_hash)
            parent = self._peek(parent_hash)
            if parent is None:
                dead = entry.id_hash
            elif parent.expired(now):
                dead = parent_hash
            else:
                parent_hash = parent.parent_hash
        if dead:
            with self._locked():
                self._revoke_tree(dead)
                if dead != entry.id_hash:  # in case no index led there from the dead ancestor
                    self._revoke_tree(entry.id_hash)
            return None
        return entry

    def create_root(self, *, display_name: str = "root") -> str:
        token = TOKEN_PREFIX + random_id(24)
        entry = TokenEntry(
            id_hash=self.hash_token(token),
            accessor=random_id(24),
            policies=["root"],
            path="auth/token/root",
            display_name=display_name,
            creation_time=time.time(),
            ttl=0,
            orphan=True,
        )
        # No token lock here: init calls this under its own lock, before any
        # other token can exist (mint_root takes it for a running server).
        self._store_new(entry)
        return token

    def mint_root(self) -> str:
        """A root token for a running server (generate-root, once its quorum
        spoke): under the token lock, as every other token write."""
        with self._locked():
            return self.create_root()

    def _store_new(self, entry: TokenEntry, parent_hash: str = "") -> None:
        """A new token and its indexes as one transaction where the backend
        has them, and in this order where it has not: a crash part-way
        leaves an index naming nothing, never a token its accessor cannot
        find or its parent's revocation misses."""
        ops: list[Put] = []
        if parent_hash:
            ops.append(Put(f"parent/{parent_hash}/{entry.id_hash}", b""))
        ops.append(Put(f"accessor/{entry.accessor}", entry.id_hash.encode()))
        ops.append(Put(f"id/{entry.id_hash}", json.dumps(asdict(entry)).encode()))
        self.storage.transaction(ops)

    def _check_parent(self, parent: TokenEntry) -> TokenEntry:
        """The parent as stored now, if it may mint tokens at all.

        A limited-use token (``num_uses``) cannot: its children would escape
        its use count.  One whose last use was this very request is already
        gone.  Both are Vault's 400s."""
        current = self._peek(parent.id_hash)
        if current is None or current.expired():
            raise BadRequest("parent token lookup failed: no parent found")
        if current.num_uses > 0 or parent.num_uses > 0:
            raise BadRequest("restricted use token cannot generate child tokens")
        return current

    def create(self, parent: TokenEntry, params: dict[str, Any], *, orphan: bool = False) -> tuple[str, TokenEntry]:
        """:meth:`mint` without its warnings."""
        token, entry, _ = self.mint(parent, params, orphan=orphan)
        return token, entry

    def mint(
        self,
        parent: TokenEntry,
        params: dict[str, Any],
        *,
        orphan: bool = False,
        role: TokenRole | None = None,
        privileged: bool = False,
    ) -> tuple[str, TokenEntry, list[str]]:
        """A child of ``parent`` (``auth/token/create``): the token, its
        entry and Vault's warnings.  ``params`` is already type-checked by
        the caller's field schema.  ``privileged``: the caller has sudo on the
        create path (root tokens do), which orphans and periodic tokens need
        unless a ``role`` grants them."""
        self._check_parent(parent)
        privileged = privileged or parent.is_root
        if role is not None:
            params = role.apply(params, parent.policies)
            orphan = orphan or role.orphan
        policies = sorted(set(params.get("policies") or parent.policies))
        if "response-wrapping" in policies:
            raise BadRequest('cannot assign policy "response-wrapping"')
        if not parent.is_root:
            if "root" in policies:
                raise PermissionDenied("root tokens may only be created by a root token")
            missing = set(policies) - set(parent.policies) - {"default"}
            # Only a role that names its allowed policies may grant beyond
            # the parent's (Vault: without them a role's tokens stay a subset).
            if missing and (role is None or not role.grants_policies):
                raise PermissionDenied(
                    "child policies must be subset of parent: " + ", ".join(sorted(missing))
                )
            if (orphan and (role is None or not role.orphan)) or params.get("no_parent"):
                if not privileged:
                    raise PermissionDenied("root or sudo privileges required to create orphan token")
            if params.get("period") and role is None and not privileged:
                raise PermissionDenied("root or sudo privileges required to create periodic token")
        if not params.get("no_default_policy") and "default" not in policies and "root" not in policies:
            policies = sorted(set(policies) | {"default"})
        if params.get("no_default_policy"):
            policies = [p for p in policies if p != "default"]
        ttl = int(params.get("ttl") or 0)
        explicit_max = int(params.get("explicit_max_ttl") or 0)
        token_period = int(params.get("period") or 0)
        warnings: list[str] = []
        if token_period:
            # Periodic: the period is the TTL, and only an explicit max caps it.
            period = min(token_period, explicit_max) if explicit_max else token_period
        elif "root" in policies and ttl == 0 and explicit_max == 0:
            period = 0
        else:
            limit = self._max_lifetime(explicit_max)
            # Vault: a root token with only an explicit max lives that long.
            period = ttl or (explicit_max if "root" in policies else self.default_ttl)
            if period > limit:
                warnings.append(capped_warning(period, limit))
                period = limit
        is_orphan = orphan or bool(params.get("no_parent"))
        token = TOKEN_PREFIX + random_id(24)
        with self._locked():
            fresh_parent = self._check_parent(parent)
            now = time.time()
            expire = now + period if period else None
            if fresh_parent.expire_time is not None and (expire is None or expire > fresh_parent.expire_time):
                # A child never outlives its parent.
                expire = fresh_parent.expire_time
                period = max(0, int(expire - now))
            entry = TokenEntry(
                id_hash=self.hash_token(token),
                accessor=random_id(24),
                policies=policies,
                path="auth/token/create-orphan" if orphan else "auth/token/create",
                display_name="token" + (f"-{params['display_name']}" if params.get("display_name") else ""),
                creation_time=now,
                ttl=period,
                explicit_max_ttl=explicit_max,
                expire_time=expire,
                creation_ttl=period,
                renewable=bool(params.get("renewable", True)) and expire is not None,
                num_uses=int(params.get("num_uses") or 0),
                orphan=is_orphan,
                parent_hash="" if is_orphan else parent.id_hash,
                meta=params.get("meta") or None,
                issue_time=now,
                period=token_period,
                bound_cidrs=list(params.get("bound_cidrs") or []),
                role=role.name if role is not None else "",
            )
            if role is not None:
                entry.path = f"auth/token/create/{role.name}{role.path_suffix}"
            self._store_new(entry, "" if is_orphan else parent.id_hash)
        return token, entry, warnings

    def _max_lifetime(self, explicit_max: int) -> int:
        """Seconds a token may live from its creation, renewals included:
        the system's ``max_lease_ttl``, or the token's ``explicit_max_ttl``
        when that is shorter (Vault's effective max_ttl)."""
        return min(self.max_ttl, explicit_max) if explicit_max else self.max_ttl

    def renew(self, entry: TokenEntry, increment: int) -> tuple[TokenEntry, list[str]]:
        """Extend ``entry``'s expiry (``auth/token/renew``); returns the entry
        as now stored and Vault's warnings.  Only the expiry and TTL change:
        the entry is read again under the lock, so a use spent, a child
        made or a revocation done since ``entry`` was read all stand."""
        with self._locked():
            current = self._load(entry.id_hash)
            if current is None or current.expired():
                raise PermissionDenied()
            if current.expire_time is None:
                # A token that never expires has no lease to renew; Vault's
                # expiration manager answers exactly this.
                raise BadRequest("invalid lease ID")
            if not current.renewable:
                raise BadRequest("lease is not renewable")
            now = time.time()
            asked = increment or current.creation_ttl or self.default_ttl
            if current.period:
                # A periodic token is renewed for its period, whatever was
                # asked, and lives as long as it is renewed (up to an explicit max).
                asked = current.period
                limit = current.explicit_max_ttl or 2**62
            else:
                limit = self._max_lifetime(current.explicit_max_ttl)
            deadline = current.creation_time + limit
            allowed = int(deadline) - int(now)  # whole seconds, as Vault counts them
            if allowed <= 0:
                # Its whole lifetime is spent (an entry from before the cap,
                # or a lower max_lease_ttl since): Vault cannot renew it either.
                self._revoke_tree(current.id_hash)
                raise PermissionDenied()
            warnings: list[str] = []
            if asked > allowed:
                warnings.append(capped_warning(asked, allowed))
            expire = min(now + asked, deadline)
            if current.parent_hash:
                parent = self._peek(current.parent_hash)
                if parent is None:
                    raise PermissionDenied()
                if parent.expire_time is not None:
                    expire = min(expire, parent.expire_time)
            current.expire_time = expire
            current.ttl = max(0, int(expire - now))
            self._save(current)
        return current, warnings

    def use(self, entry: TokenEntry) -> None:
        """Count one use of a limited-use token (``num_uses``); the request
        that spends the last use still runs, and the token is revoked with it,
        as in Vault.  Only the use count changes, under the lock, from the
        count as stored now: no use is counted twice or given back."""
        with self._locked():
            current = self._load(entry.id_hash)
            if current is None or current.expired():
                raise PermissionDenied()
            remaining = current.num_uses - 1
            if remaining <= 0:
                self._revoke_tree(current.id_hash)
            else:
                current.num_uses = remaining
                self._save(current)
            entry.num_uses = max(0, remaining)

    def revoke(self, entry: TokenEntry) -> None:
        """Revoke ``entry`` and, unless they are orphans, its descendants."""
        with self._locked():
            self._revoke_tree(entry.id_hash)

    def _revoke_tree(self, root_hash: str) -> None:
        """Delete a token and its descendants; the caller holds the lock.

        Descendants go first, the token named last, so a crash part-way
        leaves that token valid and its revocation can simply be repeated;
        and each token's entry goes before its indexes, so none is ever
        live without them.  ``children`` is the index older versions kept
        inside the entry."""
        order: list[str] = []
        seen: set[str] = set()
        pending = [root_hash]
        while pending:
            id_hash = pending.pop()
            if id_hash in seen:
                continue
            seen.add(id_hash)
            order.append(id_hash)
            pending.extend(self._children(id_hash))
            stored = self._peek(id_hash)
            if stored is not None:
                pending.extend(stored.children)
        for id_hash in reversed(order):
            stored = self._peek(id_hash)
            self.storage.delete(f"id/{id_hash}")
            if stored is not None:
                self.storage.delete(f"accessor/{stored.accessor}")
                if stored.parent_hash:
                    self.storage.delete(f"parent/{stored.parent_hash}/{id_hash}")
            for child in self._children(id_hash):
                self.storage.delete(f"parent/{id_hash}/{child}")
            # Its cubbyhole goes with it (engines/cubbyhole.py keeps it here).
            delete_tree(self.storage, f"cubbyhole/{id_hash}/")

    def issue_login(
        self, auth: Auth, *, path: str, display_prefix: str, default_ttl: int, max_ttl: int
    ) -> tuple[str, TokenEntry, list[str]]:
        """The token an auth method's login asked for: an orphan (a login has
        no parent token), with the policies, metadata and limits of ``auth``
        within the mount's ``default_ttl``/``max_ttl``; Vault's warnings."""
        policies = set(auth.policies)
        if "root" in policies:
            raise PermissionDenied("auth methods cannot create root tokens")
        if not auth.no_default_policy:
            policies.add("default")
        limit = min(max_ttl, auth.max_ttl) if auth.max_ttl else max_ttl
        if auth.explicit_max_ttl:
            limit = min(limit, auth.explicit_max_ttl)
        warnings: list[str] = []
        ttl = auth.period or auth.ttl or default_ttl
        if auth.period:
            limit = auth.explicit_max_ttl or ttl  # periodic: only an explicit max caps it
        if ttl > limit:
            warnings.append(capped_warning(ttl, limit))
            ttl = limit
        token = TOKEN_PREFIX + random_id(24)
        now = time.time()
        entry = TokenEntry(
            id_hash=self.hash_token(token),
            accessor=random_id(24),
            policies=sorted(policies),
            path=path,
            display_name=f"{display_prefix}-{auth.display_name}" if auth.display_name else display_prefix,
            creation_time=now,
            ttl=ttl,
            explicit_max_ttl=auth.explicit_max_ttl,
            expire_time=now + ttl if ttl else None,
            creation_ttl=ttl,
            renewable=auth.renewable and ttl > 0,
            num_uses=auth.num_uses,
            orphan=True,
            meta=dict(auth.metadata) or None,
            issue_time=now,
            period=auth.period,
            bound_cidrs=list(auth.bound_cidrs),
        )
        # Under the lock, as every write here, so a tidy on a backend
        # without transactions never sees half of it.
        with self._locked():
            self._store_new(entry)
        return token, entry, warnings

    def consume(self, entry: TokenEntry, read: Callable[[], T]) -> T | None:
        """``read()`` and revoke ``entry`` in one step under the token lock:
        what a single-use token guards (a wrapped response) is read once,
        however many requests race for it.  None when the token is already
        gone."""
        with self._locked():
            current = self._load(entry.id_hash)
            if current is None or current.expired():
                return None
            value = read()
            self._revoke_tree(current.id_hash)
        return value
