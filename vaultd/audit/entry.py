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


MEMO_ENTRIES = 1024
"""How many tokens a formatter remembers; past that it starts afresh."""
MEMO_LONGEST = 512
"""Longer values are no token (the token store refuses them): not remembered."""

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


_encoder = json.JSONEncoder(separators=(",", ":"))


def _make_encode() -> Callable[[Any], str]:
    """``json.dumps(value, separators=(",", ":"))`` (``ensure_ascii``, the
    default, keeps a line one line), with the C encoder made once: the
    stock ``encode`` builds one, and a dict of circular-reference markers,
    on every call (a third of its cost for an entry's blocks).  Without the
    markers a cycle ends in RecursionError instead of ValueError; entries
    hold decoded JSON, which has none.  Falls back to the stock ``encode``
    where the C encoder is missing or its signature differs."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return _encoder.encode
    try:
        encode = make(None, _encoder.default, json.encoder.encode_basestring_ascii, None, ":", ",",
                      False, False, True)
        if "".join(encode({"a": [1, "é", None]}, 0)) != _encoder.encode({"a": [1, "é", None]}):
            return _encoder.encode
    except Exception:
        return _encoder.encode

    def fast(value: Any) -> str:
        if isinstance(value, str):
            return json.encoder.encode_basestring_ascii(value)
        return "".join(encode(value, 0))

    return fast


_encode = _make_encode()


def _compact(values: dict[str, Any]) -> dict[str, Any]:
    """Go's ``omitempty``: drop empty strings, zeros, False, None, empty
    lists and maps, which for JSON values are exactly the falsy ones."""
    return {key: value for key, value in values.items() if value}


class Formatter:
    """Builds a device's lines; ``hash_`` is its salt's HMAC."""

    def __init__(self, options: FormatOptions, hash_: Hash) -> None:
        self.options = options
        self._hash = hash_
        self._hashed: dict[str, str] = {}
        """The HMAC of the caller's token and accessor, which come back
        request after request (four of a read's six HMACs).  Bounded, and
        emptied by :meth:`forget` when the server seals: it holds tokens."""
        self._auth_text: dict[str, tuple[AuthInfo | None, str]] = {}
        """Per client token, the ``auth`` block as JSON text and the
        :class:`AuthInfo` it was made from: the same object comes back while
        the token's stored entry is unchanged (see ``Audit.describe``)."""
        self._request_text: dict[tuple[str, ...], str] = {}
        """The middle of the ``request`` block, per caller, path and mount
        (see :meth:`_request_json`)."""

    def forget(self) -> None:
        """Drop what is remembered of tokens (at seal; see ``Core._drop_caches``)."""
        self._hashed.clear()
        self._auth_text.clear()
        self._request_text.clear()

    # -- the pieces ------------------------------------------------------

    def _secret(self, value: str) -> str:
        if not value or self.options.log_raw:
            return value
        return self._hash(value)

    def _token(self, value: str) -> str:
        """``_secret`` for a value that repeats (a token, an accessor): remembered."""
        if not value or self.options.log_raw:
            return value
        hashed = self._hashed.get(value)
        if hashed is None:
            if len(value) > MEMO_LONGEST:
                return self._hash(value)  # no token: not worth keeping
            if len(self._hashed) >= MEMO_ENTRIES:
                self._hashed.clear()
            hashed = self._hashed[value] = self._hash(value)
        return hashed

    def _accessor(self, value: str) -> str:
        return self._token(value) if self.options.hmac_accessor else value

    def _data(self, value: Any) -> Any:
        if value is None or self.options.log_raw:
            return value
        return hash_structure(value, self._hash)

    def _auth(self, request: RequestInfo) -> dict[str, Any]:
        auth = request.auth or AuthInfo()
        return _compact({
            "client_token": self._token(request.client_token),
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

    def _request_middle(self, request: RequestInfo) -> dict[str, Any]:
        """The fields of the ``request`` block between its id and its data:
        the same request after request from one caller (see _request_json)."""
        return {
            "operation": request.operation,
            "mount_point": request.mount_point,
            "mount_type": request.mount_type,
            "mount_accessor": request.mount_accessor,
            "client_token": self._token(request.client_token),
            "client_token_accessor": self._accessor(request.client_token_accessor),
            "namespace": {"id": "root"},
            "path": request.path,
        }

    def _request(self, request: RequestInfo) -> dict[str, Any]:
        return _compact({
            "id": request.id,
            **self._request_middle(request),
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
            cached = request.encoded[id(self)] = (self._auth_json(request), self._request_json(request))
        return cached

    def _request_json(self, request: RequestInfo) -> str:
        """The ``request`` block's text.  Without data, all of it but the id
        and the client's address is the same request after request from one
        caller (and costs two HMACs and an encoding): that middle part is
        remembered per caller, path and mount, and the rest spliced around it."""
        if request.data is not None or len(request.client_token) > MEMO_LONGEST or len(request.path) > MEMO_LONGEST:
            block = self._request(request)
            return _encode(block) if block else ""
        key = (request.client_token, request.client_token_accessor, request.operation, request.path,
               request.mount_point, request.mount_type, request.mount_accessor)
        middle = self._request_text.get(key)
        if middle is None:
            middle = _encode(_compact(self._request_middle(request)))[1:-1]  # never empty: it has the namespace
            if len(self._request_text) >= MEMO_ENTRIES:
                self._request_text.clear()
            self._request_text[key] = middle
        parts = ['{"id":', _encode(request.id), ",", middle] if request.id else ["{", middle]
        if request.remote_address:
            parts += [',"remote_address":', _encode(request.remote_address)]
        if request.remote_port:
            parts += [',"remote_port":', _encode(request.remote_port)]
        if request.wrap_ttl:
            parts += [',"wrap_ttl":', _encode(request.wrap_ttl)]
        parts.append("}")
        return "".join(parts)

    def _auth_json(self, request: RequestInfo) -> str:
        """The ``auth`` block's text, remembered per token while its
        :class:`AuthInfo` is the same object (so the same entry)."""
        token = request.client_token
        remembered = self._auth_text.get(token)
        if remembered is not None and remembered[0] is request.auth:
            return remembered[1]
        auth = self._auth(request)
        text = _encode(auth) if auth else ""
        if token and request.auth is not None and len(token) <= MEMO_LONGEST:
            if len(self._auth_text) >= MEMO_ENTRIES:
                self._auth_text.clear()
            self._auth_text[token] = (request.auth, text)
        return text

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
