"""One path framework for every backend (Vault's ``sdk/framework``).

A backend declares its paths: a pattern (a regular expression matched
against the whole path relative to the mount, whose named groups are
fields), the fields it takes with their types and defaults, and a handler
per operation.  The framework matches, decodes every field the way Vault's
``FieldData`` does (``engines/fields.py``), answers Vault's errors for an
unknown path (404), an operation the path does not serve (405) or a field
that does not decode (400), and names ignored parameters in ``warnings``.
So an auth method or an engine is a table of paths and a few small
functions, not a dispatcher of its own.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vaultd.engines.base import Engine, MountSettings
from vaultd.engines.fields import (
    FieldError,
    Params,
    ignored_warning,
    to_bool,
    to_duration_seconds,
    to_int,
    to_map,
)
from vaultd.errors import BadRequest, MethodNotAllowed, NotFound
from vaultd.logical import Operation, Request, Response
from vaultd.storage.base import Storage

GENERIC_NAME = r"\w(([\w-]|\.)*\w)?"
"""Vault's ``framework.GenericNameRegex``: role and user names."""


def _to_string(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return value if isinstance(value, str) else repr(value)
    raise FieldError("expected a string")


def _to_strings(value: object) -> list[str]:
    """Vault's ``TypeCommaStringSlice``: a list, or one comma-separated string;
    items trimmed, empty ones dropped."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, list) else [value]
    out = []
    for item in items:
        text = _to_string(item).strip()
        if text:
            out.append(text)
    return out


def _to_lower_strings(value: object) -> list[str]:
    return [item.lower() for item in _to_strings(value)]


def _to_string_map(value: object) -> dict[str, str]:
    """``TypeKVPairs``: a map of strings (or ``k=v`` strings)."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        out: dict[str, str] = {}
        for item in value:
            key, sep, rest = item.partition("=")
            if not sep:
                raise FieldError(f"invalid key value pair {item!r}")
            out[key] = rest
        return out
    decoded = to_map(value) or {}
    return {str(k): _to_string(v) for k, v in decoded.items()}


DECODERS: dict[str, Callable[[object], Any]] = {
    "string": _to_string,
    "int": to_int,
    "bool": to_bool,
    "duration": to_duration_seconds,
    "strings": _to_strings,
    "lower_strings": _to_lower_strings,
    "map": lambda v: to_map(v) or {},
    "string_map": _to_string_map,
}
_ZERO: dict[str, Callable[[], Any]] = {
    "string": str, "int": int, "bool": bool, "duration": int, "strings": list, "lower_strings": list,
    "map": dict, "string_map": dict,
}


@dataclass(frozen=True)
class FieldSpec:
    type: str
    default: Any = None
    description: str = ""

    def __post_init__(self) -> None:
        if self.type not in DECODERS:
            raise ValueError(f"unknown field type {self.type!r}")


class FieldData:
    """One request's fields, decoded on construction (so a bad value is a
    400 before the handler changes anything)."""

    def __init__(self, raw: Mapping[str, Any], schema: Mapping[str, FieldSpec]) -> None:
        params = Params(raw)
        self._values: dict[str, Any] = {}
        self._given: set[str] = set()
        for name, spec in schema.items():
            if name not in raw:
                continue
            try:
                self._values[name] = DECODERS[spec.type](raw[name])
            except FieldError as err:
                raise params.error(name, str(err)) from None
            except (TypeError, ValueError, RecursionError):
                raise params.error(name, "invalid value") from None
            self._given.add(name)
        self._schema = schema
        self.ignored = sorted(k for k in raw if k not in schema)

    def get(self, name: str) -> Any:
        if name in self._values:
            return self._values[name]
        spec = self._schema[name]
        if spec.default is not None:
            return spec.default
        return _ZERO[spec.type]()

    def given(self, name: str) -> bool:
        return name in self._given


Handler = Callable[[Request, FieldData], Response | None]


@dataclass(frozen=True)
class PathSpec:
    pattern: str
    fields: Mapping[str, FieldSpec] = field(default_factory=dict)
    operations: Mapping[Operation, Handler] = field(default_factory=dict)
    exists: Callable[[Request, FieldData], bool] | None = None
    unauthenticated: bool = False
    """Served without a token (logins)."""


class FrameworkBackend(Engine):
    """An :class:`Engine` built from a table of :class:`PathSpec`."""

    def __init__(self, storage: Storage, mount: MountSettings, paths: Sequence[PathSpec]) -> None:
        super().__init__(storage, mount)
        self._paths = [(re.compile(spec.pattern), spec) for spec in paths]

    def _match(self, path: str) -> tuple[PathSpec, dict[str, str]]:
        for regex, spec in self._paths:
            found = regex.fullmatch(path)
            if found is not None:
                groups = {k: v for k, v in found.groupdict().items() if v is not None and k in spec.fields}
                return spec, groups
        raise NotFound("unsupported path")

    def _data(self, request: Request, spec: PathSpec, groups: dict[str, str]) -> FieldData:
        raw: dict[str, Any] = {}
        if request.operation in (Operation.READ, Operation.LIST, Operation.DELETE):
            raw.update(request.query)
        raw.update(request.data)
        raw.update(groups)  # the URL wins over the body, as in Vault
        return FieldData(raw, spec.fields)

    def is_unauthenticated(self, path: str) -> bool:
        try:
            spec, _ = self._match(path)
        except NotFound:
            return False
        return spec.unauthenticated

    def exists(self, request: Request) -> bool:
        try:
            spec, groups = self._match(request.path)
        except NotFound:
            return True
        if spec.exists is None:
            return True
        return spec.exists(request, self._data(request, spec, groups))

    def handle(self, request: Request) -> Response:
        spec, groups = self._match(request.path)
        operation = request.operation
        handler = spec.operations.get(operation)
        if handler is None and operation is Operation.CREATE:
            handler = spec.operations.get(Operation.UPDATE)
        if handler is None:
            raise MethodNotAllowed("unsupported operation")
        data = self._data(request, spec, groups)
        response = handler(request, data) or Response()
        if data.ignored and request.operation not in (Operation.READ, Operation.LIST):
            response.warnings = [*(response.warnings or []), ignored_warning(data.ignored)]
            if response.data is None and response.auth is None and response.login is None:
                response.data = {}
        return response


def require(data: FieldData, name: str, message: str | None = None) -> Any:
    """A field that must be given and non-empty."""
    value = data.get(name)
    if value in (None, "", [], {}):
        raise BadRequest(message or f"missing {name}")
    return value
