"""Decoding requests and encoding responses the way Vault does.

Kept apart from the handlers so each handler stays a few lines: take the
token and the body from here, call the core, hand the result back here.
"""

from __future__ import annotations

import json
import logging
import math
import re
import traceback
from collections.abc import Mapping
from typing import Any

from flask import Response as FlaskResponse
from flask import current_app, g, request

from vaultd.core.core import Core
from vaultd.engines.fields import ignored_warning
from vaultd.errors import BadRequest, PayloadTooLarge, VaultError
from vaultd.fastuuid import uuid4_str
from vaultd.logical import Response

_JSON = "application/json"
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

log = logging.getLogger("vaultd.api")


def client_token() -> str | None:
    """``X-Vault-Token``, or ``Authorization: Bearer``, as Vault accepts."""
    return token_from_environ(request.environ)


def token_from_environ(environ: Mapping[str, Any]) -> str | None:
    """:func:`client_token` from a WSGI environ, for the fast path too."""
    token = environ.get("HTTP_X_VAULT_TOKEN")
    if token:
        return str(token)
    auth = str(environ.get("HTTP_AUTHORIZATION", ""))
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return None


def list_requested() -> bool:
    """A LIST: the ``LIST`` method, or ``GET`` with ``?list=true`` (Vault
    takes ``true`` and ``1``), as clients send it when they cannot send LIST."""
    if request.method == "LIST":
        return True
    return request.method == "GET" and request.args.get("list", "").lower() in ("true", "1")


def body_bytes() -> bytes:
    """The raw request body, refused with 413 when over ``max_request_size``.

    Werkzeug enforces the limit against ``Content-Length`` only: a chunked
    body (no length) is silently cut at the limit by newer releases and not
    limited at all by older ones (bookworm's 2.2).  So without a length the
    body is read here, from the server's de-chunked input, one byte past the
    limit to tell "exactly at" from "over"."""
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if request.content_length is not None or not limit:
        return request.get_data(cache=True)
    cached: bytes | None = g.get("vaultd_body")
    if cached is None:
        cached = request.environ["wsgi.input"].read(limit + 1)
        if len(cached) > limit:
            raise PayloadTooLarge("request body too large")
        g.vaultd_body = cached
    return cached


MAX_JSON_DEPTH = 500
"""How deeply a request body may nest.  Vault's listener default
(``max_json_depth``) is 500, and it leaves half of Python's default recursion
limit (1000) to the frames below a handler: every recursive walk a body
meets later (``json.dumps`` for storage and answers, KV's merge patch and
subkeys) takes one frame per level.  Without a bound, ``json.loads`` itself
fails deep down with a RecursionError (a 500 on unauthenticated
``sys/unseal``), and a body just under that limit could still blow up a
later walk after something was stored."""

_SURROGATE = re.compile("[\ud800-\udfff]")


def _refuse_constant(name: str) -> Any:
    """``NaN``, ``Infinity`` and ``-Infinity`` are not JSON; Go refuses them."""
    raise ValueError(f"invalid character {name[0]!r} looking for beginning of value")


def _finite_float(text: str) -> float:
    """A JSON number too large for a double (``1e400``) would become
    ``inf``, which no JSON encoder may write back: refuse it."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def decode_json(raw: bytes | str) -> Any:
    """Parse a request body strictly enough that whatever is accepted can be
    stored and sent back: at most :data:`MAX_JSON_DEPTH` levels, no lone
    surrogates (``"\\ud800"``: Python would keep one, and UTF-8 cannot encode
    it; Go would turn it into U+FFFD, silently changing the data, so it is a
    400 here), no ``NaN``/``Infinity`` literals and no number beyond a
    double.  Errors are BadRequest with Vault's prefix."""
    try:
        body = json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise BadRequest(f"failed to decode JSON input: nested deeper than {MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"failed to decode JSON input: {_short(exc)}") from None
    _check_tree(body)
    return body


def _check_tree(body: Any) -> None:
    """Depth and lone surrogates, walked with a list rather than recursion."""
    pending: list[tuple[Any, int]] = [(body, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, str):
            if not value.isascii() and _SURROGATE.search(value):
                raise BadRequest("failed to decode JSON input: a string holds a lone UTF-16 surrogate")
            continue
        if not isinstance(value, (dict, list)):
            continue
        if depth > MAX_JSON_DEPTH:
            raise BadRequest(f"failed to decode JSON input: nested deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(value, dict):
            pending.extend((key, depth) for key in value)
            pending.extend((item, depth + 1) for item in value.values())
        else:
            pending.extend((item, depth + 1) for item in value)


def json_body() -> dict[str, Any]:
    """The request body as a JSON object; empty body means ``{}``."""
    raw = body_bytes()
    if not raw or not raw.strip():
        return {}
    body = decode_json(raw)
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise BadRequest("failed to decode JSON input: the body must be a JSON object")
    return body


def _short(exc: Exception) -> str:
    # json's messages quote position only, never the input, so they are safe.
    return str(exc).split("\n")[0][:200]


class Field:
    """One accepted body field: its type and whether it must be present.

    ``nullable`` is kept for the schemas that spell it out; every field
    now accepts null as "not given" (see :func:`fields`)."""

    def __init__(self, kind: type | tuple[type, ...], *, required: bool = False, nullable: bool = False) -> None:
        self.kind = kind
        self.required = required
        self.nullable = nullable


IGNORED = "vaultd_ignored_fields"
"""``flask.g`` attribute: body fields the endpoint did not recognise."""


def fields(body: Mapping[str, Any], schema: Mapping[str, Field], *, report: bool = True) -> dict[str, Any]:
    """Check ``body`` against ``schema``: a wrong type (or an integer beyond
    int64, which Vault cannot decode) is a 400 naming the field, before
    anything is changed.

    Unknown fields are ignored, as Vault ignores them: clients send extras
    (node-vault puts ``mount_point`` in the body of ``sys/mounts/<path>``)
    and rely on that.  Vault names them in the answer's ``warnings``; with
    ``report`` they are noted on ``flask.g`` for the app's ``after_request``
    hook (:func:`add_ignored_warning`), so no handler has to carry them.
    Nested objects Vault decodes into structs (a mount's ``config``) pass
    ``report=False``: Vault drops unknown keys there without a word."""
    unknown = sorted(set(body) - set(schema))
    if unknown and report:
        noted: list[str] = g.setdefault(IGNORED, [])
        noted.extend(name for name in unknown if name not in noted)
    out: dict[str, Any] = {}
    for name, spec in schema.items():
        # JSON null is "not given", as Vault's decoding into Go structs makes
        # it: clients such as hvac send ``"description": null`` for every
        # argument the caller left out.
        if body.get(name) is None:
            if spec.required:
                raise BadRequest(f"missing required field {name!r}")
            continue
        value = body[name]
        kinds = spec.kind if isinstance(spec.kind, tuple) else (spec.kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise BadRequest(f"field {name!r} has the wrong type: expected {_names(kinds)}")
        if not isinstance(value, kinds):
            raise BadRequest(f"field {name!r} has the wrong type: expected {_names(kinds)}")
        if isinstance(value, int) and not isinstance(value, bool) and not _INT64_MIN <= value <= _INT64_MAX:
            raise BadRequest(
                f'error converting input for field "{name}": '
                "'' cannot parse value as 'int': strconv.ParseInt: value out of range"
            )
        out[name] = value
    return out


def add_ignored_warning(response: FlaskResponse) -> FlaskResponse:
    """``after_request``: name the ignored fields in the answer's
    ``warnings``, where and as Vault does.  Vault adds the warning only to
    a response its handler returned: a 204 stays a 204 without it, an error
    carries only its errors, and the raw ``sys/`` handlers (``sys/init``,
    ``sys/unseal``...), which have no envelope, ignore extras silently."""
    names: list[str] | None = g.pop(IGNORED, None)
    if not names or response.status_code != 200 or response.mimetype != _JSON:
        return response
    try:
        body = json.loads(response.get_data())
    except ValueError:
        return response
    if not isinstance(body, dict) or "warnings" not in body or "request_id" not in body:
        return response
    body["warnings"] = [*(body["warnings"] or []), ignored_warning(sorted(names))]
    response.set_data(encode_json(body))
    return response


def _names(kinds: tuple[type, ...]) -> str:
    words = {int: "integer", str: "string", bool: "boolean", list: "array", dict: "object", float: "number"}
    return " or ".join(words.get(k, k.__name__) for k in kinds)


def encode_json(body: Any) -> bytes:
    """Every JSON body vaultd sends, on either path (see fastpath.py)."""
    return (json.dumps(body) + "\n").encode()


def raw_json(body: Any, status: int = 200) -> FlaskResponse:
    return FlaskResponse(encode_json(body), status=status, mimetype=_JSON)


def no_content() -> FlaskResponse:
    return FlaskResponse(status=204)


def envelope_body(
    data: Any = None,
    *,
    auth: dict[str, Any] | None = None,
    warnings: list[str] | None = None,
    lease_duration: int = 0,
    renewable: bool = False,
    legacy_top_level: bool = False,
) -> dict[str, Any]:
    """Vault's success body.  ``legacy_top_level`` also copies ``data``'s keys
    to the top level, which several ``sys/`` endpoints still do in Vault."""
    body: dict[str, Any] = {}
    if legacy_top_level and isinstance(data, dict):
        body.update(data)
    body.update(
        {
            "request_id": uuid4_str(),
            "lease_id": "",
            "renewable": renewable,
            "lease_duration": lease_duration,
            "data": data,
            "wrap_info": None,
            "warnings": warnings,
            "auth": auth,
        }
    )
    return body


def envelope(data: Any = None, *, status: int = 200, **fields: Any) -> FlaskResponse:
    """:func:`envelope_body` (``fields`` are its keywords) as a response."""
    return raw_json(envelope_body(data, **fields), status)


def logical_body(response: Response) -> tuple[int, Any]:
    """The status and JSON body (None: no body, 204) for an engine's
    :class:`vaultd.logical.Response`."""
    if response.raw is not None:
        return response.status or 200, response.raw
    if response.data is None and response.auth is None and not response.warnings:
        if not response.status or response.status == 204:
            return 204, None
        return response.status, {"errors": []}
    body = envelope_body(
        response.data,
        auth=response.auth,
        warnings=response.warnings,
        lease_duration=response.lease_duration,
        renewable=response.renewable,
    )
    return response.status or 200, body


def logical(response: Response) -> FlaskResponse:
    """Encode an engine's :class:`vaultd.logical.Response`."""
    status, body = logical_body(response)
    return no_content() if body is None else raw_json(body, status)


def error(status: int, messages: list[str]) -> FlaskResponse:
    return raw_json({"errors": messages}, status)


def log_error(exc: VaultError) -> None:
    """Log a failure that is the server's fault; 503 (sealed) is not."""
    if exc.status >= 500 and exc.status != 503:
        log.error("request failed: %s", "; ".join(exc.messages))


def log_unexpected(exc: BaseException) -> None:
    """Log the type and where, never the exception text: it may quote a
    value from the request."""
    where = "".join(traceback.format_list(traceback.extract_tb(exc.__traceback__)))
    log.error("internal error handling request: %s at\n%s", type(exc).__name__, where.rstrip())


def system_backend_gate() -> None:
    """Vault's order for its system backend (``sys/mounts``, ``auth/token``
    and the like): a body that is not JSON is a 400 (413 when too large),
    then a sealed server is a 503, then a missing or bad token is a 403, and
    only then are the fields checked.  Registered as ``before_request`` on
    those blueprints so a sealed server never reports a field error and an
    anonymous caller learns nothing about what the endpoint accepts."""
    if request.method in ("POST", "PUT"):
        json_body()
    # The handler authenticates again and spends the token's use there.
    core().authenticate(client_token(), spend_use=False)


def core() -> Core:
    """The worker's core, which ``create_app`` registered on the app."""
    return current_app.extensions["vaultd.core"]
