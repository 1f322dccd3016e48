"""``sys/policy``, ``sys/policies/acl``, ``sys/capabilities*`` and
``sys/internal/ui/resultant-acl``: ACL policies over HTTP.

Both policy paths exist in Vault: ``sys/policy`` is the old one (its read
answers ``rules``, its list adds ``policies`` beside ``keys``), and
``sys/policies/acl`` the current one; the CLIs and hvac use either.
"""

from __future__ import annotations

import base64
import binascii

from flask import Blueprint, request
from flask.typing import ResponseReturnValue

from vaultd.api.http import (
    Field,
    client_token,
    core,
    envelope,
    fields,
    json_body,
    list_requested,
    no_content,
    system_backend_gate,
)
from vaultd.core.policy_store import ROOT, normalise_name
from vaultd.errors import BadRequest, NotFound
from vaultd.logical import Operation

bp = Blueprint("sys_policy", __name__)
bp.before_request(system_backend_gate)

_WRITE = {"policy": Field(str), "rules": Field(str)}
_PATHS = {"path": Field((str, list)), "paths": Field((str, list)), "token": Field(str), "accessor": Field(str)}


def _list(legacy: bool) -> ResponseReturnValue:
    c = core()
    c.check(client_token(), "sys/policy" if legacy else "sys/policies/acl", Operation.LIST)
    keys = [*c.policies.names(), ROOT]
    data = {"keys": keys, "policies": keys} if legacy else {"keys": keys}
    return envelope(data, legacy_top_level=legacy)


@bp.route("/v1/sys/policy", methods=["GET", "LIST"])
def list_legacy() -> ResponseReturnValue:
    return _list(legacy=True)


@bp.route("/v1/sys/policies/acl", methods=["GET", "LIST"])
def list_acl() -> ResponseReturnValue:
    if not list_requested():
        raise NotFound("unsupported path")
    return _list(legacy=False)


def _one(name: str, legacy: bool) -> ResponseReturnValue:
    c = core()
    name = normalise_name(name)
    base = "sys/policy" if legacy else "sys/policies/acl"
    warnings: list[str] = []
    if request.method in ("PUT", "POST"):
        c.check(client_token(), f"{base}/{name}", Operation.UPDATE)
        body = fields(json_body(), _WRITE)
        text = body.get("policy") or ""
        if not text and legacy and body.get("rules"):
            text = body["rules"]
            warnings.append("'rules' is deprecated, please use 'policy' instead")
        if not text:
            raise BadRequest("'policy' parameter not supplied or empty")
        text = _maybe_base64(text)
        c.policies.put(name, text)
        return envelope(None, warnings=warnings) if warnings else no_content()
    if request.method == "DELETE":
        c.check(client_token(), f"{base}/{name}", Operation.DELETE)
        c.policies.delete(name)
        return no_content()
    c.check(client_token(), f"{base}/{name}", Operation.READ)
    policy = c.policies.get(name)
    if policy is None:
        raise NotFound()
    data = {"name": policy.name, "rules" if legacy else "policy": policy.raw}
    return envelope(data, legacy_top_level=legacy)


def _maybe_base64(text: str) -> str:
    """Vault accepts the policy base64-encoded as well (the UI sends that)."""
    try:
        decoded = base64.b64decode(text, validate=True)
        return decoded.decode("utf-8")
    except (binascii.Error, ValueError):
        return text


@bp.route("/v1/sys/policy/<path:name>", methods=["GET", "PUT", "POST", "DELETE"])
def one_legacy(name: str) -> ResponseReturnValue:
    return _one(name, legacy=True)


@bp.route("/v1/sys/policies/acl/<path:name>", methods=["GET", "PUT", "POST", "DELETE"])
def one_acl(name: str) -> ResponseReturnValue:
    return _one(name, legacy=False)


def _paths(body: dict[str, object]) -> list[str]:
    raw = body.get("paths") or body.get("path")
    if isinstance(raw, str):
        raw = [p for p in raw.split(",") if p]
    if not raw:
        raise BadRequest("paths must be supplied")
    if not all(isinstance(p, str) for p in raw):  # type: ignore[union-attr]
        raise BadRequest("paths must be strings")
    return [str(p) for p in raw]  # type: ignore[union-attr]


def _capabilities(kind: str) -> ResponseReturnValue:
    c = core()
    body = fields(json_body(), _PATHS)
    paths = _paths(body)
    result = c.capabilities(client_token(), kind, paths, token=body.get("token"), accessor=body.get("accessor"))
    return envelope(result, legacy_top_level=True)


@bp.route("/v1/sys/capabilities", methods=["PUT", "POST"])
def capabilities() -> ResponseReturnValue:
    return _capabilities("token")


@bp.route("/v1/sys/capabilities-self", methods=["PUT", "POST"])
def capabilities_self() -> ResponseReturnValue:
    return _capabilities("self")


@bp.route("/v1/sys/capabilities-accessor", methods=["PUT", "POST"])
def capabilities_accessor() -> ResponseReturnValue:
    return _capabilities("accessor")


@bp.get("/v1/sys/internal/ui/resultant-acl")
def resultant_acl() -> ResponseReturnValue:
    return envelope(core().resultant_acl(client_token()))
