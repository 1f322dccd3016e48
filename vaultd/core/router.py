"""The mount table and routing a path to the engine mounted there.

The table lives inside the barrier (``core/mounts``).  Each worker keeps the
parsed table and its engine objects until another worker changes the table,
which it learns from the shared mounts epoch.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from vaultd.auth.approle import create_approle
from vaultd.auth.userpass import create_userpass
from vaultd.engines.base import Engine, MountSettings
from vaultd.engines.kv import create_kv
from vaultd.errors import BadRequest
from vaultd.storage.base import Storage, delete_tree
from vaultd.storage.view import StorageView

MOUNTS_KEY = "core/mounts"
RESERVED = ("sys/", "auth/", "cubbyhole/", "identity/")
ENGINE_FACTORIES: dict[str, Callable[[Storage, MountSettings], Engine]] = {"kv": create_kv}
AUTH_FACTORIES: dict[str, Callable[[Storage, MountSettings], Engine]] = {
    "approle": create_approle,
    "userpass": create_userpass,
}
AUTH_PREFIX = "auth/"
"""Auth methods share the mount table, under ``auth/``, as in Vault's router:
``auth/userpass/`` is the userpass method enabled at ``userpass``."""
TYPE_ALIASES = {"kv-v2": ("kv", "2"), "kv-v1": ("kv", "1"), "generic": ("kv", "1")}
_BUILTIN_VERSION = "v0.1.0+builtin.vaultd"


@dataclass
class MountEntry:
    path: str
    type: str
    uuid: str
    accessor: str
    description: str = ""
    options: dict[str, str] = field(default_factory=dict)
    default_lease_ttl: int = 0
    max_lease_ttl: int = 0
    local: bool = False
    seal_wrap: bool = False

    def describe(self) -> dict[str, Any]:
        """The entry as ``sys/mounts`` lists it.  Secrets engines carry a
        ``deprecation_status``, as Vault's builtin plugins do; the system
        and token backends do not."""
        view = {
            "accessor": self.accessor,
            "config": {
                "default_lease_ttl": self.default_lease_ttl,
                "force_no_cache": False,
                "max_lease_ttl": self.max_lease_ttl,
            },
            "description": self.description,
            "external_entropy_access": False,
            "local": self.local,
            "options": dict(self.options) if self.options else ({} if self.type == "kv" else None),
            "plugin_version": "",
            "running_plugin_version": _BUILTIN_VERSION,
            "running_sha256": "",
            "seal_wrap": self.seal_wrap,
            "type": self.type,
            "uuid": self.uuid,
        }
        if self.type in ENGINE_FACTORIES or self.type in AUTH_FACTORIES:
            view["deprecation_status"] = "supported"
        if self.is_auth:
            view["config"]["token_type"] = "default-service"  # noqa: S105 - a token kind, not a secret
        return view

    @property
    def is_auth(self) -> bool:
        return self.path.startswith(AUTH_PREFIX)


SYSTEM_MOUNT = MountEntry(
    path="sys/",
    type="system",
    uuid="00000000-0000-0000-0000-000000000001",
    accessor="system_00000001",
    description="system endpoints used for control, policy and debugging",
    seal_wrap=True,
)
TOKEN_AUTH_MOUNT = MountEntry(
    path="token/",
    type="token",
    uuid="00000000-0000-0000-0000-000000000002",
    accessor="auth_token_00000002",
    description="token based credentials",
)


CUBBYHOLE_MOUNT = "cubbyhole/"
CUBBYHOLE_ENTRY = MountEntry(
    path=CUBBYHOLE_MOUNT,
    type="cubbyhole",
    uuid="00000000-0000-0000-0000-000000000003",
    accessor="cubbyhole_00000003",
    description="per-token private secret storage",
    local=True,
)


def new_mount(path: str, type_: str, *, description: str = "", options: dict[str, str] | None = None) -> MountEntry:
    mount_type, version = TYPE_ALIASES.get(type_, (type_, ""))
    opts = dict(options or {})
    if version:
        opts["version"] = version
    if mount_type not in ENGINE_FACTORIES:
        raise BadRequest(f"plugin not found in the catalog: {type_}")
    if mount_type == "kv" and opts.get("version", "1") not in ("1", "2"):
        raise BadRequest(f"invalid kv version {opts.get('version')!r}: must be 1 or 2")
    return MountEntry(
        path=path,
        type=mount_type,
        uuid=str(uuid.uuid4()),
        accessor=f"{mount_type}_{secrets.token_hex(4)}",
        description=description,
        options=opts,
    )


def new_auth_mount(path: str, type_: str, *, description: str = "") -> MountEntry:
    """An auth method enabled at ``path`` (without the ``auth/`` prefix)."""
    if type_ == "token":
        raise BadRequest("token credential backend cannot be instantiated")
    if type_ not in AUTH_FACTORIES:
        raise BadRequest(f"plugin not found in the catalog: {type_}")
    return MountEntry(
        path=AUTH_PREFIX + path,
        type=type_,
        uuid=str(uuid.uuid4()),
        accessor=f"auth_{type_}_{secrets.token_hex(4)}",
        description=description,
    )


def normalise_mount_path(path: str) -> str:
    path = path.strip("/")
    if not path:
        raise BadRequest("missing mount path")
    if any(part in ("", ".", "..") for part in path.split("/")) or not path.isprintable():
        raise BadRequest("invalid mount path: empty, relative or unprintable segment")
    return path + "/"


@dataclass
class _Cached:
    """One worker's parsed mount table and the engines built from it, tagged
    with the shared mounts epoch that was current when loading began."""

    epoch: int
    table: dict[str, MountEntry]
    engines: dict[str, Engine] = field(default_factory=dict)


class Router:
    """Mount table plus engines, for one worker, over the barrier.

    A worker serves requests on several threads, and other workers change
    the table at any time; they bump the shared mounts epoch after saving,
    and each request hands the current epoch to :meth:`sync`.  A cache
    entry is only used while its epoch is current, and the epoch is read
    *before* the table is loaded, so a load that raced with another
    worker's change can at worst be tagged too old (and loaded again), never
    be kept as current.  Changes to the table read it from storage under
    the storage lock, never from this cache.
    """

    def __init__(self, barrier: Storage, *, system_default_ttl: int, system_max_ttl: int) -> None:
        self.barrier = barrier
        self.system_default_ttl = system_default_ttl
        self.system_max_ttl = system_max_ttl
        self._epoch = 0
        self._cached: _Cached | None = None

    def sync(self, epoch: int) -> None:
        """The shared mounts epoch, as seen at the start of a request."""
        self._epoch = epoch

    def invalidate(self) -> None:
        self._cached = None

    # -- the table ---------------------------------------------------------------

    def _load(self) -> dict[str, MountEntry]:
        blob = self.barrier.get(MOUNTS_KEY)
        raw = json.loads(blob) if blob else []
        return {m["path"]: MountEntry(**m) for m in raw}

    def _current(self) -> _Cached:
        cached, epoch = self._cached, self._epoch
        if cached is None or cached.epoch != epoch:
            cached = _Cached(epoch, self._load())
            self._cached = cached
        return cached

    def table(self) -> dict[str, MountEntry]:
        """Every mount: secrets engines and, under ``auth/``, auth methods."""
        return self._current().table

    def secret_mounts(self) -> dict[str, MountEntry]:
        return {path: entry for path, entry in self.table().items() if not entry.is_auth}

    def auth_mounts(self) -> dict[str, MountEntry]:
        """Auth methods by their path without ``auth/`` (``userpass/``)."""
        return {path[len(AUTH_PREFIX):]: entry for path, entry in self.table().items() if entry.is_auth}

    def _save(self, table: dict[str, MountEntry]) -> None:
        self.barrier.put(MOUNTS_KEY, json.dumps([asdict(m) for m in table.values()]).encode())
        self.invalidate()

    def mount(self, entry: MountEntry) -> None:
        relative = entry.path[len(AUTH_PREFIX):] if entry.is_auth else entry.path
        if entry.is_auth and (relative == "token/" or not relative):
            raise BadRequest(f"cannot mount at {entry.path}: the token method is always there")
        if not entry.is_auth and (relative.startswith(RESERVED) or relative in RESERVED):
            raise BadRequest(f"cannot mount under reserved path {relative.split('/')[0]}/")
        with self.barrier.lock(MOUNTS_KEY):
            table = self._load()
            for existing in table:
                if entry.path.startswith(existing) or existing.startswith(entry.path):
                    raise BadRequest(f"path is already in use at {existing}")
            table[entry.path] = entry
            self._save(table)

    def remount(self, source: str, target: str) -> MountEntry:
        """Move a mount to another path; its data stays, keyed by its uuid."""
        if source.startswith(AUTH_PREFIX) != target.startswith(AUTH_PREFIX):
            raise BadRequest(f'cannot remount auth mount to non-auth mount "{target}"')
        for path in (source, target):
            relative = path[len(AUTH_PREFIX):] if path.startswith(AUTH_PREFIX) else path
            if path.startswith(AUTH_PREFIX) and relative in ("", "token/"):
                raise BadRequest(f'cannot remount "{path}"')
            if not path.startswith(AUTH_PREFIX) and (relative.startswith(RESERVED) or relative in RESERVED):
                raise BadRequest(f'cannot remount "{path}"')
        with self.barrier.lock(MOUNTS_KEY):
            table = self._load()
            entry = table.pop(source, None)
            if entry is None:
                raise BadRequest(f'no matching mount at "{source}"')
            for existing in table:
                if target.startswith(existing) or existing.startswith(target):
                    raise BadRequest(f'path already in use at "{existing}"')
            entry.path = target
            table[target] = entry
            self._save(table)
        return entry

    def unmount(self, path: str) -> bool:
        """Remove the mount and its data; False when nothing was mounted there."""
        with self.barrier.lock(MOUNTS_KEY):
            table = self._load()
            entry = table.pop(path, None)
            if entry is None:
                return False
            self._save(table)
        delete_tree(StorageView(self.barrier, f"{'auth' if entry.is_auth else 'logical'}/{entry.uuid}/"), "")
        return True

    def tune(self, path: str, changes: dict[str, Any]) -> None:
        with self.barrier.lock(MOUNTS_KEY):
            table = self._load()
            entry = table.get(path)
            if entry is None:
                raise BadRequest(f"no mount at {path}")
            for key, value in changes.items():
                if key == "options":
                    version = value.get("version")
                    if version is not None and version != entry.options.get("version", "1"):
                        raise BadRequest("changing the kv version of a mount is not supported")
                    entry.options.update({k: v for k, v in value.items() if k != "version"})
                else:
                    setattr(entry, key, value)
            self._save(table)

    # -- routing ------------------------------------------------------------------

    def route(self, path: str) -> tuple[MountEntry, str] | None:
        """The mount serving ``path`` and the path relative to it."""
        table = self.table()
        candidate = path if path.endswith("/") else path + "/"
        best: MountEntry | None = None
        for mount_path, entry in table.items():
            if candidate.startswith(mount_path) and (best is None or len(mount_path) > len(best.path)):
                best = entry
        if best is None:
            return None
        return best, path[len(best.path):]

    def engine(self, entry: MountEntry) -> Engine:
        """The engine for ``entry``, built once per cached table (a tune or a
        re-mount at the same path comes with a new table, so a new engine)."""
        cached = self._current()
        engine = cached.engines.get(entry.uuid)
        if engine is None:
            settings = MountSettings(
                path=entry.path,
                options=dict(entry.options),
                default_lease_ttl=entry.default_lease_ttl,
                system_default_lease_ttl=self.system_default_ttl,
            )
            factories = AUTH_FACTORIES if entry.is_auth else ENGINE_FACTORIES
            # Vault keeps auth methods' data under auth/<uuid>/, engines' under logical/.
            view = StorageView(self.barrier, f"{'auth' if entry.is_auth else 'logical'}/{entry.uuid}/")
            engine = factories[entry.type](view, settings)
            if cached.table.get(entry.path) == entry:
                cached.engines[entry.uuid] = engine
        return engine
