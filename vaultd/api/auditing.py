"""Auditing every HTTP request, at the WSGI layer, in front of everything.

It wraps both the fast path's own answers and the Flask app, so one hook sees every
request whoever answers it: a secret read the fast path serves, a 403 for a
bad token, a 503 while sealed, a 400 for a bad body.  With no device
enabled it costs one check of two shared-memory counters
(:meth:`vaultd.core.audit.Audit.active`) and passes the request on.

With devices: the request entry is written before the request is served,
and if no device could write it the request is refused with Vault's 500
``internal error`` without reaching any handler, so it changes and reveals
nothing.  The response entry is written after the handler, before the answer
leaves; a JSON answer whose response entry no device could write is replaced
by the same 500, as Vault does.  A non-JSON answer (a snapshot) streams, and
its response entry is written when the stream closes.

The endpoints that carry key material (``sys/init``, ``sys/unseal``, key
shares for generate-root and rekey, the agent's channel) are audited
without their request and response data, even with ``log_raw``: Vault does
not audit them at all, and a share in an audit file is a share leaked.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qsl

from vaultd.api.http import log_unexpected, token_from_environ
from vaultd.audit.entry import RequestInfo, ResponseInfo
from vaultd.core.core import Core
from vaultd.durations import parse_duration
from vaultd.fastuuid import uuid4_str

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_PREFIX = "/v1/"
_NO_DATA = ("sys/init", "sys/unseal", "sys/generate-root", "sys/rekey", "sys/rekey-recovery-key",
            "sys/generate-recovery-token", "sys/decode-token", "sys/vaultd/")
"""Paths whose data is key material, left out of entries even with
``log_raw`` (``sys/decode-token`` takes an encoded root token and its OTP
and answers the token itself)."""
_FAILED = b'{"errors": ["internal error"]}\n'
ANSWERED_BODY = "vaultd.answered_body"
"""Where the fast path leaves the body it encoded (a plain JSON value that
the response entry may read but not change), so it is not parsed again."""


def _operation(method: str, query: str) -> str:
    if method == "GET":
        if not query:
            return "read"
        listing = any(k == "list" and v.lower() in ("true", "1") for k, v in parse_qsl(query))
        return "list" if listing else "read"
    return {"POST": "update", "PUT": "update", "DELETE": "delete", "LIST": "list", "PATCH": "patch",
            "HEAD": "read"}.get(method, method.lower())


def _error_text(body: Any) -> str:
    errors = body.get("errors") if isinstance(body, dict) else None
    if isinstance(errors, list) and errors:
        return "; ".join(str(e) for e in errors)
    return ""


class AuditMiddleware:
    """Wraps the fast path's dispatch (see :class:`vaultd.api.fastpath.FastPath`)."""

    def __init__(self, app: WsgiApp, core: Core, max_request_size: int | None) -> None:
        self.app = app
        self.core = core
        self.limit = max_request_size if max_request_size and max_request_size > 0 else None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """Called only while a device is enabled (the fast path checks)."""
        path = environ.get("PATH_INFO", "")
        if not isinstance(path, str) or not path.startswith(_PREFIX):
            return self.app(environ, start_response)
        try:
            try:
                request = self._describe(environ, path[len(_PREFIX):])
            except Exception as exc:  # never let describing a request answer for it
                log_unexpected(exc)
                return self._refuse(start_response)
            if not self.core.audit.log_request(request):
                return self._refuse(start_response)
            return self._serve(environ, start_response, request)
        finally:
            self.core.audit.done()  # the caller describe() found is this request's only

    # -- the request --------------------------------------------------------

    def _body(self, environ: dict[str, Any]) -> bytes:
        """Read the body once and hand the app a copy.  At most one byte past
        the limit is read, so the app still answers 413 as it would."""
        length = environ.get("CONTENT_LENGTH")
        chunked = bool(environ.get("HTTP_TRANSFER_ENCODING"))
        if length in (None, "", "0") and not chunked:
            return b""
        stream = environ["wsgi.input"]
        if not chunked:
            try:
                size = int(length)
            except ValueError:
                return b""
            if self.limit is not None and size > self.limit:
                return b""  # refused by the app as too large; not read here
            raw = stream.read(size)
        else:
            raw = stream.read(self.limit + 1) if self.limit is not None else stream.read()
            environ.pop("HTTP_TRANSFER_ENCODING", None)
            environ.pop("wsgi.input_terminated", None)
        environ["wsgi.input"] = io.BytesIO(raw)
        environ["CONTENT_LENGTH"] = str(len(raw))
        return raw

    def _describe(self, environ: dict[str, Any], path: str) -> RequestInfo:
        method = str(environ.get("REQUEST_METHOD", "GET"))
        query = str(environ.get("QUERY_STRING", ""))
        raw = self._body(environ)
        data: dict[str, Any] | None = None
        keep_data = not path.startswith(_NO_DATA)
        if raw and keep_data:
            try:
                decoded = json.loads(raw)
            except (ValueError, RecursionError):
                decoded = None
            if isinstance(decoded, dict):
                data = decoded
        elif query and keep_data and method in ("GET", "DELETE", "LIST"):
            data = dict(parse_qsl(query)) or None
        token = token_from_environ(environ)
        auth, accessor, mount_type, mount_point, mount_accessor = self.core.audit.describe(token, path)
        wrap_ttl = 0
        if environ.get("HTTP_X_VAULT_WRAP_TTL"):
            try:
                wrap_ttl = parse_duration(environ["HTTP_X_VAULT_WRAP_TTL"])
            except Exception:
                wrap_ttl = 0
        try:
            port = int(environ.get("REMOTE_PORT") or 0)
        except ValueError:
            port = 0
        return RequestInfo(
            id=uuid4_str(), operation=_operation(method, query), path=path, client_token=token or "",
            data=data, remote_address=str(environ.get("REMOTE_ADDR") or ""), remote_port=port,
            wrap_ttl=wrap_ttl, mount_type=mount_type, mount_point=mount_point, mount_accessor=mount_accessor,
            client_token_accessor=accessor, auth=auth,
        )

    # -- the response -------------------------------------------------------

    @staticmethod
    def _refuse(start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("500 INTERNAL SERVER ERROR",
                       [("Content-Type", "application/json"), ("Content-Length", str(len(_FAILED)))])
        return [_FAILED]

    def _serve(self, environ: dict[str, Any], start_response: Callable[..., Any],
               request: RequestInfo) -> Iterable[bytes]:
        held: dict[str, Any] = {}

        def hold(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
            held["status"], held["headers"] = status, headers
            return lambda _data: None  # the write() callable; neither app uses it

        result = self.app(environ, hold)
        headers = held.get("headers") or []
        content_type = next((v for k, v in headers if k.lower() == "content-type"), "")
        status = int(str(held.get("status", "500")).split(" ", 1)[0])
        if status != 204 and not content_type.startswith("application/json"):
            start_response(held["status"], headers)
            return _Closing(result, lambda: self.core.audit.log_response(request, ResponseInfo(status=status)))
        try:
            payload = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        keep_data = not request.path.startswith(_NO_DATA)
        body = environ.get(ANSWERED_BODY)
        if body is None:
            try:
                body = json.loads(payload) if payload else None
            except ValueError:
                body = None
        response = ResponseInfo(status=status, error=_error_text(body))
        if isinstance(body, dict) and not response.error and keep_data:
            if "request_id" in body:  # Vault's envelope
                response.data = body.get("data")
                response.auth = body.get("auth")
                response.wrap_info = body.get("wrap_info")
                response.warnings = body.get("warnings")
            else:  # a raw sys/ answer: the whole body is its data
                response.data = body
        if not self.core.audit.log_response(request, response):
            return self._refuse(start_response)
        start_response(held["status"], headers)
        return [payload]


class _Closing:
    """A streamed body whose response entry is written when it closes."""

    def __init__(self, inner: Iterable[bytes], done: Callable[[], object]) -> None:
        self._inner = inner
        self._done = done

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._inner)

    def close(self) -> None:
        try:
            close = getattr(self._inner, "close", None)
            if close is not None:
                close()
        finally:
            self._done()

