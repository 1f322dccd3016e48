"""Everything under ``/v1/`` that is not a system endpoint: routed to the
secrets engine mounted at the path."""

from __future__ import annotations

from flask import Blueprint, request
from flask.typing import ResponseReturnValue

from vaultd.api.http import client_token, core, json_body, logical
from vaultd.errors import BadRequest, MethodNotAllowed
from vaultd.logical import Operation, Request

bp = Blueprint("logical", __name__)

_METHODS = ["GET", "POST", "PUT", "DELETE", "LIST", "PATCH"]


def _operation() -> Operation:
    method = request.method
    if method == "GET":
        return Operation.LIST if request.args.get("list", "").lower() in ("true", "1") else Operation.READ
    if method in ("POST", "PUT"):
        return Operation.UPDATE
    if method == "DELETE":
        return Operation.DELETE
    if method == "LIST":
        return Operation.LIST
    if method == "PATCH":
        content_type = (request.mimetype or "").lower()
        if content_type != "application/merge-patch+json":
            raise BadRequest(
                "PATCH requires Content-Type application/merge-patch+json, got " + (content_type or "none")
            )
        return Operation.PATCH
    raise MethodNotAllowed("unsupported operation")


@bp.route("/v1/<path:path>", methods=_METHODS)
def handle(path: str) -> ResponseReturnValue:
    operation = _operation()
    if operation is Operation.LIST and not path.endswith("/"):
        path += "/"
    data = json_body() if operation in (Operation.UPDATE, Operation.PATCH) else {}
    query = {k: v for k, v in request.args.items() if k != "list"}
    response = core().handle(client_token(), Request(operation=operation, path=path, data=data, query=query))
    return logical(response)
