"""rekey over HTTP: ``sys/rekey/{init,update,verify}`` (the unseal keys, or
under an auto seal the barrier's wrapped key) and
``sys/rekey-recovery-key/{init,update,verify}`` (the recovery keys).

Vault's shape: unauthenticated (the key shares are the authority), plain
JSON, not the logical envelope.  hvac calls these, and so does OpenBao's
``bao operator rekey`` (it decodes the answers as plain JSON too; OpenBao
only serves them when its listener sets ``disable_unauthed_rekey_endpoints
= false``).  The ceremony itself is ``vaultd.core.rekey``.
"""

from __future__ import annotations

from flask import Blueprint, request
from flask.typing import ResponseReturnValue

from vaultd.api.http import Field, core, fields, json_body, no_content, raw_json
from vaultd.api.sys_seal import decode_key
from vaultd.core.rekey import Rekey
from vaultd.errors import BadRequest

bp = Blueprint("sys_rekey", __name__)

_INIT = {
    "secret_shares": Field(int),
    "secret_threshold": Field(int),
    "pgp_keys": Field(list),
    "backup": Field(bool),
    "require_verification": Field(bool),
}
_KEY = {"key": Field(str), "nonce": Field(str)}


def _ceremony() -> Rekey:
    c = core()
    return Rekey(c.lifecycle, c.shared)


def _key_and_nonce() -> tuple[bytes, str]:
    body = fields(json_body(), _KEY)
    if not body.get("key"):
        raise BadRequest("'key' must be specified in request body as JSON")
    return decode_key(body["key"]), body.get("nonce") or ""


def _init(recovery: bool) -> ResponseReturnValue:
    rekey = _ceremony()
    if request.method == "GET":
        return raw_json(rekey.status(recovery))
    if request.method == "DELETE":
        rekey.cancel(recovery)
        return no_content()
    body = fields(json_body(), _INIT)
    return raw_json(rekey.start(
        recovery,
        secret_shares=body.get("secret_shares") or 0,
        secret_threshold=body.get("secret_threshold") or 0,
        require_verification=bool(body.get("require_verification")),
        pgp_keys=body.get("pgp_keys") or None,
        backup=bool(body.get("backup")),
    ))


def _update(recovery: bool) -> ResponseReturnValue:
    key, nonce = _key_and_nonce()
    rekey = _ceremony()
    result = rekey.update(recovery, key, nonce)
    return raw_json(result if result is not None else rekey.status(recovery))


def _verify(recovery: bool) -> ResponseReturnValue:
    rekey = _ceremony()
    if request.method == "GET":
        return raw_json(rekey.verify_status(recovery))
    if request.method == "DELETE":
        return raw_json(rekey.restart_verification(recovery))
    key, nonce = _key_and_nonce()
    result = rekey.verify(recovery, key, nonce)
    return raw_json(result if result is not None else rekey.verify_status(recovery))


@bp.route("/v1/sys/rekey/init", methods=["GET", "PUT", "POST", "DELETE"])
def init() -> ResponseReturnValue:
    return _init(False)


@bp.route("/v1/sys/rekey/update", methods=["PUT", "POST"])
def update() -> ResponseReturnValue:
    return _update(False)


@bp.route("/v1/sys/rekey/verify", methods=["GET", "PUT", "POST", "DELETE"])
def verify() -> ResponseReturnValue:
    return _verify(False)


@bp.route("/v1/sys/rekey-recovery-key/init", methods=["GET", "PUT", "POST", "DELETE"])
def recovery_init() -> ResponseReturnValue:
    return _init(True)


@bp.route("/v1/sys/rekey-recovery-key/update", methods=["PUT", "POST"])
def recovery_update() -> ResponseReturnValue:
    return _update(True)


@bp.route("/v1/sys/rekey-recovery-key/verify", methods=["GET", "PUT", "POST", "DELETE"])
def recovery_verify() -> ResponseReturnValue:
    return _verify(True)
