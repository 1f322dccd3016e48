"""Everything under ``/v1/`` that no system handler took: routed to the
secrets engine mounted at the path, or refused the way Vault refuses it.

Flask sends a request here when no specific rule matches its path *and*
method, so this is also where a wrong method on a system path lands.  Vault
answers those in two ways, and clients branch on the difference:

- the raw HTTP handlers (``sys/init``, ``sys/seal-status``, ``sys/unseal``,
  ``sys/seal``, ``sys/health``, ``sys/leader``; vaultd's own ``sys/vaultd/``)
  check the method first: 405 whether sealed or not, with or without a token;
- the system backend (``sys/mounts``, ``auth/token/...``) is a logical
  backend: sealed is 503, then a missing or bad token is 403, and only then
  an unknown path is 404 and a wrong method 405.
"""

from __future__ import annotations

from flask import Blueprint, current_app, request
from flask.typing import ResponseReturnValue
from werkzeug.routing import Map

from vaultd.api.http import client_token, core, json_body, list_requested, logical
from vaultd.errors import MethodNotAllowed, NotFound, VaultError
from vaultd.logical import Operation, Request

bp = Blueprint("logical", __name__)

_METHODS = ["GET", "POST", "PUT", "DELETE", "LIST", "PATCH"]
SYSTEM_ROUTES = "vaultd.system_routes"
"""``app.extensions`` key: a Map of every rule except this catch-all."""
RAW_BLUEPRINTS = frozenset({"sys_init", "sys_seal", "sys_health", "sys_vaultd"})
SYSTEM_PREFIXES = ("sys/", "auth/token/")
MERGE_PATCH = "application/merge-patch+json"


def system_routes(rules: Map) -> Map:
    """A copy of the app's rules without the catch-all, to ask "is this a
    system path, and which methods does it take?"."""
    return Map([rule.empty() for rule in rules.iter_rules() if rule.endpoint not in ("logical.handle", "static")])


def _refuse_system_path(path: str) -> None:
    """Raise the error Vault gives for ``path`` if it is a system path that
    reached the catch-all; return if it is an ordinary logical path."""
    if not path.startswith(SYSTEM_PREFIXES):
        return  # every system rule lives under these prefixes
    adapter = current_app.extensions[SYSTEM_ROUTES].bind("localhost")
    allowed = list(adapter.allowed_methods(request.path))
    if allowed:
        endpoint, _ = adapter.match(request.path, method=allowed[0])
        if str(endpoint).split(".")[0] in RAW_BLUEPRINTS:
            raise MethodNotAllowed()
        core().authenticate(client_token())
        raise MethodNotAllowed("unsupported operation")
    core().authenticate(client_token())
    raise NotFound("unsupported path")


def refuse_options() -> None:
    """``before_request`` for the whole app: Flask would answer OPTIONS
    itself with a 200 and an ``Allow`` header; Vault serves no OPTIONS
    (without CORS), so the raw handlers say 405 and everything else is
    sealed (503) or an unsupported operation (405)."""
    if request.method != "OPTIONS":
        return
    endpoint = request.url_rule.endpoint if request.url_rule is not None else ""
    if str(endpoint).split(".")[0] in RAW_BLUEPRINTS:
        raise MethodNotAllowed()
    core().begin()
    raise MethodNotAllowed("unsupported operation")


def _operation() -> Operation:
    method = request.method
    if list_requested():
        return Operation.LIST
    if method == "GET":
        return Operation.READ
    if method in ("POST", "PUT"):
        return Operation.UPDATE
    if method == "DELETE":
        return Operation.DELETE
    if method == "PATCH":
        content_type = (request.mimetype or "").lower()
        if content_type != MERGE_PATCH:
            raise VaultError(
                f"PATCH requires Content-Type of {MERGE_PATCH}, provided {content_type or 'none'}", status=415
            )
        return Operation.PATCH
    raise MethodNotAllowed("unsupported operation")


@bp.route("/v1/<path:path>", methods=_METHODS)
def handle(path: str) -> ResponseReturnValue:
    _refuse_system_path(path)
    operation = _operation()
    if operation is Operation.LIST and not path.endswith("/"):
        path += "/"
    data = json_body() if operation in (Operation.UPDATE, Operation.PATCH) else {}
    query = {k: v for k, v in request.args.items() if k != "list"}
    routed = Request(operation=operation, path=path, data=data, query=query, remote_addr=request.remote_addr or "")
    response = core().handle(client_token(), routed)
    return logical(response)
