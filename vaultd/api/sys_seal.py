"""``sys/seal-status``, ``sys/unseal``, ``sys/seal``."""

from __future__ import annotations

import base64
import binascii

from flask import Blueprint
from flask.typing import ResponseReturnValue

from vaultd.api.http import Field, client_token, core, fields, json_body, no_content, raw_json
from vaultd.errors import BadRequest

bp = Blueprint("sys_seal", __name__)

_UNSEAL_SCHEMA = {"key": Field(str), "reset": Field(bool), "migrate": Field(bool)}


def decode_key(text: str) -> bytes:
    """A key share as Vault accepts it: hex first, then standard base64."""
    text = text.strip()
    try:
        return bytes.fromhex(text)
    except ValueError:
        pass
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("'key' must be a valid hex or base64 string") from None


@bp.get("/v1/sys/seal-status")
def seal_status() -> ResponseReturnValue:
    return raw_json(core().lifecycle.seal_status())


@bp.route("/v1/sys/unseal", methods=["PUT", "POST"])
def unseal() -> ResponseReturnValue:
    body = fields(json_body(), _UNSEAL_SCHEMA)
    if body.get("reset"):
        return raw_json(core().lifecycle.reset_progress())
    if not body.get("key"):
        raise BadRequest("'key' must be specified in request body as JSON, or 'reset' set to true")
    key = decode_key(body["key"])
    if len(key) < 16:
        raise BadRequest("invalid key: key is shorter than minimum 16 bytes")
    if len(key) > 33:
        raise BadRequest("invalid key: key is longer than maximum 33 bytes")
    return raw_json(core().lifecycle.submit_share(key, migrate=bool(body.get("migrate"))))


@bp.route("/v1/sys/seal", methods=["PUT", "POST"])
def seal() -> ResponseReturnValue:
    fields(json_body(), {})
    core().seal(client_token())
    return no_content()
