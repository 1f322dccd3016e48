"""The two hottest requests, answered without Flask's request machinery.

Profiling a KV v2 read showed Flask and Werkzeug (request and app contexts,
URL map matching, the request and response objects, signals) taking about
250 of its 420 µs in-process, more than the core's token check, policy and
storage read together.  A secrets server spends most of its life answering
two requests: a plain ``GET`` of a secret and ``GET auth/token/lookup-self``
(what agents and CLIs send to check their token).  This WSGI layer sits in
front of the Flask app and answers just those, when they carry no query
string, no body and a plain ASCII path; everything else (and every variant
it is unsure of) goes to Flask unchanged.

It calls the same core methods with the same arguments as the Flask
handlers (``logical.handle`` and ``auth_token.lookup_self``) and encodes
with the same functions from :mod:`vaultd.api.http`, so the answers are the
same byte for byte apart from ``request_id``;
``tests/unit/test_fastpath.py`` checks that for every kind of answer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from vaultd.api.auditing import ANSWERED_BODY, AuditMiddleware
from vaultd.api.http import encode_json, envelope_body, log_error, log_unexpected, logical_body, token_from_environ
from vaultd.core.core import Core, client_address
from vaultd.errors import VaultError
from vaultd.logical import Operation, Request

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_PREFIX = "/v1/"
_LOOKUP_SELF = "/v1/auth/token/lookup-self"
_SYSTEM_PREFIXES = ("sys/", "auth/token/")
"""Paths the Flask app routes to system handlers or refuses in Vault's
system-backend order; never answered here."""

# Werkzeug's reason phrases are upper case; keep the status line identical.
_STATUS_LINES = {status.value: f"{status.value} {status.phrase.upper()}" for status in HTTPStatus}
_JSON_HEADER = ("Content-Type", "application/json")
_EMPTY_TYPE = ("Content-Type", "text/html; charset=utf-8")


def _eligible(environ: dict[str, Any]) -> str | None:
    """The path if this is a request the fast path answers, else None."""
    if environ.get("REQUEST_METHOD") != "GET" or environ.get("QUERY_STRING"):
        return None
    if environ.get("HTTP_X_VAULT_WRAP_TTL"):
        return None  # wrapping is done by the Flask app's after_request
    if environ.get("CONTENT_LENGTH") not in (None, "", "0") or environ.get("HTTP_TRANSFER_ENCODING"):
        return None
    path = environ.get("PATH_INFO", "")
    if not isinstance(path, str) or not path.startswith(_PREFIX) or not path.isascii():
        return None
    # Werkzeug's URL map merges doubled slashes with a redirect and refuses
    # a path that starts with one; leave both to it.  ".." stays as it is in
    # Flask too, but is left to it for the same reason: one code path for
    # anything unusual.
    if "//" in path or "/./" in path or "/../" in path or path.endswith(("/.", "/..")):
        return None
    return path


class FastPath:
    """WSGI middleware: ``app.wsgi_app = FastPath(app.wsgi_app, core)``."""

    def __init__(self, app: WsgiApp, core: Core, *, max_request_size: int | None = None) -> None:
        self.app = app
        self.core = core
        self.audited = AuditMiddleware(self._dispatch, core, max_request_size)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """With an audit device enabled, every request (this layer's and
        Flask's) passes the audit; without, the one check costs two reads
        of shared memory."""
        if self.core.audit.active():
            return self.audited(environ, start_response)
        return self._dispatch(environ, start_response)

    def _dispatch(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = _eligible(environ)
        if path is None:
            return self.app(environ, start_response)
        if path == _LOOKUP_SELF:
            answer = self._lookup_self
        else:
            relative = path[len(_PREFIX) :]
            if not relative or relative.startswith(_SYSTEM_PREFIXES):
                return self.app(environ, start_response)
            answer = self._read
            path = relative
        client_address.set(str(environ.get("REMOTE_ADDR") or ""))
        try:
            status, body = answer(token_from_environ(environ), path)
        except VaultError as exc:
            log_error(exc)
            status, body = exc.status, {"errors": exc.messages}
        except Exception as exc:  # the Flask app's catch-all does the same
            log_unexpected(exc)
            status, body = 500, {"errors": ["internal error"]}
        if body is None:  # 204; Werkzeug's empty response still names a type
            start_response(_STATUS_LINES[status], [_EMPTY_TYPE])
            return [b""]
        payload = encode_json(body)
        environ[ANSWERED_BODY] = body  # the audit's response entry needs no second parse
        start_response(_STATUS_LINES[status], [_JSON_HEADER, ("Content-Length", str(len(payload)))])
        return [payload]

    def _read(self, token: str | None, path: str) -> tuple[int, Any]:
        """``logical.handle`` for a GET without ``?list``: a READ."""
        response = self.core.handle(token, Request(operation=Operation.READ, path=path, data={}, query={}))
        return logical_body(response)

    def _lookup_self(self, token: str | None, _path: str) -> tuple[int, Any]:
        """``auth_token.lookup_self``.  The system-backend gate that runs
        before it in Flask authenticates without spending a use; ``check``
        authenticates first too, so the errors come in the same order."""
        entry = self.core.check(token, "auth/token/lookup-self", Operation.READ)
        return 200, envelope_body(entry.lookup_data(token or ""))
