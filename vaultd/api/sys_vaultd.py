"""vaultd's own endpoints for the unsealer agent, under ``sys/vaultd/``
(a path Vault does not use).

``state`` tells the agent which run of the daemon it talks to (``boot_id``)
and whether an operator sealed it; ``stored-key`` hands it the KMS-wrapped
unseal key; ``unseal`` takes the key back once KMS has unwrapped it.  The
stored key and the unseal call are served to loopback clients only: the
plaintext key must never cross a network in clear.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress

from flask import Blueprint, request
from flask.typing import ResponseReturnValue

from vaultd.api.http import Field, core, fields, json_body, raw_json
from vaultd.errors import BadRequest, PermissionDenied

bp = Blueprint("sys_vaultd", __name__)


def _require_local() -> None:
    remote = request.remote_addr or ""
    if remote == "" or remote.startswith("unix"):
        return  # a unix socket: only local processes can reach it
    try:
        if ipaddress.ip_address(remote).is_loopback:
            return
    except ValueError:
        pass
    raise PermissionDenied("this endpoint is served to local clients only")


@bp.get("/v1/sys/vaultd/state")
def state() -> ResponseReturnValue:
    c = core()
    lifecycle = c.lifecycle
    lifecycle.refresh()
    config = lifecycle.seal_config()
    return raw_json(
        {
            "boot_id": c.shared.boot_id,
            "initialized": config is not None,
            "sealed": lifecycle.barrier.sealed,
            "seal_type": config.type if config else lifecycle.seal_type,
            "sealed_by_operator": c.shared.sealed_by_operator,
        }
    )


@bp.get("/v1/sys/vaultd/stored-key")
def stored_key() -> ResponseReturnValue:
    _require_local()
    return raw_json(core().lifecycle.stored_key().to_dict())


@bp.route("/v1/sys/vaultd/unseal", methods=["PUT", "POST"])
def unseal() -> ResponseReturnValue:
    _require_local()
    body = fields(json_body(), {"key": Field(str, required=True), "boot_id": Field(str, required=True)})
    try:
        key = base64.b64decode(body["key"], validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("'key' must be base64") from None
    return raw_json(core().lifecycle.submit_unwrapped_key(key, body["boot_id"]))
