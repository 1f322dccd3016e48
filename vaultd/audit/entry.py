"""Vault's audit entries: what one request and its response look like.

The shape is Vault's (``time``, ``type``, ``auth``, ``request``,
``response``, ``error``; empty fields left out as Go's ``omitempty`` does),
so tools written for Vault's audit log read these lines too.  The HMAC is
applied here, once per device, since each device has its own salt:
``auth.client_token``, ``request.client_token``, every string of
``request.data`` and ``response.data``, the tokens in ``response.auth`` and
``response.wrap_info``, and the accessors unless ``hmac_accessor=false``.
``log_raw`` writes them all in clear.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vaultd.audit.hashing import hash_structure

Hash = Callable[[str], str]


@dataclass
class AuthInfo:
    """Who asked: the caller's token entry, as far as it could be found."""

    accessor: str = ""
    display_name: str = ""
    policies: list[str] = field(default_factory=list)
    token_policies: list[str] = field(default_factory=list)
    metadata: dict[str, str] | None = None
    token_type: str = ""
    token_ttl: int = 0
    remaining_uses: int = 0
    token_issue_time: str = ""


@dataclass
class RequestInfo:
    """What was asked, taken from the HTTP request before it is served."""

    id: str
    operation: str
    path: str
    client_token: str = ""
    data: dict[str, Any] | None = None
    remote_address: str = ""
    remote_port: int = 0
    wrap_ttl: int = 0
    mount_type: str = ""
    mount_point: str = ""
    mount_accessor: str = ""
    client_token_accessor: str = ""
    auth: AuthInfo | None = None
    rendered: dict[int, tuple[dict[str, Any], dict[str, Any]]] = field(
        default_factory=dict, repr=False, compare=False)
    """Each formatter's ``auth`` and ``request`` blocks, made once for the
    request entry and reused by the response entry (they are the same, and
    making them HMACs the token, the accessor and every string of the data)."""
    encoded: dict[int, tuple[str, str]] = field(default_factory=dict, repr=False, compare=False)
    """The same blocks as JSON text, spliced into both lines."""


@dataclass
class ResponseInfo:
    """What was answered: the status, and the parts of a JSON body."""

    status: int
    data: Any = None
    auth: dict[str, Any] | None = None
    wrap_info: dict[str, Any] | None = None
    warnings: list[str] | None = None
    error: str = ""


@dataclass(frozen=True)
class FormatOptions:
    """A device's options that shape its entries."""

    log_raw: bool = False
    hmac_accessor: bool = True
    prefix: str = ""


_stamp: tuple[int, str] = (-1, "")
"""The last second formatted: two entries a request, thousands a second."""


def _now() -> str:
    """RFC 3339 with nanoseconds in UTC, as Go's ``RFC3339Nano`` writes it
    (trailing zeros of the fraction dropped)."""
    global _stamp
    ns = time.time_ns()
    seconds, fraction = divmod(ns, 1_000_000_000)
    cached_second, stamp = _stamp
    if cached_second != seconds:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _stamp = (seconds, stamp)
    digits = f"{fraction:09d}".rstrip("0")
    return f"{stamp}.{digits}Z" if digits else f"{stamp}Z"


_encode = json.JSONEncoder(separators=(",", ":")).encode
"""``json.dumps(value, separators=(",", ":"))`` without building an encoder
per call; ``ensure_ascii`` (the default) keeps a line one line."""


def _compact(values: dict[str, Any]) -> dict[str, Any]:
    """Go's ``omitempty``: drop empty strings, zeros, False, None, empty
    lists and maps, which for JSON values are exactly the falsy ones."""
    return {key: value for key, value in values.items() if value}


class Formatter:
    """Builds a device's lines; ``hash_`` is its salt's HMAC."""

    def __init__(self, options: FormatOptions, hash_: Hash) -> None:
        self.options = options
        self._hash = hash_

    # -- the pieces ------------------------------------------------------

    def _secret(self, value: str) -> str:
        if not value or self.options.log_raw:
            return value
        return self._hash(value)

    def _accessor(self, value: str) -> str:
        return self._secret(value) if self.options.hmac_accessor else value

    def _data(self, value: Any) -> Any:
        if value is None or self.options.log_raw:
            return value
        return hash_structure(value, self._hash)

    def _auth(self, request: RequestInfo) -> dict[str, Any]:
        auth = request.auth or AuthInfo()
        return _compact({
            "client_token": self._secret(request.client_token),
            "accessor": self._accessor(auth.accessor),
            "display_name": auth.display_name,
            "policies": auth.policies,
            "token_policies": auth.token_policies,
            "metadata": auth.metadata,
            "remaining_uses": auth.remaining_uses,
            "token_type": auth.token_type,
            "token_ttl": auth.token_ttl,
            "token_issue_time": auth.token_issue_time,
        })

    def _request(self, request: RequestInfo) -> dict[str, Any]:
        return _compact({
            "id": request.id,
            "operation": request.operation,
            "mount_point": request.mount_point,
            "mount_type": request.mount_type,
            "mount_accessor": request.mount_accessor,
            "client_token": self._secret(request.client_token),
            "client_token_accessor": self._accessor(request.client_token_accessor),
            "namespace": {"id": "root"},
            "path": request.path,
            "data": self._data(request.data),
            "remote_address": request.remote_address,
            "remote_port": request.remote_port,
            "wrap_ttl": request.wrap_ttl,
        })

    def _response_auth(self, auth: dict[str, Any] | None) -> dict[str, Any] | None:
        if not auth:
            return None
        return _compact({
            "client_token": self._secret(str(auth.get("client_token") or "")),
            "accessor": self._accessor(str(auth.get("accessor") or "")),
            "display_name": auth.get("display_name") or "",
            "policies": auth.get("policies"),
            "token_policies": auth.get("token_policies"),
            "metadata": auth.get("metadata"),
            "num_uses": auth.get("num_uses") or 0,
            "token_type": auth.get("token_type") or "",
            "token_ttl": auth.get("lease_duration") or 0,
        })

    def _wrap_info(self, info: dict[str, Any] | None) -> dict[str, Any] | None:
        if not info:
            return None
        return _compact({
            "ttl": info.get("ttl") or 0,
            "token": self._secret(str(info.get("token") or "")),
            "accessor": self._accessor(str(info.get("accessor") or "")),
            "creation_time": info.get("creation_time") or "",
            "creation_path": info.get("creation_path") or "",
            "wrapped_accessor": self._accessor(str(info.get("wrapped_accessor") or "")),
        })

    # -- the entries -------------------------------------------------------

    def _blocks(self, request: RequestInfo) -> tuple[dict[str, Any], dict[str, Any]]:
        blocks = request.rendered.get(id(self))
        if blocks is None:
            blocks = request.rendered[id(self)] = (self._auth(request), self._request(request))
        return blocks

    def request_entry(self, request: RequestInfo, *, type_: str = "request", error: str = "") -> dict[str, Any]:
        auth, block = self._blocks(request)
        return _compact({
            "time": _now(),
            "type": type_,
            "auth": auth,
            "request": block,
            "error": error,
        })

    def _response_block(self, request: RequestInfo, response: ResponseInfo) -> dict[str, Any]:
        return _compact({
            "mount_point": request.mount_point,
            "mount_type": request.mount_type,
            "mount_accessor": request.mount_accessor,
            "auth": self._response_auth(response.auth),
            "data": self._data(response.data),
            "warnings": response.warnings,
            "wrap_info": self._wrap_info(response.wrap_info),
        })

    def response_entry(self, request: RequestInfo, response: ResponseInfo) -> dict[str, Any]:
        body = self._response_block(request, response)
        auth, block = self._blocks(request)
        entry = _compact({
            "time": _now(),
            "type": "response",
            "auth": auth,
            "request": block,
            "error": response.error,
        })
        entry["response"] = body  # Vault's pointer: present even when empty
        return entry

    # -- the lines, as written ---------------------------------------------

    def _encoded_blocks(self, request: RequestInfo) -> tuple[str, str]:
        """The ``auth`` and ``request`` blocks as JSON text, encoded once a
        request and spliced into both its lines ("" when a block is empty)."""
        cached = request.encoded.get(id(self))
        if cached is None:
            auth, block = self._blocks(request)
            cached = request.encoded[id(self)] = (_encode(auth) if auth else "", _encode(block) if block else "")
        return cached

    def request_line(self, request: RequestInfo) -> bytes:
        """``line(request_entry(request))``, byte for byte, made faster."""
        auth, block = self._encoded_blocks(request)
        return self._join(_now(), "request", auth, block, "", None)

    def response_line(self, request: RequestInfo, response: ResponseInfo) -> bytes:
        """``line(response_entry(request, response))``, byte for byte."""
        auth, block = self._encoded_blocks(request)
        body = _encode(self._response_block(request, response))
        return self._join(_now(), "response", auth, block, response.error, body)

    def _join(self, now: str, type_: str, auth: str, block: str, error: str, response: str | None) -> bytes:
        parts = [self.options.prefix, '{"time":"', now, '","type":"', type_, '"']
        if auth:
            parts += [',"auth":', auth]
        if block:
            parts += [',"request":', block]
        if error:
            parts += [',"error":', _encode(error)]
        if response is not None:
            parts += [',"response":', response]
        parts.append("}\n")
        return "".join(parts).encode()

    def line(self, entry: dict[str, Any]) -> bytes:
        """One whole line: the prefix, the JSON, a newline.  ``ensure_ascii``
        keeps it one line whatever the values hold."""
        return (self.options.prefix + _encode(entry) + "\n").encode()
