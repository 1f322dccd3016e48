"""``sys/auth``: enable, list, read, tune and disable auth methods.

The request shapes are ``sys/mounts``' (Vault shares them), so the field
schemas and TTL parsing come from there."""

from __future__ import annotations

from typing import Any

from flask import Blueprint
from flask.typing import ResponseReturnValue

from vaultd.api.http import client_token, core, envelope, no_content, system_backend_gate
from vaultd.api.sys_mounts import enable_request, tune_request
from vaultd.core.router import normalise_mount_path
from vaultd.errors import BadRequest
from vaultd.logical import Operation

bp = Blueprint("sys_auth", __name__)
bp.before_request(system_backend_gate)


@bp.get("/v1/sys/auth")
def list_auth() -> ResponseReturnValue:
    return envelope(core().list_auth(client_token()), legacy_top_level=True)


@bp.route("/v1/sys/auth/<path:path>", methods=["POST", "PUT"])
def enable(path: str) -> ResponseReturnValue:
    if path.rstrip("/").endswith("/tune"):
        return tune(path.rstrip("/")[: -len("/tune")])
    body, ttls = enable_request()
    core().enable_auth(client_token(), normalise_mount_path(path), body["type"], body.get("description", ""), ttls)
    return no_content()


@bp.delete("/v1/sys/auth/<path:path>")
def disable(path: str) -> ResponseReturnValue:
    core().disable_auth(client_token(), normalise_mount_path(path))
    return no_content()


@bp.get("/v1/sys/auth/<path:path>")
def read(path: str) -> ResponseReturnValue:
    mount_path = normalise_mount_path(path)
    c = core()
    if mount_path.endswith("/tune/"):
        entry = c.auth_entry(client_token(), mount_path[: -len("tune/")])
        data: dict[str, Any] = {
            "default_lease_ttl": entry.default_lease_ttl or c.settings.default_lease_ttl,
            "description": entry.description,
            "force_no_cache": False,
            "max_lease_ttl": entry.max_lease_ttl or c.settings.max_lease_ttl,
            "token_type": "default-service",
        }
        return envelope(data, legacy_top_level=True)
    c.check(client_token(), f"sys/auth/{mount_path}", Operation.READ, sudo=True)
    methods = c.list_auth(client_token())
    if mount_path not in methods:
        raise BadRequest(f"No auth engine at {mount_path}")
    return envelope(methods[mount_path], legacy_top_level=True)


def tune(path: str) -> ResponseReturnValue:
    core().tune_auth(client_token(), normalise_mount_path(path), tune_request(options=False))
    return no_content()
