"""Audit devices in the core: the table, the salts, and the broker that
writes every request's entries to every enabled device.

The table is kept as Vault keeps it: in the barrier (``core/audit``), one
entry per device (path, type, description, options, local, uuid, accessor),
and each device's HMAC salt beside it (``audit/<uuid>/salt``), also in the
barrier.  A change is one storage transaction under a storage lock, then a
bump of the shared audit epoch: every gunicorn worker compares the epoch
(and the seal generation) on each request and reloads its devices when
either moved, as it does for mounts and policies.

Sealed answers are audited too.  A sealed worker cannot read the barrier,
and a worker forked after a seal never saw it open, so a copy of the table
without the salts is kept in clear beside it (``core/audit-sealed``: paths,
types and options, nothing secret).  Without a salt nothing can be hashed,
so sealed entries leave out the token and every data field.

Fail closed: while unsealed, a request whose request entry no enabled device
could write is refused before it is served (the HTTP layer answers 500
``internal error``, as Vault does); one device that wrote is enough.  While
sealed nothing can be read or changed but the unseal itself, and refusing an
unseal because the audit disk is full would turn a full disk into an outage,
so sealed entries are written as far as a device can.  A device that starts
failing is logged once (``audit_device_failed``), and once again when it
writes again (``audit_device_recovered``), per worker.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vaultd.audit.base import Device, OptionError, format_options, make_device
from vaultd.audit.entry import AuthInfo, Formatter, RequestInfo, ResponseInfo
from vaultd.audit.hashing import Hasher, new_salt
from vaultd.core.seal_state import EPOCH_AUDIT, SharedSealState
from vaultd.core.token_entry import TokenEntry
from vaultd.durations import rfc3339
from vaultd.errors import BadRequest, VaultError
from vaultd.logging import log_event
from vaultd.logical import Operation
from vaultd.metrics import instruments
from vaultd.storage.base import Delete, Put

if TYPE_CHECKING:
    from vaultd.core.core import Core

log = logging.getLogger("vaultd.audit")

TABLE_KEY = "core/audit"
SEALED_TABLE_KEY = "core/audit-sealed"
LOCK_NAME = "core/audit"
CALLERS_KEPT = 1024
"""How many callers' ``auth`` blocks a worker keeps; past that it starts afresh."""


described_caller: ContextVar[tuple[str, TokenEntry] | None] = ContextVar("vaultd_described_caller", default=None)
"""The caller's token and stored entry as :meth:`Audit.describe` found them
for this request's entries.  ``Core.authenticate`` takes it (once) instead
of looking the token up a second time, as Vault checks a token once, before
the request entry; :meth:`Audit.done` clears it when the request ends."""


def take_described(token: str | None) -> TokenEntry | None:
    """A copy of the entry the audit found for ``token`` in this request, or
    None (no audit, another token, already taken).  Taken once: a second
    check in the same request looks the token up again, so a request that
    changed its own token sees the change."""
    seen = described_caller.get()
    if seen is None or not token or seen[0] != token:
        return None
    described_caller.set(None)
    return seen[1].copy()


def salt_key(device_uuid: str) -> str:
    return f"audit/{device_uuid}/salt"


@dataclass
class _Live:
    """One enabled device in this worker."""

    path: str
    type: str
    uuid: str
    options: dict[str, str]
    device: Device
    formatter: Formatter | None
    """None without a salt (loaded while sealed): entries leave secrets out."""
    failing: bool = False


def _no_hash(_value: str) -> str:
    raise AssertionError("a device without a salt hashes nothing")


def _strip(request: RequestInfo) -> RequestInfo:
    """What may be written without a salt: no token, no data."""
    return RequestInfo(
        id=request.id, operation=request.operation, path=request.path,
        remote_address=request.remote_address, remote_port=request.remote_port, wrap_ttl=request.wrap_ttl,
        mount_type=request.mount_type, mount_point=request.mount_point,
    )


class Audit:
    """The audit table and broker of one worker's core."""

    def __init__(self, core: Core, shared: SharedSealState) -> None:
        self._core = core
        self._shared = shared
        self._live: list[_Live] = []
        self._epoch = -1
        self._generation = -1
        self._reload_lock = threading.Lock()
        self._unreadable = False
        """The table could not be read at the last try: fail closed until it can."""
        self._callers: dict[str, tuple[TokenEntry, AuthInfo]] = {}
        """Each caller's :class:`AuthInfo` by token hash, with the stored
        entry it was made from (see :meth:`_auth_info`)."""
        self._token_hashes: dict[str, str] = {}
        """Callers' tokens and their token store keys (see :meth:`_token_hash`)."""

    # -- which devices -------------------------------------------------------

    def active(self) -> bool:
        """Whether any device is enabled: the one check on every request
        when auditing is off, two reads of shared memory."""
        if self._epoch == self._shared.epoch(EPOCH_AUDIT) and self._generation == self._shared.generation:
            return bool(self._live)
        return bool(self._devices()) or self._unreadable

    def _devices(self) -> list[_Live]:
        epoch, generation = self._shared.epoch(EPOCH_AUDIT), self._shared.generation
        if epoch == self._epoch and generation == self._generation:
            return self._live
        with self._reload_lock:
            if epoch == self._epoch and generation == self._generation:
                return self._live
            try:
                rows = self._read_rows()
            except Exception as exc:
                # Devices may be enabled that this worker does not know of:
                # serving unaudited would fail open.  Refuse (see _log) and
                # try again at the next request.
                log.warning("audit: cannot load the audit table: %s", type(exc).__name__)
                self._unreadable = True
                return self._live
            self._unreadable = False
            self._live = self._build(rows)
            self._epoch, self._generation = epoch, generation
        return self._live

    def _read_rows(self) -> list[tuple[dict[str, Any], str | None]]:
        """The table, with salts when this worker's barrier can be opened."""
        core = self._core
        core.lifecycle.refresh()
        if core.barrier.sealed:
            raw = core.physical.get(SEALED_TABLE_KEY)
            return [(row, None) for row in (json.loads(raw) if raw else [])]
        raw = core.barrier.get(TABLE_KEY)
        rows: list[tuple[dict[str, Any], str | None]] = []
        for row in json.loads(raw) if raw else []:
            salt = core.barrier.get(salt_key(row["uuid"]))
            rows.append((row, salt.decode() if salt else None))
        return rows

    def _build(self, rows: list[tuple[dict[str, Any], str | None]]) -> list[_Live]:
        known = {(live.uuid, json.dumps(live.options, sort_keys=True)): live for live in self._live}
        built: list[_Live] = []
        for row, salt in rows:
            options = {str(k): str(v) for k, v in (row.get("options") or {}).items()}
            previous = known.pop((row["uuid"], json.dumps(options, sort_keys=True)), None)
            try:
                device = previous.device if previous else make_device(row["type"], options)
                fmt = format_options(options)
            except OptionError as exc:
                log.error("audit: device %s cannot be loaded: %s", row.get("path"), exc)
                continue
            formatter = Formatter(fmt, Hasher(salt)) if salt else None
            built.append(_Live(row["path"], row["type"], row["uuid"], options, device, formatter,
                               failing=previous.failing if previous else False))
        for stale in known.values():
            stale.device.close()
        return built

    # -- writing ---------------------------------------------------------------

    def log_request(self, request: RequestInfo) -> bool:
        """Write the request entry to every device; False if none could
        while unsealed (the request must then be refused)."""
        return self._log(lambda live: self._request_line(live, request))

    def log_response(self, request: RequestInfo, response: ResponseInfo) -> bool:
        return self._log(lambda live: self._response_line(live, request, response))

    @staticmethod
    def _request_line(live: _Live, request: RequestInfo) -> bytes:
        if live.formatter is None:
            formatter = Formatter(format_options(live.options), _no_hash)
            return formatter.line(formatter.request_entry(_strip(request)))
        return live.formatter.request_line(request)

    @staticmethod
    def _response_line(live: _Live, request: RequestInfo, response: ResponseInfo) -> bytes:
        if live.formatter is None:
            formatter = Formatter(format_options(live.options), _no_hash)
            bare = ResponseInfo(status=response.status, error=response.error)
            return formatter.line(formatter.response_entry(_strip(request), bare))
        return live.formatter.response_line(request, response)

    def _log(self, line_for: Callable[[_Live], bytes]) -> bool:
        devices = self._devices()
        if self._unreadable and self._shared.unsealed:
            return False
        if not devices:
            return True
        written = False
        for live in devices:
            try:
                live.device.write(line_for(live))
            except Exception as exc:
                instruments().audit_entry(live.path, written=False)
                self._failed(live, exc)
                continue
            instruments().audit_entry(live.path, written=True)
            written = True
            if live.failing:
                live.failing = False
                log_event(log, "audit_device_recovered", "audit device %s (%s) writes again",
                          live.path, live.type, device_path=live.path, device_type=live.type)
        return written or not self._shared.unsealed

    def _failed(self, live: _Live, exc: Exception) -> None:
        if live.failing:
            return
        live.failing = True
        reason = os.strerror(exc.errno) if isinstance(exc, OSError) and exc.errno else type(exc).__name__
        log_event(log, "audit_device_failed",
                  "audit device %s (%s) cannot write: %s; requests fail unless another device writes",
                  live.path, live.type, reason, device_path=live.path, device_type=live.type,
                  errno=getattr(exc, "errno", None))

    # -- describing a request ------------------------------------------------------

    def describe(self, token: str | None, path: str) -> tuple[AuthInfo | None, str, str, str, str]:
        """The caller's token entry and the mount serving ``path``, as far as
        this worker can tell now (nothing while sealed or for a bad token):
        ``(auth, accessor, mount_type, mount_point, mount_accessor)``."""
        core = self._core
        described_caller.set(None)
        try:
            core.begin()
        except VaultError:
            return None, "", *_system_mount(path)
        auth: AuthInfo | None = None
        accessor = ""
        try:
            entry = core.tokens.peek_hash(self._token_hash(token)) if token and len(token) <= 512 else None
        except Exception:  # the request itself will meet and report it
            entry = None
        if entry is not None and token:
            accessor = entry.accessor
            auth = self._auth_info(entry)
            described_caller.set((token, entry))
        mount_type, mount_point, mount_accessor = _system_mount(path)
        if not mount_type:
            try:
                routed = core.router.route(path)
            except Exception:
                routed = None
            if routed is not None:
                mount = routed[0]
                mount_type, mount_point = mount.type, mount.path
                mount_accessor = str(getattr(mount, "accessor", "") or "")
        return auth, accessor, mount_type, mount_point, mount_accessor

    def _token_hash(self, token: str) -> str:
        """The token store's key for ``token``, remembered (an HMAC a request
        saved); the tokens it holds are dropped at seal (:meth:`forget`)."""
        id_hash = self._token_hashes.get(token)
        if id_hash is None:
            id_hash = self._core.tokens.hash_token(token)
            if len(self._token_hashes) >= CALLERS_KEPT:
                self._token_hashes.clear()
            self._token_hashes[token] = id_hash
        return id_hash

    def _auth_info(self, entry: TokenEntry) -> AuthInfo:
        """The ``auth`` of a caller's entry.  The same object while the stored
        entry is (the token store hands out the same object until it is
        written), which lets each formatter reuse the block's text."""
        known = self._callers.get(entry.id_hash)
        if known is not None and known[0] is entry:
            return known[1]
        issued = entry.issue_time or entry.creation_time
        auth = AuthInfo(
            accessor=entry.accessor, display_name=entry.display_name, policies=list(entry.policies),
            token_policies=list(entry.policies), metadata=dict(entry.meta) if entry.meta else None,
            token_type="service", token_ttl=entry.ttl, remaining_uses=entry.num_uses,  # noqa: S106
            token_issue_time=rfc3339(issued) if issued else "",
        )
        if len(self._callers) >= CALLERS_KEPT:
            self._callers.clear()
        self._callers[entry.id_hash] = (entry, auth)
        return auth

    @staticmethod
    def done() -> None:
        """The request is over: what :meth:`describe` found is not to be used
        by the next request this thread serves."""
        described_caller.set(None)

    def forget(self) -> None:
        """Drop what is remembered of tokens: called when the seal generation
        changes (``Core._drop_caches``), in every worker, as the read caches are."""
        self._callers.clear()
        self._token_hashes.clear()
        for live in self._live:
            if live.formatter is not None:
                live.formatter.forget()

    # -- sys/audit ---------------------------------------------------------------------

    def _table(self) -> list[dict[str, Any]]:
        raw = self._core.barrier.get(TABLE_KEY)
        return json.loads(raw) if raw else []

    def list(self, token: str | None) -> dict[str, dict[str, Any]]:
        self._core.check(token, "sys/audit", Operation.READ, sudo=True)
        return {
            row["path"]: {"type": row["type"], "description": row.get("description", ""),
                          "options": row.get("options") or {}, "local": bool(row.get("local")), "path": row["path"]}
            for row in self._table()
        }

    def enable(self, token: str | None, path: str, type_: str, description: str,
               options: Mapping[str, str], local: bool) -> None:
        core = self._core
        core.check(token, f"sys/audit/{path}", Operation.UPDATE, sudo=True)
        options = {str(k): str(v) for k, v in options.items()}
        try:
            device = make_device(type_, options)
            format_options(options)
        except OptionError as exc:
            raise BadRequest(str(exc)) from None
        check = getattr(device, "check", None)
        if check is not None:
            try:
                check()
            except OSError as exc:
                raise BadRequest(f"sanity check failed; unable to open {options.get('file_path', type_)!r} "
                                 f"for writing: {exc.strerror or type(exc).__name__}") from None
            finally:
                device.close()
        with core.physical.lock(LOCK_NAME):
            table = self._table()
            for row in table:
                if row["path"].startswith(path) or path.startswith(row["path"]):
                    raise BadRequest("path already in use")
            device_uuid = str(uuid.uuid4())
            table.append({"path": path, "type": type_, "description": description, "options": options,
                          "local": local, "uuid": device_uuid,
                          "accessor": f"audit_{type_}_{uuid.uuid4().hex[:8]}"})
            self._store(table, [Put(salt_key(device_uuid), new_salt().encode())])
        self._shared.bump_epoch(EPOCH_AUDIT)
        log.info("enabled %s audit device at %s", type_, path)

    def disable(self, token: str | None, path: str) -> None:
        core = self._core
        core.check(token, f"sys/audit/{path}", Operation.DELETE, sudo=True)
        with core.physical.lock(LOCK_NAME):
            table = self._table()
            gone = [row for row in table if row["path"] == path]
            if not gone:
                return
            self._store([row for row in table if row["path"] != path], [Delete(salt_key(gone[0]["uuid"]))])
        self._shared.bump_epoch(EPOCH_AUDIT)
        log.info("disabled audit device at %s", path)

    def _store(self, table: list[dict[str, Any]], extra: list[Put | Delete]) -> None:
        """The table, its sealed copy and the salt change, all or nothing."""
        barrier = self._core.barrier
        encoded = json.dumps(table).encode()
        ops: list[Put | Delete] = [Put(TABLE_KEY, barrier.encrypt(TABLE_KEY, encoded))]
        for op in extra:
            ops.append(Put(op.key, barrier.encrypt(op.key, op.value)) if isinstance(op, Put) else op)
        sealed = [{k: row[k] for k in ("path", "type", "options", "uuid")} for row in table]
        ops.append(Put(SEALED_TABLE_KEY, json.dumps(sealed).encode()))
        self._core.physical.transaction(ops)

    def hash(self, token: str | None, path: str, value: str) -> str:
        """``sys/audit-hash/<path>``: the HMAC the device writes for ``value``."""
        self._core.check(token, f"sys/audit-hash/{path}", Operation.UPDATE)
        if not value:
            raise BadRequest('the "input" parameter is empty')
        rows = [row for row in self._table() if row["path"] == path]
        salt = self._core.barrier.get(salt_key(rows[0]["uuid"])) if rows else None
        if salt is None:
            raise BadRequest(f'unknown audit backend "{path}"')
        return Hasher(salt.decode())(value)


def _system_mount(path: str) -> tuple[str, str, str]:
    """The built-in mounts the router does not hold."""
    if path.startswith("sys/") or path == "sys":
        return "system", "sys/", ""
    if path.startswith("auth/token/"):
        return "token", "auth/token/", ""
    if path.startswith("cubbyhole/") or path == "cubbyhole":
        return "cubbyhole", "cubbyhole/", ""
    return "", "", ""
