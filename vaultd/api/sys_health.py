"""``sys/health`` and ``sys/leader``: unauthenticated, answered while sealed."""

from __future__ import annotations

import time

from flask import Blueprint, request
from flask.typing import ResponseReturnValue

from vaultd import __version__
from vaultd.api.http import core, raw_json
from vaultd.errors import BadRequest

bp = Blueprint("sys_health", __name__)


def _code(name: str, default: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        code = int(raw)
    except ValueError:
        raise BadRequest(f"unable to parse {name} query parameter: {raw!r} is not an integer") from None
    if code < 1 or code > 599:
        raise BadRequest(f"{name} must be an HTTP status code")
    return code


@bp.route("/v1/sys/health", methods=["GET", "HEAD"])
def health() -> ResponseReturnValue:
    lifecycle = core().lifecycle
    lifecycle.refresh()
    config = lifecycle.seal_config()
    sealed = lifecycle.barrier.sealed
    body = {
        "initialized": config is not None,
        "sealed": sealed,
        "standby": sealed,
        "replication_performance_mode": "unknown" if sealed else "disabled",
        "replication_dr_mode": "unknown" if sealed else "disabled",
        "server_time_utc": int(time.time()),
        "version": __version__,
    }
    if config is not None and not sealed:
        body["cluster_name"] = config.cluster_name
        body["cluster_id"] = config.cluster_id
    if config is None:
        status = _code("uninitcode", 501)
    elif sealed:
        status = _code("sealedcode", 503)
    else:
        status = _code("activecode", 200)
    # Validate the codes this single node never uses, so a typo is still a 400.
    _code("standbycode", 429)
    _code("drsecondarycode", 472)
    _code("performancestandbycode", 473)
    if request.method == "HEAD":
        return "", status
    return raw_json(body, status)


@bp.get("/v1/sys/leader")
def leader() -> ResponseReturnValue:
    # A single node without HA: the shape OpenBao gives when HA is off.
    return raw_json({"ha_enabled": False})
