"""``auth/token/*``: the token auth method."""

from __future__ import annotations

from typing import Any

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
from vaultd.auth.tokenparams import check_cidrs
from vaultd.core.token_roles import TokenRole
from vaultd.core.tokens import TokenEntry
from vaultd.durations import parse_duration
from vaultd.engines.framework import FieldData, FieldSpec
from vaultd.errors import BadRequest, MethodNotAllowed, NotFound, PermissionDenied
from vaultd.logical import Operation

bp = Blueprint("auth_token", __name__)
bp.before_request(system_backend_gate)

_CREATE_SCHEMA = {
    "id": Field(str),
    "role_name": Field(str),
    "policies": Field(list, nullable=True),
    "meta": Field(dict, nullable=True),
    "no_parent": Field(bool),
    "no_default_policy": Field(bool),
    "renewable": Field(bool),
    "ttl": Field((str, int)),
    "type": Field(str),
    "explicit_max_ttl": Field((str, int)),
    "display_name": Field(str),
    "num_uses": Field(int),
    "period": Field((str, int)),
    "entity_alias": Field(str),
    "lease": Field((str, int)),
}


def _create_params(body: dict[str, Any]) -> dict[str, Any]:
    params = fields(body, _CREATE_SCHEMA)
    if params.get("id"):
        raise BadRequest("custom token ids are not supported by vaultd")
    if "period" in params:
        params["period"] = parse_duration(params["period"], field="period")
    if params.get("type", "service") not in ("service", "default"):
        raise BadRequest("only service tokens are supported by vaultd")
    policies = params.get("policies") or []
    if not all(isinstance(p, str) and p for p in policies):
        raise BadRequest("policies must be a list of non-empty strings")
    params["policies"] = [p.strip().lower() for p in policies]
    meta = params.get("meta") or {}
    if not all(isinstance(v, str) for v in meta.values()):
        raise BadRequest("meta values must be strings")
    for name in ("ttl", "explicit_max_ttl"):
        if name in params:
            params[name] = parse_duration(params[name], field=name)
    if "lease" in params and "ttl" not in params:
        params["ttl"] = parse_duration(params.pop("lease"), field="lease")
    if params.get("num_uses", 0) < 0:
        raise BadRequest("number of uses cannot be negative")
    return params


def _create(path: str, *, orphan: bool, role_name: str = "") -> ResponseReturnValue:
    c = core()
    parent = c.check(client_token(), path, Operation.UPDATE)
    params = _create_params(json_body())
    role_name = role_name or params.pop("role_name", "")
    role = None
    if role_name:
        role = c.token_roles.get(role_name)
        if role is None:
            raise BadRequest(f"unknown role {role_name}")
    privileged = c.policies.acl(parent.policies).check(path, "update").sudo
    token, entry, warnings = c.tokens.mint(parent, params, orphan=orphan, role=role, privileged=privileged)
    return envelope(None, auth=entry.auth_block(token), warnings=warnings or None)


@bp.route("/v1/auth/token/create", methods=["POST", "PUT"])
def create() -> ResponseReturnValue:
    return _create("auth/token/create", orphan=False)


@bp.route("/v1/auth/token/create/<role_name>", methods=["POST", "PUT"])
def create_with_role(role_name: str) -> ResponseReturnValue:
    return _create(f"auth/token/create/{role_name}", orphan=False, role_name=role_name)


_ROLE_FIELDS: dict[str, FieldSpec] = {
    "allowed_policies": FieldSpec("lower_strings"),
    "disallowed_policies": FieldSpec("lower_strings"),
    "allowed_policies_glob": FieldSpec("lower_strings"),
    "disallowed_policies_glob": FieldSpec("lower_strings"),
    "orphan": FieldSpec("bool"),
    "renewable": FieldSpec("bool", default=True),
    "path_suffix": FieldSpec("string"),
    "token_period": FieldSpec("duration"),
    "period": FieldSpec("duration"),
    "token_explicit_max_ttl": FieldSpec("duration"),
    "explicit_max_ttl": FieldSpec("duration"),
    "token_bound_cidrs": FieldSpec("strings"),
    "bound_cidrs": FieldSpec("strings"),
    "token_no_default_policy": FieldSpec("bool"),
    "token_num_uses": FieldSpec("int"),
    "token_type": FieldSpec("string"),
    "allowed_entity_aliases": FieldSpec("strings"),
}
_ROLE_ALIASES = {"period": "token_period", "explicit_max_ttl": "token_explicit_max_ttl",
                 "bound_cidrs": "token_bound_cidrs"}


@bp.route("/v1/auth/token/roles", methods=["GET", "LIST"])
def list_roles() -> ResponseReturnValue:
    c = core()
    if not list_requested():
        raise MethodNotAllowed("unsupported operation")
    c.check(client_token(), "auth/token/roles", Operation.LIST)
    names = c.token_roles.names()
    if not names:
        raise NotFound()
    return envelope({"keys": names})


@bp.route("/v1/auth/token/roles/<role_name>", methods=["GET", "POST", "PUT", "DELETE"])
def role(role_name: str) -> ResponseReturnValue:
    c = core()
    path = f"auth/token/roles/{role_name}"
    if request.method == "GET":
        c.check(client_token(), path, Operation.READ)
        found = c.token_roles.get(role_name)
        if found is None:
            raise NotFound()
        return envelope(found.describe())
    if request.method == "DELETE":
        c.check(client_token(), path, Operation.DELETE)
        c.token_roles.delete(role_name)
        return no_content()
    existing = c.token_roles.get(role_name)
    c.check(client_token(), path, Operation.UPDATE if existing else Operation.CREATE)
    data = FieldData(json_body(), _ROLE_FIELDS)
    updated = existing or TokenRole(name=role_name)
    for name in _ROLE_FIELDS:
        target = _ROLE_ALIASES.get(name, name)
        if data.given(name) and not (name in _ROLE_ALIASES and data.given(target)):
            setattr(updated, target, data.get(name))
    if updated.token_bound_cidrs:
        check_cidrs(updated.token_bound_cidrs, "token_bound_cidrs")
    c.token_roles.put(updated)
    return no_content()


@bp.route("/v1/auth/token/accessors", methods=["GET", "LIST"])
def accessors() -> ResponseReturnValue:
    c = core()
    if not list_requested():
        raise MethodNotAllowed("unsupported operation")
    c.check(client_token(), "auth/token/accessors", Operation.LIST, sudo=True)
    return envelope({"keys": c.tokens.accessors()})


@bp.route("/v1/auth/token/create-orphan", methods=["POST", "PUT"])
def create_orphan() -> ResponseReturnValue:
    return _create("auth/token/create-orphan", orphan=True)


def _target() -> tuple[str, TokenEntry | None]:
    """The ``token`` of the body and its live entry (None: unknown, revoked
    or expired).  What "unknown" means is each endpoint's business: Vault
    answers 403 to a lookup, 400 to a renew and 204 to a revoke."""
    body = fields(json_body(), {"token": Field(str, required=True)})
    target = body["token"]
    return target, core().tokens.lookup(target)


@bp.get("/v1/auth/token/lookup-self")
def lookup_self() -> ResponseReturnValue:
    token = client_token()
    entry = core().check(token, "auth/token/lookup-self", Operation.READ)
    return envelope(entry.lookup_data(token or ""))


@bp.route("/v1/auth/token/lookup", methods=["POST", "PUT"])
def lookup() -> ResponseReturnValue:
    c = core()
    caller = client_token()
    entry = c.check(caller, "auth/token/lookup", Operation.UPDATE)
    body = fields(json_body(), {"token": Field(str)})
    target = body.get("token") or caller or ""
    if target != caller:  # no token in the body: Vault looks up the caller
        found = c.tokens.lookup(target)
        if found is None:
            raise PermissionDenied("bad token")
        entry = found
    return envelope(entry.lookup_data(target))


@bp.get("/v1/auth/token/lookup")
def lookup_get() -> ResponseReturnValue:
    # ``GET auth/token/lookup`` looks up the caller, but under the policy of
    # this path (read), not of lookup-self: the default policy has no say.
    token = client_token()
    entry = core().check(token, "auth/token/lookup", Operation.READ)
    return envelope(entry.lookup_data(token or ""))


@bp.route("/v1/auth/token/lookup-accessor", methods=["POST", "PUT"])
def lookup_accessor() -> ResponseReturnValue:
    c = core()
    c.check(client_token(), "auth/token/lookup-accessor", Operation.UPDATE)
    body = fields(json_body(), {"accessor": Field(str, required=True)})
    entry = c.tokens.lookup_accessor(body["accessor"])
    if entry is None:
        raise BadRequest("invalid accessor")
    return envelope(entry.lookup_data(""))


@bp.route("/v1/auth/token/revoke", methods=["POST", "PUT"])
def revoke() -> ResponseReturnValue:
    c = core()
    c.check(client_token(), "auth/token/revoke", Operation.UPDATE)
    _, entry = _target()
    if entry is not None:  # revoking what is already gone is done
        c.tokens.revoke(entry)
    return no_content()


@bp.route("/v1/auth/token/revoke-self", methods=["POST", "PUT"])
def revoke_self() -> ResponseReturnValue:
    c = core()
    entry = c.check(client_token(), "auth/token/revoke-self", Operation.UPDATE)
    c.tokens.revoke(entry)
    return no_content()


@bp.route("/v1/auth/token/revoke-accessor", methods=["POST", "PUT"])
def revoke_accessor() -> ResponseReturnValue:
    c = core()
    c.check(client_token(), "auth/token/revoke-accessor", Operation.UPDATE)
    body = fields(json_body(), {"accessor": Field(str, required=True)})
    entry = c.tokens.lookup_accessor(body["accessor"])
    if entry is None:
        return envelope(None, warnings=["No token found with this accessor"])
    c.tokens.revoke(entry)
    return no_content()


def _increment(body: dict[str, Any]) -> int:
    return parse_duration(body["increment"], field="increment") if "increment" in body else 0


@bp.route("/v1/auth/token/renew-self", methods=["POST", "PUT"])
def renew_self() -> ResponseReturnValue:
    c = core()
    token = client_token()
    entry = c.check(token, "auth/token/renew-self", Operation.UPDATE)
    body = fields(json_body(), {"increment": Field((str, int))})
    entry, warnings = c.tokens.renew(entry, _increment(body))
    return envelope(None, auth=entry.auth_block(token or ""), warnings=warnings or None)


@bp.route("/v1/auth/token/renew", methods=["POST", "PUT"])
def renew() -> ResponseReturnValue:
    c = core()
    c.check(client_token(), "auth/token/renew", Operation.UPDATE)
    body = fields(json_body(), {"token": Field(str, required=True), "increment": Field((str, int))})
    entry = c.tokens.lookup(body["token"])
    if entry is None:
        raise BadRequest("token not found")
    entry, warnings = c.tokens.renew(entry, _increment(body))
    return envelope(None, auth=entry.auth_block(body["token"]), warnings=warnings or None)
