"""The token store.

Tokens are never stored in clear: an entry is kept under the HMAC-SHA256 of
the token with a per-cluster salt (itself inside the barrier), so a copy of
the storage directory plus the root key still does not yield usable tokens.
An accessor indexes each entry, and a parent index lets revocation take a
token's children with it, as Vault does.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import string
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from vaultd.errors import BadRequest, PermissionDenied
from vaultd.storage.base import Storage
from vaultd.storage.cache import DecodeMemo

_ALPHABET = string.ascii_letters + string.digits
TOKEN_PREFIX = "s."  # noqa: S105 - the visible prefix, not a secret


def _random(n: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(n))


def _rfc3339(ts: float) -> str:
    dt = datetime.fromtimestamp(ts, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond:06d}000Z"


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
            "expire_time": _rfc3339(self.expire_time) if self.expire_time is not None else None,
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
        if self.issue_time is not None:
            data["issue_time"] = _rfc3339(self.issue_time)
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
            "lease_duration": self.remaining_ttl() if self.expire_time is not None else 0,
            "renewable": self.renewable,
            "entity_id": "",
            "token_type": "service",
            "orphan": self.orphan,
            "mfa_requirement": None,
            "num_uses": self.num_uses,
        }


def _parse_entry(blob: bytes) -> TokenEntry:
    return TokenEntry(**json.loads(blob))


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

    def _save(self, entry: TokenEntry) -> None:
        self.storage.put(f"id/{entry.id_hash}", json.dumps(asdict(entry)).encode())
        self.storage.put(f"accessor/{entry.accessor}", entry.id_hash.encode())

    def _load(self, id_hash: str) -> TokenEntry | None:
        blob = self.storage.get(f"id/{id_hash}")
        if blob is None:
            return None
        # Parsed once per stored version; callers get a copy they may change.
        return self._entries.get(id_hash, blob, _parse_entry).copy()

    # -- operations ------------------------------------------------------------

    def lookup(self, token: str | None) -> TokenEntry | None:
        """The live entry for ``token``, or None (unknown, revoked or expired)."""
        if not token or len(token) > 512:
            return None
        entry = self._load(self.hash_token(token))
        if entry is None:
            return None
        if entry.expired():
            self._revoke_tree(entry)
            return None
        return entry

    def lookup_accessor(self, accessor: str) -> TokenEntry | None:
        if not accessor or "/" in accessor:
            return None
        id_hash = self.storage.get(f"accessor/{accessor}")
        if id_hash is None:
            return None
        entry = self._load(id_hash.decode())
        if entry is None or entry.expired():
            return None
        return entry

    def create_root(self, *, display_name: str = "root") -> str:
        token = TOKEN_PREFIX + _random(24)
        entry = TokenEntry(
            id_hash=self.hash_token(token),
            accessor=_random(24),
            policies=["root"],
            path="auth/token/root",
            display_name=display_name,
            creation_time=time.time(),
            ttl=0,
            orphan=True,
        )
        self._save(entry)
        return token

    def create(self, parent: TokenEntry, params: dict[str, Any], *, orphan: bool = False) -> tuple[str, TokenEntry]:
        """A child of ``parent`` (``auth/token/create``).  ``params`` is
        already type-checked by the caller's field schema."""
        policies = sorted(set(params.get("policies") or parent.policies))
        if not parent.is_root:
            if "root" in policies:
                raise PermissionDenied("root tokens may only be created by a root token")
            missing = set(policies) - set(parent.policies) - {"default"}
            if missing:
                raise PermissionDenied(
                    "child policies must be subset of parent: " + ", ".join(sorted(missing))
                )
            if orphan or params.get("no_parent"):
                raise PermissionDenied("root or sudo privileges required to create orphan token")
        if not params.get("no_default_policy") and "default" not in policies and "root" not in policies:
            policies = sorted(set(policies) | {"default"})
        if params.get("no_default_policy"):
            policies = [p for p in policies if p != "default"]
        ttl = int(params.get("ttl") or 0)
        explicit_max = int(params.get("explicit_max_ttl") or 0)
        if "root" in policies and ttl == 0 and explicit_max == 0:
            period = 0
        else:
            period = ttl or self.default_ttl
            if explicit_max:
                period = min(period, explicit_max)
            period = min(period, self.max_ttl)
        now = time.time()
        expire = now + period if period else None
        if parent.expire_time is not None and (expire is None or expire > parent.expire_time):
            # A child never outlives its parent.
            expire = parent.expire_time
            period = max(0, int(expire - now))
        is_orphan = orphan or bool(params.get("no_parent"))
        token = TOKEN_PREFIX + _random(24)
        entry = TokenEntry(
            id_hash=self.hash_token(token),
            accessor=_random(24),
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
        )
        with self.storage.lock("tokens"):
            self._save(entry)
            if not is_orphan:
                fresh_parent = self._load(parent.id_hash)
                if fresh_parent is not None:
                    fresh_parent.children.append(entry.id_hash)
                    self._save(fresh_parent)
        return token, entry

    def renew(self, entry: TokenEntry, increment: int) -> TokenEntry:
        if entry.expire_time is None:
            # A token that never expires has no lease to renew; Vault's
            # expiration manager answers exactly this.
            raise BadRequest("invalid lease ID")
        if not entry.renewable:
            raise BadRequest("lease is not renewable")
        now = time.time()
        period = increment or entry.creation_ttl or self.default_ttl
        period = min(period, self.max_ttl)
        expire = now + period
        if entry.explicit_max_ttl:
            expire = min(expire, entry.creation_time + entry.explicit_max_ttl)
        if entry.parent_hash:
            parent = self._load(entry.parent_hash)
            if parent is not None and parent.expire_time is not None:
                expire = min(expire, parent.expire_time)
        entry.expire_time = expire
        entry.ttl = max(0, int(expire - now))
        with self.storage.lock("tokens"):
            if self._load(entry.id_hash) is None:
                raise PermissionDenied()
            self._save(entry)
        return entry

    def use(self, entry: TokenEntry) -> None:
        """Count one use of a limited-use token (``num_uses``); the request
        that spends the last use still runs, and the token is revoked with it,
        as in Vault.  Serialised across workers so no use is counted twice."""
        with self.storage.lock("tokens"):
            current = self._load(entry.id_hash)
            if current is None:
                raise PermissionDenied()
            remaining = current.num_uses - 1
            if remaining <= 0:
                self._revoke_tree(current)
            else:
                current.num_uses = remaining
                self._save(current)
            entry.num_uses = max(0, remaining)

    def revoke(self, entry: TokenEntry) -> None:
        """Revoke ``entry`` and, unless they are orphans, its descendants."""
        with self.storage.lock("tokens"):
            self._revoke_tree(entry)

    def _revoke_tree(self, entry: TokenEntry) -> None:
        pending = [entry.id_hash]
        while pending:
            id_hash = pending.pop()
            current = self._load(id_hash)
            if current is None:
                continue
            pending.extend(current.children)
            self.storage.delete(f"id/{id_hash}")
            self.storage.delete(f"accessor/{current.accessor}")
