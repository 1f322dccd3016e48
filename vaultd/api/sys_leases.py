"""``sys/leases/*`` (and the old ``sys/renew``, ``sys/revoke``): the leases
of tokens; see ``core/leases.py``."""

from __future__ import annotations

from flask import Blueprint
from flask.typing import ResponseReturnValue

from vaultd.api.http import (
    Field,
    client_token,
    core,
    envelope,
    envelope_body,
    fields,
    json_body,
    list_requested,
    no_content,
    raw_json,
    system_backend_gate,
)
from vaultd.core.leases import Leases, lease_id
from vaultd.durations import parse_duration
from vaultd.errors import BadRequest, MethodNotAllowed, NotFound
from vaultd.logical import Operation

bp = Blueprint("sys_leases", __name__)
bp.before_request(system_backend_gate)
_LEASE = {"lease_id": Field(str), "increment": Field((str, int)), "sync": Field(bool)}


def _leases() -> Leases:
    return Leases(core().tokens)


def _lease(body: dict[str, object], url_part: str | None = None) -> str:
    lease = url_part or body.get("lease_id")
    if not lease or not isinstance(lease, str):
        raise BadRequest("lease_id must be specified")
    return lease


@bp.route("/v1/sys/leases/lookup", methods=["PUT", "POST"])
def lookup() -> ResponseReturnValue:
    body = fields(json_body(), _LEASE)
    core().check(client_token(), "sys/leases/lookup", Operation.UPDATE)
    return envelope(_leases().lookup(_lease(body)))


@bp.route("/v1/sys/leases/lookup/<path:prefix>", methods=["GET", "LIST"])
@bp.route("/v1/sys/leases/lookup/", methods=["GET", "LIST"], defaults={"prefix": ""})
def list_leases(prefix: str) -> ResponseReturnValue:
    if not list_requested():
        raise MethodNotAllowed("unsupported operation")
    core().check(client_token(), f"sys/leases/lookup/{prefix}", Operation.LIST, sudo=True)
    prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
    keys = _leases().list(prefix)
    if not keys:
        raise NotFound()
    return envelope({"keys": keys})


@bp.route("/v1/sys/leases/renew", methods=["PUT", "POST"])
@bp.route("/v1/sys/leases/renew/<path:url_lease>", methods=["PUT", "POST"])
@bp.route("/v1/sys/renew", methods=["PUT", "POST"])
@bp.route("/v1/sys/renew/<path:url_lease>", methods=["PUT", "POST"])
def renew(url_lease: str | None = None) -> ResponseReturnValue:
    body = fields(json_body(), _LEASE)
    core().check(client_token(), "sys/leases/renew", Operation.UPDATE)
    increment = parse_duration(body["increment"], field="increment") if "increment" in body else 0
    entry, warnings = _leases().renew(_lease(body, url_lease), increment)
    answer = envelope_body(None, lease_duration=entry.ttl, renewable=entry.renewable, warnings=warnings or None)
    answer["lease_id"] = lease_id(entry)
    return raw_json(answer)


@bp.route("/v1/sys/leases/revoke", methods=["PUT", "POST"])
@bp.route("/v1/sys/leases/revoke/<path:url_lease>", methods=["PUT", "POST"])
@bp.route("/v1/sys/revoke", methods=["PUT", "POST"])
@bp.route("/v1/sys/revoke/<path:url_lease>", methods=["PUT", "POST"])
def revoke(url_lease: str | None = None) -> ResponseReturnValue:
    body = fields(json_body(), _LEASE)
    core().check(client_token(), "sys/leases/revoke", Operation.UPDATE)
    _leases().revoke(_lease(body, url_lease))
    return no_content()


@bp.route("/v1/sys/leases/revoke-prefix/<path:prefix>", methods=["PUT", "POST"])
@bp.route("/v1/sys/revoke-prefix/<path:prefix>", methods=["PUT", "POST"])
def revoke_prefix(prefix: str) -> ResponseReturnValue:
    fields(json_body(), {"sync": Field(bool)})
    core().check(client_token(), f"sys/leases/revoke-prefix/{prefix}", Operation.UPDATE, sudo=True)
    _leases().revoke_prefix(prefix)
    return no_content()


@bp.route("/v1/sys/leases/tidy", methods=["PUT", "POST"])
def tidy() -> ResponseReturnValue:
    c = core()
    c.check(client_token(), "sys/leases/tidy", Operation.UPDATE, sudo=True)
    c.tokens.tidy()
    return envelope(None, warnings=["Tidy operation successfully started. Any information from the operation "
                                    "will be printed to Vault's server logs."]), 202
