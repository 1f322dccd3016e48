"""Response wrapping over HTTP: the ``X-Vault-Wrap-TTL`` header on any
request, and ``sys/wrapping/wrap|unwrap|lookup|rewrap``.

The header is read before the request is served (a policy's
``min_wrapping_ttl``/``max_wrapping_ttl`` apply to it in the one
authorisation gate) and the response is wrapped after it, whatever handler
made it, so every endpoint that answers data or auth can be wrapped."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, request
from flask.typing import ResponseReturnValue

from vaultd.api.http import (
    Field,
    client_token,
    core,
    envelope,
    envelope_body,
    error,
    fields,
    json_body,
    log_error,
    raw_json,
)
from vaultd.core.wrapping import requested_wrap_ttl
from vaultd.durations import parse_duration
from vaultd.errors import BadRequest, VaultError
from vaultd.logical import Operation

bp = Blueprint("sys_wrapping", __name__)
_TOKEN = {"token": Field(str)}
_HEADER = "X-Vault-Wrap-TTL"


def read_wrap_ttl() -> None:
    """``before_request``: the asked wrap TTL, for the policy check and for
    :func:`wrap_response`."""
    raw = request.headers.get(_HEADER)
    if raw is None or raw.strip() == "":
        requested_wrap_ttl.set(None)
        return
    try:
        ttl = parse_duration(raw.strip(), field="wrap TTL")
    except VaultError:
        requested_wrap_ttl.set(None)
        raise BadRequest("error parsing wrap TTL header") from None
    if ttl <= 0:
        requested_wrap_ttl.set(None)
        raise BadRequest("wrap TTL must be positive")
    requested_wrap_ttl.set(ttl)


def wrap_response(response: Response) -> Response:
    """``after_request``: replace a successful answer that carries data or
    auth by its wrapping token."""
    ttl = requested_wrap_ttl.get()
    requested_wrap_ttl.set(None)
    if ttl is None or response.status_code != 200 or response.mimetype != "application/json":
        return response
    try:
        body = json.loads(response.get_data())
    except ValueError:
        return response
    if not isinstance(body, dict) or body.get("wrap_info") or (body.get("data") is None and body.get("auth") is None):
        return response
    path = request.path.removeprefix("/v1/")
    wrapped_accessor = (body.get("auth") or {}).get("accessor", "") if path.startswith("auth/token/create") else ""
    try:
        info = core().wrapping.wrap(body, ttl, path, wrapped_accessor=wrapped_accessor)
    except VaultError as exc:  # sealed meanwhile, say: Vault's error, never the unwrapped answer
        log_error(exc)
        return error(exc.status, exc.messages)
    wrapped = envelope_body(None)
    wrapped["wrap_info"] = info
    return raw_json(wrapped)


@bp.route("/v1/sys/wrapping/wrap", methods=["POST", "PUT"])
def wrap() -> ResponseReturnValue:
    c = core()
    c.check(client_token(), "sys/wrapping/wrap", Operation.UPDATE)
    if requested_wrap_ttl.get() is None:
        raise BadRequest("endpoint requires response wrapping to be used")
    return envelope(json_body())


def _target(body: dict[str, Any], endpoint: str) -> str | None:
    """The wrapping token: the ``token`` field (a third party, who needs a
    grant on the endpoint), or the client token itself (its own policy
    grants the unwrap; its one use is spent by the unwrap, not here)."""
    c = core()
    token = body.get("token")
    if token:
        c.check(client_token(), endpoint, Operation.UPDATE)
        return str(token)
    c.check(client_token(), endpoint, Operation.UPDATE, spend_use=False)
    return client_token()


@bp.route("/v1/sys/wrapping/unwrap", methods=["POST", "PUT"])
def unwrap() -> ResponseReturnValue:
    body = fields(json_body(), _TOKEN)
    wrapped = core().wrapping.unwrap(_target(body, "sys/wrapping/unwrap"))
    return raw_json(wrapped)


@bp.route("/v1/sys/wrapping/lookup", methods=["POST", "PUT", "GET"])
def lookup() -> ResponseReturnValue:
    """Unauthenticated, as in Vault: it tells only when and where a token
    was made, so its holder can check it before trusting it."""
    core().begin()
    body = fields(json_body(), _TOKEN) if request.method != "GET" else {"token": request.args.get("token")}
    if not body.get("token"):
        raise BadRequest('missing "token" value in input')
    return envelope(core().wrapping.lookup(body["token"]))


@bp.route("/v1/sys/wrapping/rewrap", methods=["POST", "PUT"])
def rewrap() -> ResponseReturnValue:
    body = fields(json_body(), _TOKEN)
    info = core().wrapping.rewrap(_target(body, "sys/wrapping/rewrap"))
    wrapped = envelope_body(None)
    wrapped["wrap_info"] = info
    return raw_json(wrapped)
