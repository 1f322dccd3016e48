"""``sys/init``: is the server initialised, and initialise it."""

from __future__ import annotations

from flask import Blueprint
from flask.typing import ResponseReturnValue

from vaultd.api.http import Field, core, fields, json_body, raw_json
from vaultd.core.lifecycle import InitRequest
from vaultd.errors import BadRequest

bp = Blueprint("sys_init", __name__)

_SCHEMA = {
    "secret_shares": Field(int),
    "secret_threshold": Field(int),
    "recovery_shares": Field(int),
    "recovery_threshold": Field(int),
    "stored_shares": Field(int),
    "pgp_keys": Field(list, nullable=True),
    "recovery_pgp_keys": Field(list, nullable=True),
    "root_token_pgp_key": Field(str, nullable=True),
    "break_glass": Field(bool),
}


@bp.get("/v1/sys/init")
def init_status() -> ResponseReturnValue:
    return raw_json({"initialized": core().lifecycle.initialized})


@bp.route("/v1/sys/init", methods=["PUT", "POST"])
def initialise() -> ResponseReturnValue:
    body = fields(json_body(), _SCHEMA)
    if body.get("pgp_keys") or body.get("recovery_pgp_keys") or body.get("root_token_pgp_key"):
        raise BadRequest("PGP-encrypted key shares are not supported by vaultd")
    request = InitRequest(
        secret_shares=body.get("secret_shares", 0),
        secret_threshold=body.get("secret_threshold", 0),
        recovery_shares=body.get("recovery_shares", 0),
        recovery_threshold=body.get("recovery_threshold", 0),
        break_glass=body.get("break_glass", False),
        stored_shares=body.get("stored_shares", 0),
    )
    # Which share counts an auto seal takes (stored_shares 1, secret_* 1 or
    # omitted) is the lifecycle's rule; only Vault's defaults are set here.
    if core().lifecycle.seal is not None and not request.recovery_shares and not request.recovery_threshold:
        request.recovery_shares, request.recovery_threshold = 5, 3
    return raw_json(core().init(request))
