"""The core of one worker: lifecycle, token store, mounts, and authorisation.

This is the only object the HTTP layer talks to.  It knows nothing of HTTP:
handlers decode a request, call one method here, and encode what it returns.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from vaultd.auth.tokenparams import address_in
from vaultd.core.audit import Audit, described_caller, take_described
from vaultd.core.barrier import Barrier
from vaultd.core.generate_root import RootGeneration
from vaultd.core.lifecycle import InitRequest, Lifecycle
from vaultd.core.policy import authorize
from vaultd.core.policy_store import PolicyStore
from vaultd.core.router import (
    CUBBYHOLE_ENTRY,
    CUBBYHOLE_MOUNT,
    MOUNTS_KEY,
    TOKEN_AUTH_MOUNT,
    MountEntry,
    Router,
    new_auth_mount,
    new_mount,
)
from vaultd.core.seal_state import EPOCH_HA, EPOCH_MOUNTS, EPOCH_POLICIES, SharedSealState
from vaultd.core.token_roles import TokenRoles
from vaultd.core.tokens import TokenEntry, TokenStore
from vaultd.core.wrapping import Wrapping, requested_wrap_ttl
from vaultd.engines.base import MountSettings
from vaultd.engines.cubbyhole import Cubbyhole
from vaultd.errors import BadRequest, NotFound, PermissionDenied
from vaultd.logical import Operation, Request, Response, clean_path
from vaultd.seal.base import AutoSeal
from vaultd.storage.base import Storage
from vaultd.storage.cache import CachedStorage
from vaultd.storage.view import StorageView

log = logging.getLogger("vaultd.core")

client_address: ContextVar[str] = ContextVar("client_address", default="")
"""The current request's remote address (set by the HTTP layer), for tokens
bound to CIDR blocks; empty when unknown, which no binding admits."""

SEAL_WATCH_INTERVAL = 0.5
TOKEN_TIDY_INTERVAL = 60.0
"""Seconds between two sweeps of expired tokens by each worker (see
``TokenStore.tidy``); a lookup revokes an expired token on sight anyway."""
"""Seconds a worker that serves no requests may keep its keys after a seal."""


@dataclass
class CoreSettings:
    seal: AutoSeal | None = None
    disabled_seal_type: str = ""
    """The type of the seal stanza marked ``disabled`` (a migration's old seal)."""
    cluster_name: str = ""
    storage_type: str = "inmem"
    default_lease_ttl: int = 768 * 3600
    max_lease_ttl: int = 768 * 3600
    ha_enabled: bool = False
    """storage ``ha_enabled``: one active node, standbys redirect (core/ha.py)."""


class Core:
    def __init__(self, physical: Storage, shared: SharedSealState, settings: CoreSettings) -> None:
        self.settings = settings
        self.shared = shared
        # Every read of a token or a secret goes to storage; the cache keeps
        # the ciphertext of what was read, exact across workers (see cache.py).
        self.physical = CachedStorage(physical, shared)
        self.lifecycle = Lifecycle(
            self.physical,
            shared,
            seal=settings.seal,
            cluster_name=settings.cluster_name,
            storage_type=settings.storage_type,
            on_initialised=self._bootstrap,
            on_change=self._drop_caches,
            disabled_seal_type=settings.disabled_seal_type,
        )
        self.barrier = self.lifecycle.barrier
        self.tokens = self._token_store(self.barrier)
        self.router = Router(
            self.barrier,
            system_default_ttl=settings.default_lease_ttl,
            system_max_ttl=settings.max_lease_ttl,
        )
        self.policies = PolicyStore(
            StorageView(self.barrier, "sys/policy/"),
            lambda: shared.epoch(EPOCH_POLICIES),
            lambda: shared.bump_epoch(EPOCH_POLICIES),
        )
        self.token_roles = TokenRoles(StorageView(self.barrier, "sys/token/"))
        self.cubbyhole = Cubbyhole(StorageView(self.barrier, "sys/token/"), MountSettings(path=CUBBYHOLE_MOUNT))
        self.wrapping = Wrapping(self)
        self.audit = Audit(self, shared)
        self.generate_root = RootGeneration(self.lifecycle, shared, self._mint_root)
        self._seen_ha_epoch = shared.epoch(EPOCH_HA)
        if settings.ha_enabled:
            self.lifecycle.stale_risk = lambda: not shared.ha().active(time.monotonic())

    def _token_store(self, barrier: Storage) -> TokenStore:
        return TokenStore(
            StorageView(barrier, "sys/token/"),
            default_ttl=self.settings.default_lease_ttl,
            max_ttl=self.settings.max_lease_ttl,
        )

    def _mint_root(self) -> str:
        """A new root token, for generate-root (the quorum already spoke)."""
        self.begin()
        return self.tokens.mint_root()

    def _bootstrap(self, barrier: Barrier, cluster_name: str) -> str:
        """Lay down what an initialised server needs; returns the root token."""
        tokens = self._token_store(barrier)
        tokens.initialise()
        barrier.put(MOUNTS_KEY, b"[]")
        return tokens.create_root()

    # -- per request ---------------------------------------------------------------

    def _drop_caches(self) -> None:
        """The seal generation changed (sealed, or unsealed again): nothing
        cached under the previous one is trusted."""
        self.router.invalidate()
        self.policies.clear()
        self.tokens = self._token_store(self.barrier)
        self.physical.clear()
        self.audit.forget()

    def begin(self) -> None:
        """Called first by every request that needs the barrier open."""
        ha_epoch = self.shared.epoch(EPOCH_HA)
        if ha_epoch != self._seen_ha_epoch:
            # This node just became the active HA node: other nodes wrote
            # the shared database meanwhile, so nothing cached is trusted
            # (the keyring too: its epoch was bumped with this one, and is
            # read again below from the emptied cache).
            self._seen_ha_epoch = ha_epoch
            self._drop_caches()
        self.lifecycle.refresh()
        if self.barrier.sealed:
            self.lifecycle.require_unsealed()
        self.router.sync(self.shared.epoch(EPOCH_MOUNTS))

    def authenticate(self, token: str | None, *, spend_use: bool = True) -> TokenEntry:
        """The live entry for ``token``, or 403.  ``spend_use=False`` is for
        checks that only decide which error comes first: a limited-use token
        (``num_uses``) must lose one use per request, not one per check."""
        self.begin()
        # The audit looked this token up already for the request entry: once is enough.
        entry = take_described(token) if described_caller.get() is not None else None
        if entry is None:
            entry = self.tokens.lookup(token)
        if entry is None:
            raise PermissionDenied()
        if entry.bound_cidrs and not address_in(client_address.get(), entry.bound_cidrs):
            raise PermissionDenied()
        if entry.num_uses and spend_use:
            self.tokens.use(entry)
        return entry

    def check(
        self, token: str | None, path: str, operation: Operation, *, sudo: bool = False, spend_use: bool = True
    ) -> TokenEntry:
        """The one authorisation gate: who is asking, and may they do this here."""
        entry = self.authenticate(token, spend_use=spend_use)
        authorize(self.policies.acl(entry.policies), path, operation, sudo=sudo, wrap_ttl=requested_wrap_ttl.get())
        return entry

    # -- policies ----------------------------------------------------------------------

    def capabilities(
        self, client: str | None, kind: str, paths: list[str], *, token: str | None = None,
        accessor: str | None = None,
    ) -> dict[str, Any]:
        """``sys/capabilities`` (``kind`` "token"), ``-self`` and ``-accessor``:
        what a token's policies grant on each path, in Vault's shape (one
        key per path, plus ``capabilities`` when there is one path)."""
        endpoint = {"token": "sys/capabilities", "self": "sys/capabilities-self",
                    "accessor": "sys/capabilities-accessor"}[kind]
        caller = self.check(client, endpoint, Operation.UPDATE)
        if kind == "self":
            target: TokenEntry | None = caller
        elif kind == "accessor":
            if not accessor:
                raise BadRequest("missing accessor")
            target = self.tokens.lookup_accessor(accessor)
            if target is None:
                raise BadRequest("invalid accessor")
        else:
            if not token:
                raise BadRequest("no token found")
            target = self.tokens.lookup(token)
            if target is None:
                raise BadRequest("invalid token")
        acl = self.policies.acl(target.policies)
        result: dict[str, Any] = {path: acl.capabilities(path) for path in paths}
        if len(paths) == 1:
            result["capabilities"] = result[paths[0]]
        return result

    def resultant_acl(self, client: str | None) -> dict[str, Any]:
        """``sys/internal/ui/resultant-acl``: the caller's merged rules."""
        entry = self.check(client, "sys/internal/ui/resultant-acl", Operation.READ)
        acl = self.policies.acl(entry.policies)
        return {"root": True} if acl.root else acl.to_resultant()

    # -- lifecycle passthroughs ------------------------------------------------------

    def init(self, request: InitRequest) -> dict[str, Any]:
        return self.lifecycle.init(request)

    def seal(self, token: str | None) -> None:
        self.check(token, "sys/seal", Operation.UPDATE, sudo=True)
        self.lifecycle.seal_now(by_operator=True)
        self.lifecycle.refresh()  # this worker's caches go now, not at its next request

    def serving_writes(self) -> bool:
        """False on an HA standby: background writes (the token tidy) are
        the active node's; a standby's would be refused by the fence."""
        return not self.settings.ha_enabled or self.shared.ha().active(time.monotonic())

    def watch_seal(
        self, interval: float = SEAL_WATCH_INTERVAL, *, stop: threading.Event | None = None
    ) -> threading.Thread:
        """Catch up with the shared seal state every ``interval`` seconds,
        from a daemon thread, even when no request comes.

        A worker otherwise notices a seal made by another worker (or a
        generation change) at its next request; until then it would keep its
        keyring and the plaintext its read caches hold.  Started once per
        gunicorn worker; ``stop`` is for tests."""
        stopped = stop or threading.Event()

        def run() -> None:
            said = ""  # the failure last logged: a lasting one is said once, not twice a second
            next_tidy = time.monotonic() + TOKEN_TIDY_INTERVAL * random.uniform(0.5, 1.0)  # noqa: S311
            while not stopped.wait(interval):
                try:
                    self.lifecycle.refresh()
                    if time.monotonic() >= next_tidy and not self.barrier.sealed and self.serving_writes():
                        next_tidy = time.monotonic() + TOKEN_TIDY_INTERVAL
                        self.tokens.tidy()
                    said = ""
                except Exception as exc:  # a bad moment must not end the watch
                    if type(exc).__name__ != said:
                        said = type(exc).__name__
                        log.warning("seal watch: %s", said)

        thread = threading.Thread(target=run, name="vaultd-seal-watch", daemon=True)
        thread.start()
        return thread

    # -- mounts ----------------------------------------------------------------------

    def list_mounts(self, token: str | None) -> dict[str, dict[str, Any]]:
        self.check(token, "sys/mounts", Operation.READ)
        mounts = {path: entry.describe() for path, entry in self.router.secret_mounts().items()}
        mounts[CUBBYHOLE_MOUNT] = CUBBYHOLE_ENTRY.describe()
        mounts["sys/"] = self._system_mount_view()
        return dict(sorted(mounts.items()))

    def list_auth(self, token: str | None) -> dict[str, dict[str, Any]]:
        self.check(token, "sys/auth", Operation.READ)
        methods = {path: entry.describe() for path, entry in self.router.auth_mounts().items()}
        methods["token/"] = self._token_auth_view()
        return dict(sorted(methods.items()))

    @staticmethod
    def _token_auth_view() -> dict[str, Any]:
        view = TOKEN_AUTH_MOUNT.describe()
        view["options"] = None
        view["config"]["token_type"] = "default-service"  # noqa: S105 - a token kind, not a secret
        return view

    def enable_auth(self, token: str | None, path: str, type_: str, description: str, config: dict[str, Any]) -> None:
        self.check(token, f"sys/auth/{path}", Operation.UPDATE, sudo=True)
        entry = new_auth_mount(path, type_, description=description)
        entry.default_lease_ttl = int(config.get("default_lease_ttl", 0))
        entry.max_lease_ttl = int(config.get("max_lease_ttl", 0))
        self.router.mount(entry)
        self.shared.bump_epoch(EPOCH_MOUNTS)
        log.info("enabled %s auth method at auth/%s", entry.type, path)

    def disable_auth(self, token: str | None, path: str) -> None:
        self.check(token, f"sys/auth/{path}", Operation.DELETE, sudo=True)
        if path == "token/":
            raise BadRequest("token credential backend cannot be disabled")
        if self.router.unmount("auth/" + path):
            self.shared.bump_epoch(EPOCH_MOUNTS)
            log.info("disabled auth method at auth/%s", path)

    def auth_entry(self, token: str | None, path: str, operation: Operation = Operation.READ) -> MountEntry:
        """For ``sys/auth/<path>/tune``."""
        self.check(token, f"sys/auth/{path}/tune", operation, sudo=True)
        if path == "token/":
            return TOKEN_AUTH_MOUNT
        entry = self.router.auth_mounts().get(path)
        if entry is None:
            raise BadRequest(f"no auth mount at {path}")
        return entry

    def tune_auth(self, token: str | None, path: str, changes: dict[str, Any]) -> None:
        self.auth_entry(token, path, Operation.UPDATE)
        self.router.tune("auth/" + path, changes)
        self.shared.bump_epoch(EPOCH_MOUNTS)

    def remount(self, token: str | None, source: str, target: str) -> str:
        """``sys/remount``: done at once (Vault queues it and reports through
        ``sys/remount/status``, which answers "success" here).  Returns the
        migration id, kept in the barrier so any worker can answer for it."""
        self.check(token, "sys/remount", Operation.UPDATE, sudo=True)
        self.router.remount(source, target)
        self.shared.bump_epoch(EPOCH_MOUNTS)
        migration = str(uuid.uuid4())
        record = {"source_mount": source, "target_mount": target, "status": "success"}
        self.barrier.put(f"core/remount/{migration}", json.dumps(record).encode())
        log.info("remounted %s to %s", source, target)
        return migration

    def remount_status(self, token: str | None, migration: str) -> dict[str, Any] | None:
        self.check(token, f"sys/remount/status/{migration}", Operation.READ, sudo=True)
        try:
            raw = self.barrier.get(f"core/remount/{migration}")
        except ValueError:
            return None
        return None if raw is None else json.loads(raw)

    def _system_mount_view(self) -> dict[str, Any]:
        from vaultd.core.router import SYSTEM_MOUNT

        view = SYSTEM_MOUNT.describe()
        view["config"]["passthrough_request_headers"] = ["Accept"]
        return view

    def mount_entry(self, token: str | None, path: str, operation: Operation = Operation.READ) -> MountEntry:
        self.check(token, f"sys/mounts/{path}", operation)
        entry = self.router.table().get(path)
        if entry is None:
            raise BadRequest(f"No secret engine mount at {path}")
        return entry

    def enable_mount(self, token: str | None, path: str, type_: str, description: str, options: dict[str, str],
                     config: dict[str, Any]) -> None:
        self.check(token, f"sys/mounts/{path}", Operation.UPDATE, sudo=True)
        entry = new_mount(path, type_, description=description, options=options)
        entry.default_lease_ttl = int(config.get("default_lease_ttl", 0))
        entry.max_lease_ttl = int(config.get("max_lease_ttl", 0))
        self.router.mount(entry)
        self.shared.bump_epoch(EPOCH_MOUNTS)
        log.info("mounted %s engine at %s", entry.type, entry.path)

    def disable_mount(self, token: str | None, path: str) -> None:
        self.check(token, f"sys/mounts/{path}", Operation.DELETE, sudo=True)
        if self.router.unmount(path):
            self.shared.bump_epoch(EPOCH_MOUNTS)
            log.info("unmounted %s", path)

    def tune_mount(self, token: str | None, path: str, changes: dict[str, Any]) -> None:
        self.check(token, f"sys/mounts/{path}/tune", Operation.UPDATE, sudo=True)
        self.router.tune(path, changes)
        self.shared.bump_epoch(EPOCH_MOUNTS)

    def mount_for_ui(self, token: str | None, path: str) -> MountEntry:
        """``sys/internal/ui/mounts/<path>``: which mount serves a path.  The
        Vault CLI asks this before every ``kv`` command."""
        entry = self.authenticate(token)
        routed = self.router.route(path)
        if routed is None:
            raise PermissionDenied(
                "preflight capability check returned 403, please ensure client's policies grant "
                f'access to path "{path.rstrip("/")}/"'
            )
        if not self.policies.acl(entry.policies).has_mount_access(routed[0].path):
            # Vault answers only when the token can do something below it.
            raise PermissionDenied()
        return routed[0]

    # -- logical requests ----------------------------------------------------------

    def handle(self, token: str | None, request: Request) -> Response:
        self.begin()
        if "." in request.path or "//" in request.path:
            request.path = clean_path(request.path)
        routed = self._route(request.path)
        if routed is None:
            # Authenticate first: an unauthenticated caller learns nothing.
            self.authenticate(token)
            raise NotFound(f'no handler for route "{request.path}". route entry not found.')
        mount, relative = routed
        engine = self.cubbyhole if mount is CUBBYHOLE_ENTRY else self.router.engine(mount)
        full_path = request.path
        routed_request = Request(
            operation=request.operation,
            path=relative,
            data=request.data,
            query=request.query,
            mount_path=mount.path,
            remote_addr=request.remote_addr,
        )
        operation = request.operation
        if mount.is_auth and engine.is_unauthenticated(relative):
            # A login: no token yet, by definition.
            return self._complete_login(mount, full_path, engine.handle(routed_request))
        entry = self.authenticate(token)
        routed_request.client_token_hash = entry.id_hash
        if operation in (Operation.CREATE, Operation.UPDATE):
            operation = Operation.UPDATE if engine.exists(routed_request) else Operation.CREATE
        authorize(self.policies.acl(entry.policies), full_path, operation, data=request.data,
                  wrap_ttl=requested_wrap_ttl.get())
        routed_request.operation = operation
        routed_request.client_token_accessor = entry.accessor
        routed_request.display_name = entry.display_name
        return self._complete_login(mount, full_path, engine.handle(routed_request))

    def _route(self, path: str) -> tuple[MountEntry, str] | None:
        if path == CUBBYHOLE_MOUNT.rstrip("/") or path.startswith(CUBBYHOLE_MOUNT):
            return CUBBYHOLE_ENTRY, path[len(CUBBYHOLE_MOUNT):]
        return self.router.route(path)

    def _complete_login(self, mount: MountEntry, path: str, response: Response) -> Response:
        """Issue the token a login's :class:`~vaultd.logical.Auth` asks for,
        within the mount's TTL limits, and answer Vault's auth block."""
        login = response.login
        if login is None:
            return response
        token, entry, warnings = self.tokens.issue_login(
            login,
            path=path,
            display_prefix=mount.path[len("auth/"):].rstrip("/").replace("/", "-"),
            default_ttl=mount.default_lease_ttl or self.settings.default_lease_ttl,
            max_ttl=mount.max_lease_ttl or self.settings.max_lease_ttl,
        )
        response.login = None
        response.auth = entry.auth_block(token)
        if warnings:
            response.warnings = [*(response.warnings or []), *warnings]
        return response
