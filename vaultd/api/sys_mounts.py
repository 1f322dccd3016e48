"""``sys/mounts``, ``sys/auth``, ``sys/internal/ui/mounts``, ``sys/rotate``,
``sys/key-status``: the system backend's administrative endpoints."""

from __future__ import annotations

from typing import Any

from flask import Blueprint
from flask.typing import ResponseReturnValue

from vaultd.api.http import (
    Field,
    client_token,
    core,
    envelope,
    fields,
    json_body,
    no_content,
    system_backend_gate,
)
from vaultd.core.router import SYSTEM_MOUNT, MountEntry, normalise_mount_path
from vaultd.durations import parse_duration
from vaultd.errors import BadRequest
from vaultd.logical import Operation

bp = Blueprint("sys_mounts", __name__)
bp.before_request(system_backend_gate)

_CONFIG_SCHEMA = {
    "default_lease_ttl": Field((str, int)),
    "max_lease_ttl": Field((str, int)),
    "force_no_cache": Field(bool),
    "audit_non_hmac_request_keys": Field(list),
    "audit_non_hmac_response_keys": Field(list),
    "listing_visibility": Field(str),
    "passthrough_request_headers": Field(list),
    "allowed_response_headers": Field(list),
    "plugin_version": Field(str),
    "options": Field(dict, nullable=True),
    "token_type": Field(str),
    "user_lockout_config": Field(dict, nullable=True),
    "delegated_auth_accessors": Field(list, nullable=True),
}
_ENABLE_SCHEMA = {
    "type": Field(str, required=True),
    "description": Field(str),
    "config": Field(dict),
    "options": Field(dict, nullable=True),
    "local": Field(bool),
    "seal_wrap": Field(bool),
    "external_entropy_access": Field(bool),
    "plugin_name": Field(str),
    "plugin_version": Field(str),
}
_TUNE_SCHEMA = {
    "default_lease_ttl": Field((str, int)),
    "max_lease_ttl": Field((str, int)),
    "description": Field(str),
    "options": Field(dict),
    "force_no_cache": Field(bool),
    "audit_non_hmac_request_keys": Field(list),
    "audit_non_hmac_response_keys": Field(list),
    "listing_visibility": Field(str),
    "passthrough_request_headers": Field(list),
    "allowed_response_headers": Field(list),
    "plugin_version": Field(str),
}


def _string_map(value: dict[str, Any] | None, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, item in (value or {}).items():
        if not isinstance(item, (str, int)) or isinstance(item, bool):
            raise BadRequest(f"{what}.{key} must be a string")
        out[str(key)] = str(item)
    return out


def _ttl_config(body: dict[str, Any], *, enabling: bool = False) -> dict[str, int]:
    """The TTLs as seconds.  Enabling names the bad one as Vault does
    ("unable to parse max TTL of ..."); tuning gives the bare reason."""
    out: dict[str, int] = {}
    for name, what in (("default_lease_ttl", "default TTL"), ("max_lease_ttl", "max TTL")):
        if name in body:
            try:
                out[name] = parse_duration(body[name], field=name)
            except BadRequest as exc:
                if not enabling:
                    raise
                raise BadRequest(f"unable to parse {what} of {body[name]}: {exc.messages[0]}") from None
    return out


@bp.get("/v1/sys/mounts")
def list_mounts() -> ResponseReturnValue:
    return envelope(core().list_mounts(client_token()), legacy_top_level=True)


@bp.route("/v1/sys/mounts/<path:path>", methods=["POST", "PUT"])
def enable_mount(path: str) -> ResponseReturnValue:
    if path.rstrip("/").endswith("/tune"):
        # Vault's own routing gives ``<mount>/tune`` to tuning, not mounting.
        return tune_mount(path.rstrip("/")[: -len("/tune")])
    mount_path = normalise_mount_path(path)
    body, ttls = enable_request()
    core().enable_mount(
        client_token(),
        mount_path,
        body["type"],
        body.get("description", ""),
        _string_map(body.get("options"), "options"),
        ttls,
    )
    return no_content()


def enable_request() -> tuple[dict[str, Any], dict[str, int]]:
    """The body of an enable (``sys/mounts/<path>`` and ``sys/auth/<path>``
    take the same one) and its config's TTLs in seconds."""
    body = fields(json_body(), _ENABLE_SCHEMA)
    config = fields(body.get("config") or {}, _CONFIG_SCHEMA, report=False)
    return body, _ttl_config(config, enabling=True)


def tune_request(*, options: bool) -> dict[str, Any]:
    """What a tune (of a mount or an auth method) changes; ``options`` only
    where the target has them (secrets engines)."""
    body = fields(json_body(), _TUNE_SCHEMA)
    changes: dict[str, Any] = _ttl_config(body)
    if "description" in body:
        changes["description"] = body["description"]
    if options and "options" in body:
        changes["options"] = _string_map(body["options"], "options")
    return changes


@bp.delete("/v1/sys/mounts/<path:path>")
def disable_mount(path: str) -> ResponseReturnValue:
    core().disable_mount(client_token(), normalise_mount_path(path))
    return no_content()


@bp.get("/v1/sys/mounts/<path:path>")
def read_mount(path: str) -> ResponseReturnValue:
    mount_path = normalise_mount_path(path)
    if mount_path.endswith("/tune/"):
        return read_tune(mount_path[: -len("tune/")])
    entry = core().mount_entry(client_token(), mount_path)
    data = entry.describe()
    data["deprecation_status"] = "supported"
    return envelope(data, legacy_top_level=True)


def read_tune(mount_path: str) -> ResponseReturnValue:
    c = core()
    entry: MountEntry = c.mount_entry(client_token(), mount_path)
    data = {
        "default_lease_ttl": entry.default_lease_ttl or c.settings.default_lease_ttl,
        "description": entry.description,
        "force_no_cache": False,
        "max_lease_ttl": entry.max_lease_ttl or c.settings.max_lease_ttl,
        "options": dict(entry.options) or None,
    }
    return envelope(data, legacy_top_level=True)


def tune_mount(path: str) -> ResponseReturnValue:
    core().tune_mount(client_token(), normalise_mount_path(path), tune_request(options=True))
    return no_content()


@bp.get("/v1/sys/internal/ui/mounts/<path:path>")
def ui_mount(path: str) -> ResponseReturnValue:
    entry = core().mount_for_ui(client_token(), path)
    data = entry.describe()
    data["path"] = entry.path
    data["deprecation_status"] = "supported"
    return envelope(data)


@bp.get("/v1/sys/internal/ui/mounts")
def ui_mounts() -> ResponseReturnValue:
    c = core()
    mounts = c.list_mounts(client_token())
    return envelope({"secret": mounts, "auth": c.list_auth(client_token())})


@bp.route("/v1/sys/rotate", methods=["POST", "PUT"])
def rotate() -> ResponseReturnValue:
    fields(json_body(), {})
    c = core()
    c.check(client_token(), "sys/rotate", Operation.UPDATE, sudo=True)
    c.lifecycle.rotate()
    return no_content()


@bp.get("/v1/sys/key-status")
def key_status() -> ResponseReturnValue:
    c = core()
    c.check(client_token(), "sys/key-status", Operation.READ)
    return envelope(c.lifecycle.key_status(), legacy_top_level=True)


__all__ = ["SYSTEM_MOUNT", "bp"]
