"""generate-root over HTTP, in both dialects clients speak.

- Vault's ``sys/generate-root/attempt`` and ``/update``: unauthenticated
  (the key shares are the authority), plain JSON; hvac and the ``vault``
  CLI call these.
- OpenBao's ``sys/generate-root-token/attempt`` and ``/update``, and
  ``sys/decode-token``: the same operations behind a token that may
  ``update`` (``sudo`` too) the path, answered in the logical envelope;
  the ``bao`` CLI calls these.

The ceremony itself is ``vaultd.core.generate_root``.
"""

from __future__ import annotations

from flask import Blueprint, request
from flask.typing import ResponseReturnValue

from vaultd.api.http import Field, client_token, core, envelope, fields, json_body, no_content, raw_json
from vaultd.api.sys_seal import decode_key
from vaultd.core.generate_root import RootGeneration, decode_token
from vaultd.errors import BadRequest
from vaultd.logical import Operation

bp = Blueprint("sys_generate_root", __name__)

_START = {"otp": Field(str), "pgp_key": Field(str)}
_UPDATE = {"key": Field(str), "nonce": Field(str)}
_DECODE = {"encoded_token": Field(str), "otp": Field(str)}


def _ceremony() -> RootGeneration:
    return core().generate_root


def _start() -> dict[str, object]:
    body = fields(json_body(), _START)
    return _ceremony().start(otp=body.get("otp") or "", pgp_key=body.get("pgp_key") or "")


def _update() -> dict[str, object]:
    body = fields(json_body(), _UPDATE)
    if not body.get("key"):
        raise BadRequest("'key' must be specified in request body as JSON")
    return _ceremony().update(decode_key(body["key"]), body.get("nonce") or "")


# -- Vault: unauthenticated, plain JSON ------------------------------------------


@bp.route("/v1/sys/generate-root/attempt", methods=["GET", "PUT", "POST", "DELETE"])
def attempt() -> ResponseReturnValue:
    if request.method == "GET":
        return raw_json(_ceremony().status())
    if request.method == "DELETE":
        _ceremony().cancel()
        return no_content()
    return raw_json(_start())


@bp.route("/v1/sys/generate-root/update", methods=["PUT", "POST"])
def update() -> ResponseReturnValue:
    return raw_json(_update())


# -- OpenBao: behind a sudo token, in the envelope -------------------------------------


def _gate(path: str, operation: Operation) -> None:
    core().check(client_token(), path, operation, sudo=True)


@bp.route("/v1/sys/generate-root-token/attempt", methods=["GET", "PUT", "POST", "DELETE"])
def token_attempt() -> ResponseReturnValue:
    operation = {"GET": Operation.READ, "DELETE": Operation.DELETE}.get(request.method, Operation.UPDATE)
    _gate("sys/generate-root-token/attempt", operation)
    if request.method == "GET":
        return envelope(_ceremony().status())
    if request.method == "DELETE":
        _ceremony().cancel()
        return no_content()
    return envelope(_start())


@bp.route("/v1/sys/generate-root-token/update", methods=["PUT", "POST"])
def token_update() -> ResponseReturnValue:
    _gate("sys/generate-root-token/update", Operation.UPDATE)
    return envelope(_update())


@bp.route("/v1/sys/decode-token", methods=["PUT", "POST"])
def decode() -> ResponseReturnValue:
    """Unauthenticated in OpenBao too: it only undoes an XOR the caller can undo."""
    body = fields(json_body(), _DECODE)
    if not body.get("encoded_token") or not body.get("otp"):
        raise BadRequest("provided 'encoded_token' or 'otp' is empty")
    return envelope({"token": decode_token(body["encoded_token"], body["otp"])})
