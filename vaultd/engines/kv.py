"""The KV secrets engine, versions 1 and 2, as Vault serves them.

Existing clients (the ``vault``/``bao`` CLIs, hvac, Terraform, CI scripts)
talk to these paths daily and branch on status codes, empty bodies and error
strings, so the behaviour follows Vault's plugin (as shipped in OpenBao
2.7.2, checked against a running server), quirks included: a deleted version
reads as 404 *with* its metadata, ``max_versions`` takes the larger of the
key's and the mount's setting, a metadata write does not prune.

Storage layout inside the mount's view (plaintext JSON; the barrier below
encrypts it):

- KV v1: the secret at its own path, so ``LIST`` is a storage list.
- KV v2: ``config``; ``meta/<path>`` holds the key's metadata and the state
  of every kept version; ``versions/<path>/<n>`` holds version ``n``'s data.
  A data read is two gets.  Every logical change is one
  ``storage.transaction``: a write's version, its metadata and the deletes
  of the versions it prunes land together (all or nothing on ``sqlite``).
  The ops are ordered for backends that apply them one by one (``file``):
  the version before the metadata that points at it, so a crash there can
  orphan data but never leave metadata pointing at nothing.

Every read-modify-write runs under ``storage.lock(meta/<path>)`` (or
``config``): gunicorn workers are separate processes, and two concurrent
check-and-set writes must not both succeed.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from vaultd.durations import format_duration
from vaultd.engines.base import Engine, MountSettings, check_segments
from vaultd.engines.fields import (
    ABSENT,
    FieldError,
    Params,
    go_quote,
    go_type,
    ignored_warning,
    multierror,
    to_duration_seconds,
    to_int,
)
from vaultd.errors import BadRequest, MethodNotAllowed, NotFound, VaultError
from vaultd.logical import Operation, Request, Response
from vaultd.logical import clean_path as logical_clean_path
from vaultd.storage.base import Delete, Op, Put, Storage
from vaultd.storage.cache import DecodeMemo

UNSUPPORTED = "unsupported operation"
TRAILING_SLASH = "cannot write to a path ending in '/'"
DEFAULT_MAX_VERSIONS = 10
"""Vault's ``defaultMaxVersions``, used when neither key nor mount set one."""

_WRITES = (Operation.CREATE, Operation.UPDATE)
_UINT32 = 2**32
_UINT64 = 2**64
_LAST_RFC3339_NS = 253402300799_999999999
"""9999-12-31T23:59:59.999999999Z."""


def create_kv(storage: Storage, mount: MountSettings) -> Engine:
    """The engine for a ``kv`` mount, chosen by its ``version`` option as
    Vault does ("" or absent is version 1)."""
    version = str(mount.options.get("version", "") or "")
    if version in ("", "1"):
        return KVv1(storage, mount)
    if version == "2":
        return KVv2(storage, mount)
    raise BadRequest('nil backend of type "kv" returned from factory')


def clean_path(path: str, operation: Operation) -> str:
    """The request path as Vault's HTTP layer hands it over: ``//``, ``.`` and
    ``..`` resolved (never above the mount), and a ``/`` added for LIST."""
    cleaned = logical_clean_path(path)
    check_segments(cleaned.rstrip("/"))
    if cleaned and operation is Operation.LIST and not cleaned.endswith("/"):
        cleaned += "/"
    return cleaned


@functools.lru_cache(maxsize=4096)
def rfc3339(ns: int | None) -> str:
    """Go's ``time.RFC3339Nano`` in UTC (trailing zeros trimmed), or "" for
    no time, which is how Vault renders an unset ``deletion_time``."""
    if ns is None:
        return ""
    # Times past year 9999 were only ever stored before durations were
    # bounded (a huge ``delete_version_after``); show them as the last
    # instant RFC 3339 can write rather than fail every read of the key.
    ns = min(ns, _LAST_RFC3339_NS)
    seconds, frac = divmod(ns, 1_000_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    fraction = f"{frac:09d}".rstrip("0")
    return f"{stamp}.{fraction}Z" if fraction else f"{stamp}Z"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch, which Vault applies for HTTP PATCH."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _decode(raw: bytes) -> Any:
    return json.loads(raw.decode("utf-8"))


def _params_source(request: Request) -> dict[str, Any]:
    """Vault reads query parameters for reads, lists and deletes, and only
    the body for writes."""
    if request.operation in (*_WRITES, Operation.PATCH):
        return dict(request.data)
    return {**request.query, **request.data}


# --------------------------------------------------------------------------- v1


class KVv1(Engine):
    """Unversioned KV: a secret is one JSON object at its path.

    Vault honours a ``ttl`` (or ``lease``) key in the stored data as the
    lease duration it reports on read; nothing expires, it is a hint to
    readers about when to re-read.
    """

    def handle(self, request: Request) -> Response:
        op = request.operation
        path = clean_path(request.path, op)
        if op in (*_WRITES, Operation.PATCH) and (path == "" or path.endswith("/")):
            raise BadRequest(TRAILING_SLASH)
        if op is Operation.READ:
            return self._read(path)
        if op in _WRITES:
            return self._write(path, request.data)
        if op is Operation.DELETE:
            if path and not path.endswith("/"):
                self.storage.delete(path)
            return Response()
        if op is Operation.LIST:
            keys = self.storage.list(path)
            if not keys:
                raise NotFound()
            return Response(data={"keys": keys})
        raise MethodNotAllowed(UNSUPPORTED)

    def exists(self, request: Request) -> bool:
        path = clean_path(request.path, request.operation)
        if not path or path.endswith("/"):
            return False
        return self.storage.get(path) is not None

    def _read(self, path: str) -> Response:
        if not path or path.endswith("/"):
            raise NotFound()
        raw = self.storage.get(path)
        if raw is None:
            raise NotFound()
        data = _decode(raw)
        return Response(data=data, lease_duration=self._lease_duration(data))

    def _write(self, path: str, data: Any) -> Response:
        if not isinstance(data, dict) or not data:
            raise BadRequest("missing data fields")
        self.storage.put(path, _encode(data))
        return Response()

    def _lease_duration(self, data: dict[str, Any]) -> int:
        """A ``ttl``/``lease`` the data carries, else the mount's default; an
        unparsable one silently falls back, as in Vault."""
        default = self.mount.default_lease_ttl or self.mount.system_default_lease_ttl
        for name in ("ttl", "lease"):
            if name in data:
                try:
                    return to_duration_seconds(data[name], signed=True)
                except FieldError:
                    return default
        return default


# --------------------------------------------------------------------------- v2 state


@dataclass
class _Config:
    """The mount-wide settings (``<mount>/config``)."""

    max_versions: int = 0
    cas_required: bool = False
    metadata_cas_required: bool = False
    delete_version_after: int = 0
    """Seconds; 0 unset, negative (stored as -1) disables it for every key."""

    @classmethod
    def from_json(cls, raw: bytes | None) -> _Config:
        return cls(**_decode(raw)) if raw else cls()

    def describe(self) -> dict[str, Any]:
        dva = self.delete_version_after
        return {
            "cas_required": self.cas_required,
            "delete_version_after": "-1s" if dva < 0 else format_duration(dva),
            "max_versions": self.max_versions,
            "metadata_cas_required": self.metadata_cas_required,
        }


@dataclass
class _Version:
    created: int
    """Nanoseconds since the epoch, like every time below."""
    deleted: int | None = None
    """Soft-deletion time; may lie in the future (``delete_version_after``)."""
    destroyed: bool = False

    def gone(self, now: int) -> bool:
        """Whether reads answer 404 for this version."""
        return self.destroyed or (self.deleted is not None and self.deleted <= now)

    def describe(self) -> dict[str, Any]:
        return {
            "created_time": rfc3339(self.created),
            "deletion_time": rfc3339(self.deleted),
            "destroyed": self.destroyed,
        }


@dataclass
class _KeyMeta:
    """One secret's metadata and the state of its kept versions."""

    key: str
    created: int = 0
    updated: int = 0
    current_version: int = 0
    oldest_version: int = 0
    max_versions: int = 0
    cas_required: bool = False
    delete_version_after: int = 0
    custom_metadata: dict[str, str] | None = None
    metadata_version: int = 0
    metadata_cas_required: bool = False
    versions: dict[int, _Version] = field(default_factory=dict)

    def to_json(self) -> bytes:
        record = {
            name: getattr(self, name)
            for name in (
                "created", "updated", "current_version", "oldest_version", "max_versions",
                "cas_required", "delete_version_after", "custom_metadata", "metadata_version",
                "metadata_cas_required",
            )
        }
        record["versions"] = {str(n): [v.created, v.deleted, v.destroyed] for n, v in self.versions.items()}
        return _encode(record)

    @classmethod
    def from_json(cls, key: str, raw: bytes) -> _KeyMeta:
        record = _decode(raw)
        versions = {int(n): _Version(*state) for n, state in record.pop("versions").items()}
        return cls(key=key, versions=versions, **record)

    def version_info(self, number: int, version: _Version) -> dict[str, Any]:
        """The ``metadata`` block of a data read and the body of a data write."""
        return {**version.describe(), "custom_metadata": self.custom_metadata, "version": number}

    def describe(self) -> dict[str, Any]:
        return {
            "cas_required": self.cas_required,
            "created_time": rfc3339(self.created),
            "current_metadata_version": self.metadata_version,
            "current_version": self.current_version,
            "custom_metadata": self.custom_metadata,
            "delete_version_after": format_duration(self.delete_version_after),
            "max_versions": self.max_versions,
            "metadata_cas_required": self.metadata_cas_required,
            "oldest_version": self.oldest_version,
            "updated_time": rfc3339(self.updated),
            "versions": {str(n): v.describe() for n, v in sorted(self.versions.items())},
        }


# --------------------------------------------------------------------------- v2 validation


_DATA_FIELDS = frozenset({"path", "version", "options", "data"})
_SUBKEYS_FIELDS = frozenset({"path", "version", "depth"})
_METADATA_FIELDS = frozenset({
    "path", "cas_required", "max_versions", "delete_version_after", "custom_metadata", "after", "limit",
    "metadata_cas", "metadata_cas_required",
})
_CONFIG_FIELDS = frozenset({"max_versions", "cas_required", "metadata_cas_required", "delete_version_after"})
_ROOTS = ("data", "metadata", "delete", "undelete", "destroy")
_CLI_VERB = {
    Operation.READ: "get",
    Operation.CREATE: "put",
    Operation.UPDATE: "put",
    Operation.PATCH: "patch",
    Operation.LIST: "list",
    Operation.DELETE: "delete",
}
_CM_PREFIX = "custom_metadata validation failed"
_CM_MAX_KEYS, _CM_MAX_KEY_LEN, _CM_MAX_VALUE_LEN = 64, 128, 512
_CAS_IGNORED = '"cas_required" set to false, but is mandated by backend config. This value will be ignored.'


def _custom_metadata(raw: dict[str, Any], *, drop_nulls: bool) -> dict[str, str]:
    """Vault's parse-then-validate of ``custom_metadata``: scalars become
    strings, then limits (64 keys, 128-byte keys, 512-byte values, printable)
    are checked and every violation is reported at once."""
    parsed: dict[str, str] = {}
    for key, value in raw.items():
        if drop_nulls and value is None:
            continue
        if isinstance(value, (list, dict)):
            raise BadRequest(f"{_CM_PREFIX}: '' expected type 'string', got unconvertible type '{go_type(value)}'")
        if value is None:
            parsed[key] = ""
        elif isinstance(value, bool):
            parsed[key] = "1" if value else "0"
        else:
            parsed[key] = value if isinstance(value, str) else repr(value)
    if len(parsed) > _CM_MAX_KEYS:
        raise BadRequest(multierror([
            f"{_CM_PREFIX}: payload must contain at most {_CM_MAX_KEYS} keys, provided {len(parsed)}"
        ]))
    errors: list[str] = []
    for key, value in parsed.items():
        key_len, value_len = len(key.encode("utf-8")), len(value.encode("utf-8"))
        if not 0 < key_len <= _CM_MAX_KEY_LEN:
            errors.append(
                f"{_CM_PREFIX}: length of key {go_quote(key)} is {key_len} "
                f"but must be 0 < len(key) <= {_CM_MAX_KEY_LEN}"
            )
        if not 0 < value_len <= _CM_MAX_VALUE_LEN:
            errors.append(
                f"{_CM_PREFIX}: length of value for key {go_quote(key)} is {value_len} "
                f"but must be 0 < len(value) <= {_CM_MAX_VALUE_LEN}"
            )
        if not key.isprintable():
            errors.append(f"{_CM_PREFIX}: key {go_quote(key)} ({key}) contains unprintable characters")
        if not value.isprintable():
            errors.append(f"{_CM_PREFIX}: value for key {go_quote(key)} contains unprintable characters")
    if errors:
        raise BadRequest(multierror(errors))
    return parsed


def _subkeys(data: Any, max_depth: int, depth: int = 1) -> Any:
    """The data with every leaf replaced by null, down to ``max_depth``
    levels (0 = all); lists and empty maps count as leaves, as in Vault."""
    if not isinstance(data, dict):
        return None
    out: dict[str, Any] = {}
    for key, value in data.items():
        deeper = depth + 1
        if isinstance(value, dict) and value and (max_depth == 0 or deeper <= max_depth):
            out[key] = _subkeys(value, max_depth, deeper)
        else:
            out[key] = None
    return out


def _check_cas(options: Any, config: _Config, meta: _KeyMeta) -> None:
    opts = options if isinstance(options, dict) else {}
    if "cas" in opts:
        try:
            cas = to_int(opts["cas"])
        except FieldError:
            raise BadRequest("error parsing check-and-set parameter") from None
        if cas % _UINT64 != meta.current_version:
            raise BadRequest("check-and-set parameter did not match the current version")
    elif config.cas_required or meta.cas_required:
        raise BadRequest("check-and-set parameter required for this call")


def _check_metadata_cas(metadata_cas: Any, config: _Config, meta: _KeyMeta) -> None:
    if metadata_cas is not ABSENT:
        if metadata_cas % _UINT64 != meta.metadata_version:
            raise BadRequest("metadata check-and-set parameter does not match the current version")
    elif config.metadata_cas_required or meta.metadata_cas_required:
        raise BadRequest("metadata check-and-set parameter required for this call")


@dataclass
class _MetadataInput:
    """The settable fields of a metadata write or patch, decoded up front
    (Vault rejects a malformed field before looking at anything else)."""

    max_versions: Any
    cas_required: Any
    delete_version_after: Any
    custom_metadata: Any
    metadata_cas_required: Any
    metadata_cas: Any

    @classmethod
    def parse(cls, params: Params) -> _MetadataInput:
        return cls(
            max_versions=params.int("max_versions"),
            cas_required=params.bool("cas_required"),
            delete_version_after=params.duration("delete_version_after"),
            custom_metadata=params.map("custom_metadata"),
            metadata_cas_required=params.bool("metadata_cas_required"),
            metadata_cas=params.int("metadata_cas"),
        )

    def empty(self) -> bool:
        settable = (self.max_versions, self.cas_required, self.delete_version_after,
                    self.custom_metadata, self.metadata_cas_required)
        return all(value is ABSENT for value in settable)

    def apply(self, meta: _KeyMeta) -> None:
        if self.max_versions is not ABSENT:
            meta.max_versions = self.max_versions % _UINT32
        if self.cas_required is not ABSENT:
            meta.cas_required = self.cas_required
        if self.delete_version_after is not ABSENT:
            meta.delete_version_after = self.delete_version_after
        if self.metadata_cas_required is not ABSENT:
            meta.metadata_cas_required = self.metadata_cas_required


# --------------------------------------------------------------------------- v2 engine


class KVv2(Engine):
    """Versioned KV (``data/``, ``metadata/``, ``delete/``, ``undelete/``,
    ``destroy/``, ``subkeys/``, ``config``)."""

    def __init__(self, storage: Storage, mount: MountSettings) -> None:
        super().__init__(storage, mount)
        self.clock: Callable[[], int] = time.time_ns
        """Nanoseconds since the epoch; replaceable so tests can move time
        past a ``delete_version_after`` without sleeping."""
        # Parsed metadata and version data for reads, per stored value (see
        # DecodeMemo).  The engine is dropped with the mount table on seal.
        self._read_memo: DecodeMemo[Any] = DecodeMemo()

    # ---- routing

    def handle(self, request: Request) -> Response:
        op = request.operation
        path = clean_path(request.path, op)
        if op in (*_WRITES, Operation.PATCH) and (path == "" or path.endswith("/")):
            raise BadRequest(TRAILING_SLASH)
        section, slash, rest = path.partition("/")
        if not slash:
            if path == "config":
                return self._config(request)
            if path in _ROOTS:
                return Response(
                    warnings=["Non-listing operations on the root of a K/V v2 mount are not supported."],
                    status=404,
                )
            return self._invalid_path(op)
        routes: dict[str, Callable[[Request, str], Response]] = {
            "data": self._data,
            "metadata": self._metadata,
            "delete": self._delete_versions,
            "undelete": self._undelete_versions,
            "destroy": self._destroy_versions,
            "subkeys": self._subkeys,
        }
        handler = routes.get(section)
        if handler is None:
            return self._invalid_path(op)
        return handler(request, rest)

    def exists(self, request: Request) -> bool:
        """Only ``data/`` and ``metadata/`` have an existence check in Vault;
        for the rest a write is always an update."""
        path = clean_path(request.path, request.operation)
        section, slash, rest = path.partition("/")
        if slash and section in ("data", "metadata"):
            key = rest.rstrip("/")
            return bool(key) and self._read_meta(key) is not None
        return True

    @staticmethod
    def _invalid_path(op: Operation) -> Response:
        return Response(
            warnings=[
                "Invalid path for a versioned K/V secrets engine. See the API docs for the "
                "appropriate API endpoints to use. If using the Vault CLI, use "
                f"'vault kv {_CLI_VERB[op]}' for this operation."
            ],
            status=404,
        )

    # ---- storage

    @staticmethod
    def _meta_key(key: str) -> str:
        return f"meta/{key}"

    @staticmethod
    def _version_key(key: str, number: int) -> str:
        return f"versions/{key}/{number}"

    def _load_meta(self, key: str) -> _KeyMeta | None:
        raw = self.storage.get(self._meta_key(key))
        return None if raw is None else _KeyMeta.from_json(key, raw)

    def _save_meta(self, meta: _KeyMeta, *, before: list[Op] | None = None, after: list[Op] | None = None) -> None:
        """Write the metadata, with the version puts ``before`` it and the
        deletes ``after`` it, as one transaction."""
        ops: list[Op] = [*(before or ()), Put(self._meta_key(meta.key), meta.to_json()), *(after or ())]
        self.storage.transaction(ops)

    def _load_config(self) -> _Config:
        return _Config.from_json(self.storage.get("config"))

    def _load_version_data(self, key: str, number: int) -> Any:
        raw = self.storage.get(self._version_key(key, number))
        if raw is None:
            raise VaultError("could not find version data", status=500)
        return _decode(raw)

    # Reads that only look go through the memo; writes, which change what
    # they load, parse their own copy with the two loaders above.

    def _read_meta(self, key: str) -> _KeyMeta | None:
        storage_key = self._meta_key(key)
        raw = self.storage.get(storage_key)
        if raw is None:
            return None
        return self._read_memo.get(storage_key, raw, lambda blob: _KeyMeta.from_json(key, blob))

    def _read_version_data(self, key: str, number: int) -> Any:
        storage_key = self._version_key(key, number)
        raw = self.storage.get(storage_key)
        if raw is None:
            raise VaultError("could not find version data", status=500)
        return self._read_memo.get(storage_key, raw, _decode)

    @staticmethod
    def _ok(body: dict[str, Any], params: Params, known: frozenset[str]) -> Response:
        ignored = params.unknown(known)
        return Response(data=body, warnings=[ignored_warning(ignored)] if ignored else None)

    # ---- data/

    def _data(self, request: Request, rest: str) -> Response:
        op, key = request.operation, rest.rstrip("/")
        if op is Operation.READ:
            return self._data_read(request, key)
        if op in _WRITES:
            return self._data_write(request, key)
        if op is Operation.PATCH:
            return self._data_patch(request, key)
        if op is Operation.DELETE:
            return self._data_delete(key)
        raise MethodNotAllowed(UNSUPPORTED)

    def _lookup_version(self, key: str, params: Params) -> tuple[_KeyMeta, int, _Version]:
        """The metadata and the version a read asks for (``version`` <= 0 or
        absent means the current one), or 404."""
        requested = params.int("version")
        meta = self._read_meta(key) if key else None
        if meta is None:
            raise NotFound()
        number = meta.current_version if requested is ABSENT or requested <= 0 else requested
        version = meta.versions.get(number)
        if version is None:
            raise NotFound()
        return meta, number, version

    def _data_read(self, request: Request, key: str) -> Response:
        params = Params(_params_source(request))
        meta, number, version = self._lookup_version(key, params)
        body: dict[str, Any] = {"data": None, "metadata": meta.version_info(number, version)}
        if version.gone(self.clock()):
            return Response(data=body, status=404)
        body["data"] = self._read_version_data(key, number)
        return self._ok(body, params, _DATA_FIELDS)

    def _data_write(self, request: Request, key: str) -> Response:
        params = Params(_params_source(request), prefixed=False)
        if not params.has("data"):
            raise BadRequest("no data provided")
        data = params.map("data")
        options = params.map("options")
        config = self._load_config()
        with self.storage.lock(self._meta_key(key)):
            meta = self._load_meta(key) or _KeyMeta(key=key)
            _check_cas(options, config, meta)
            body, warnings = self._add_version(meta, config, data)
        ignored = params.unknown(_DATA_FIELDS)
        if ignored:
            warnings.append(ignored_warning(ignored))
        return Response(data=body, warnings=warnings or None)

    def _data_patch(self, request: Request, key: str) -> Response:
        params = Params(_params_source(request))
        if not params.has("data"):
            raise BadRequest("no data provided")
        patch = params.map("data")
        options = params.map("options")
        with self.storage.lock(self._meta_key(key)):
            meta = self._load_meta(key)
            if meta is None:
                raise NotFound()
            config = self._load_config()
            _check_cas(options, config, meta)
            version = meta.versions.get(meta.current_version)
            if version is None:
                raise NotFound()
            if version.gone(self.clock()):
                return Response(data=meta.version_info(meta.current_version, version), status=404)
            current = self._load_version_data(key, meta.current_version)
            if current is None:
                # Vault's patch helper refuses a version whose data is JSON
                # null (left by an earlier PATCH with "data": null).
                raise VaultError("resource does not exist", status=500)
            body, warnings = self._add_version(meta, config, merge_patch(current, patch))
        ignored = params.unknown(_DATA_FIELDS)
        if ignored:
            warnings.append(ignored_warning(ignored))
        return Response(data=body, warnings=warnings or None)

    def _data_delete(self, key: str) -> Response:
        """Soft-delete the current version, unless it is already gone."""
        if not key:
            return Response()
        with self.storage.lock(self._meta_key(key)):
            meta = self._load_meta(key)
            if meta is None:
                return Response()
            version = meta.versions.get(meta.current_version)
            now = self.clock()
            if version is None or version.gone(now):
                return Response()
            version.deleted = now
            self._save_meta(meta)
        return Response()

    def _add_version(self, meta: _KeyMeta, config: _Config, data: Any) -> tuple[dict[str, Any], list[str]]:
        """Store ``data`` as the next version and prune, as Vault's
        ``AddVersion``: the window is ``max(key, mount)`` max_versions (10 when
        both are 0), and ``oldest_version`` moves once the count reaches it.
        The caller holds the key's lock."""
        now = self.clock()
        number = meta.current_version + 1
        version = _Version(created=now, deleted=self._auto_deletion(now, config, meta))
        meta.current_version = number
        meta.versions[number] = version
        meta.updated = now
        if not meta.created:
            meta.created = now
        limit = max(meta.max_versions, config.max_versions) or DEFAULT_MAX_VERSIONS
        pruned: list[int] = []
        if (meta.current_version - meta.oldest_version) % _UINT32 >= limit:
            last = meta.current_version - limit
            pruned = list(range(max(meta.oldest_version, 1), last + 1))
            for old in range(meta.oldest_version, last + 1):
                meta.versions.pop(old, None)
            meta.oldest_version = last + 1
        self._save_meta(
            meta,
            before=[Put(self._version_key(meta.key, number), _encode(data))],
            after=[Delete(self._version_key(meta.key, old)) for old in pruned],
        )
        return meta.version_info(number, version), []

    @staticmethod
    def _auto_deletion(now: int, config: _Config, meta: _KeyMeta) -> int | None:
        """When a new version deletes itself: the smaller non-zero of the
        mount's and the key's ``delete_version_after``, unless the mount
        disabled it."""
        if config.delete_version_after < 0:
            return None
        candidates = [d for d in (config.delete_version_after, meta.delete_version_after) if d > 0]
        if not candidates:
            return None
        return now + min(candidates) * 1_000_000_000

    # ---- delete/ undelete/ destroy/

    def _versions_request(self, request: Request, rest: str, missing: str) -> tuple[str, list[int]]:
        if request.operation not in _WRITES:
            raise MethodNotAllowed(UNSUPPORTED)
        versions = Params(_params_source(request)).int_list("versions")
        if not versions:
            raise BadRequest(missing)
        return rest.rstrip("/"), versions

    def _delete_versions(self, request: Request, rest: str) -> Response:
        key, numbers = self._versions_request(request, rest, "No version number provided")
        with self.storage.lock(self._meta_key(key)):
            meta = self._load_meta(key)
            if meta is None:
                return Response()
            now = self.clock()
            for number in numbers:
                version = meta.versions.get(number)
                if version is not None and not version.gone(now):
                    version.deleted = now
            self._save_meta(meta)
        return Response()

    def _undelete_versions(self, request: Request, rest: str) -> Response:
        key, numbers = self._versions_request(request, rest, "No version number provided")
        config = self._load_config()
        with self.storage.lock(self._meta_key(key)):
            meta = self._load_meta(key)
            if meta is None:
                return Response()
            now = self.clock()
            for number in numbers:
                version = meta.versions.get(number)
                if version is not None and not version.destroyed:
                    # An undeleted version gets a fresh automatic deletion
                    # time, counted from now, when one is configured.
                    version.deleted = self._auto_deletion(now, config, meta)
            self._save_meta(meta)
        return Response()

    def _destroy_versions(self, request: Request, rest: str) -> Response:
        key, numbers = self._versions_request(request, rest, "no version number provided")
        with self.storage.lock(self._meta_key(key)):
            meta = self._load_meta(key)
            if meta is None:
                return Response()
            doomed = [n for n in dict.fromkeys(numbers) if n in meta.versions]
            for number in doomed:
                meta.versions[number].destroyed = True
            self._save_meta(meta, after=[Delete(self._version_key(key, number)) for number in doomed])
        return Response()

    # ---- subkeys/

    def _subkeys(self, request: Request, rest: str) -> Response:
        if request.operation is not Operation.READ:
            raise MethodNotAllowed(UNSUPPORTED)
        params = Params(_params_source(request))
        depth = params.int("depth")
        key = rest.rstrip("/")
        meta, number, version = self._lookup_version(key, params)
        body: dict[str, Any] = {"metadata": meta.version_info(number, version), "subkeys": None}
        if version.gone(self.clock()):
            return Response(data=body, status=404)
        data = self._read_version_data(key, number)
        body["subkeys"] = _subkeys(data, 0 if depth is ABSENT else depth)
        return self._ok(body, params, _SUBKEYS_FIELDS)

    # ---- metadata/

    def _metadata(self, request: Request, rest: str) -> Response:
        op = request.operation
        if op is Operation.LIST:
            return self._metadata_list(request, rest)
        key = rest.rstrip("/")
        if op is Operation.READ:
            meta = self._load_meta(key) if key else None
            if meta is None:
                raise NotFound()
            return self._ok(meta.describe(), Params(_params_source(request)), _METADATA_FIELDS)
        if op in _WRITES:
            return self._metadata_write(request, key)
        if op is Operation.PATCH:
            return self._metadata_patch(request, key)
        if op is Operation.DELETE:
            return self._metadata_delete(key)
        raise MethodNotAllowed(UNSUPPORTED)

    def _metadata_list(self, request: Request, prefix: str) -> Response:
        source = _params_source(request)
        limit = Params(source).int("limit")
        after = source.get("after")
        keys = self.storage.list(f"meta/{prefix}")
        if after not in (None, ""):
            keys = [k for k in keys if k > str(after)]
        if limit is not ABSENT and limit > 0:
            keys = keys[:limit]
        if not keys:
            raise NotFound()
        return Response(data={"keys": keys})

    def _metadata_write(self, request: Request, key: str) -> Response:
        fields = _MetadataInput.parse(Params(_params_source(request), prefixed=False))
        if fields.empty():
            return Response()
        custom = fields.custom_metadata
        if custom is not ABSENT:
            custom = _custom_metadata(custom or {}, drop_nulls=False)
        config = self._load_config()
        warnings = [_CAS_IGNORED] if fields.cas_required is False and config.cas_required else []
        with self.storage.lock(self._meta_key(key)):
            now = self.clock()
            meta = self._load_meta(key) or _KeyMeta(key=key, created=now)
            _check_metadata_cas(fields.metadata_cas, config, meta)
            fields.apply(meta)
            if custom is not ABSENT:
                meta.custom_metadata = custom or None
            meta.metadata_version += 1
            meta.updated = now
            self._save_meta(meta)
        return Response(warnings=warnings, status=200) if warnings else Response()

    def _metadata_patch(self, request: Request, key: str) -> Response:
        """Merge-patch the settable fields; ``custom_metadata`` entries set to
        null are removed, and ``custom_metadata: null`` removes them all."""
        fields = _MetadataInput.parse(Params(_params_source(request)))
        raw_custom = fields.custom_metadata
        if raw_custom not in (ABSENT, None):
            _custom_metadata(raw_custom, drop_nulls=True)
        config = self._load_config()
        with self.storage.lock(self._meta_key(key)):
            meta = self._load_meta(key)
            if meta is None:
                raise NotFound()
            if fields.empty():
                return Response()
            warnings = [_CAS_IGNORED] if fields.cas_required is False and config.cas_required else []
            _check_metadata_cas(fields.metadata_cas, config, meta)
            fields.apply(meta)
            if raw_custom is not ABSENT:
                merged = merge_patch(meta.custom_metadata or {}, raw_custom)
                kept = _custom_metadata(merged, drop_nulls=True) if isinstance(merged, dict) else {}
                meta.custom_metadata = kept or None
            meta.metadata_version += 1
            meta.updated = self.clock()
            self._save_meta(meta)
        return Response(warnings=warnings, status=200) if warnings else Response()

    def _metadata_delete(self, key: str) -> Response:
        """Remove the key and every version.  The metadata goes first, so an
        interrupted delete leaves unreachable data rather than a key whose
        versions are missing."""
        if not key:
            return Response()
        with self.storage.lock(self._meta_key(key)):
            meta = self._load_meta(key)
            if meta is None:
                return Response()
            self.storage.transaction([
                Delete(self._meta_key(key)),
                *(Delete(self._version_key(key, number)) for number in meta.versions),
            ])
        return Response()

    # ---- config

    def _config(self, request: Request) -> Response:
        op = request.operation
        if op is Operation.READ:
            params = Params(_params_source(request))
            return self._ok(self._load_config().describe(), params, _CONFIG_FIELDS)
        if op not in _WRITES:
            raise MethodNotAllowed(UNSUPPORTED)
        params = Params(_params_source(request))
        max_versions = params.int("max_versions")
        cas_required = params.bool("cas_required")
        metadata_cas_required = params.bool("metadata_cas_required")
        delete_after = params.duration("delete_version_after", signed=True)
        if all(v is ABSENT for v in (max_versions, cas_required, metadata_cas_required, delete_after)):
            return Response()
        with self.storage.lock("config"):
            config = self._load_config()
            if max_versions is not ABSENT:
                config.max_versions = max_versions % _UINT32
            if cas_required is not ABSENT:
                config.cas_required = cas_required
            if metadata_cas_required is not ABSENT:
                config.metadata_cas_required = metadata_cas_required
            if delete_after is not ABSENT:
                config.delete_version_after = -1 if delete_after < 0 else delete_after
            self.storage.put("config", _encode(asdict(config)))
        return Response()
