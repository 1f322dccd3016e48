"""``sys/audit`` (list, enable, disable audit devices; ``sudo``) and
``sys/audit-hash/<path>``: decode, call the core's audit table, encode."""

from __future__ import annotations

from typing import Any

from flask import Blueprint
from flask.typing import ResponseReturnValue

from vaultd.api.http import Field, client_token, core, envelope, fields, json_body, no_content, system_backend_gate
from vaultd.core.router import normalise_mount_path
from vaultd.errors import BadRequest

bp = Blueprint("sys_audit", __name__)
bp.before_request(system_backend_gate)

_ENABLE_SCHEMA = {
    "type": Field(str, required=True),
    "description": Field(str),
    "options": Field(dict, nullable=True),
    "local": Field(bool),
}


def _option_text(name: str, value: Any) -> str:
    """Vault's options are a map of strings; numbers and booleans are
    taken in their JSON spelling, anything nested is refused."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise BadRequest(f"option {name!r} must be a string")


@bp.get("/v1/sys/audit")
def list_devices() -> ResponseReturnValue:
    return envelope(core().audit.list(client_token()), legacy_top_level=True)


@bp.route("/v1/sys/audit/<path:path>", methods=["POST", "PUT"])
def enable(path: str) -> ResponseReturnValue:
    body = fields(json_body(), _ENABLE_SCHEMA)
    options = {str(k): _option_text(str(k), v) for k, v in (body.get("options") or {}).items() if v is not None}
    core().audit.enable(client_token(), normalise_mount_path(path), body["type"], body.get("description", ""),
                        options, bool(body.get("local", False)))
    return no_content()


@bp.delete("/v1/sys/audit/<path:path>")
def disable(path: str) -> ResponseReturnValue:
    core().audit.disable(client_token(), normalise_mount_path(path))
    return no_content()


@bp.route("/v1/sys/audit-hash/<path:path>", methods=["POST", "PUT"])
def audit_hash(path: str) -> ResponseReturnValue:
    body = fields(json_body(), {"input": Field(str)})
    digest = core().audit.hash(client_token(), normalise_mount_path(path), body.get("input", ""))
    return envelope({"hash": digest}, legacy_top_level=True)
