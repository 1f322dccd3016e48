"""``sys/health`` and ``sys/leader``: unauthenticated, answered while sealed."""

from __future__ import annotations

import re
import time

from flask import Blueprint, request
from flask.typing import ResponseReturnValue

from vaultd import __version__
from vaultd.api.http import core, raw_json
from vaultd.api.sys_ha import leader_body
from vaultd.errors import BadRequest

bp = Blueprint("sys_health", __name__)
_DIGITS = re.compile(r"[+-]?[0-9]{1,18}")

_DEFAULT_CODES = {
    "activecode": 200,
    "standbycode": 429,
    "drsecondarycode": 472,
    "performancestandbycode": 473,
    "sealedcode": 503,
    "uninitcode": 501,
}
"""Vault's defaults; a node without HA never uses the standby ones, but
they are still validated."""


def _code(name: str, default: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    # Go's strconv.Atoi: ASCII digits only.  Python's int() would also take
    # "٢٠٠", "2_00" and " 200 ", and refuses over 4300 digits with its own error.
    if not _DIGITS.fullmatch(raw):
        raise BadRequest(f"unable to parse {name} query parameter: {raw[:40]!r} is not an integer")
    code = int(raw)
    if code < 100 or code > 599:
        raise BadRequest(f"{name} must be an HTTP status code")
    return code


@bp.route("/v1/sys/health", methods=["GET", "HEAD"])
def health() -> ResponseReturnValue:
    # Every override is parsed up front, as Vault does: a malformed one is a
    # 400 whatever state the server is in, so a probe's typo shows at once
    # instead of on the day the node first seals.
    codes = {name: _code(name, default) for name, default in _DEFAULT_CODES.items()}
    lifecycle = core().lifecycle
    lifecycle.refresh()
    config = lifecycle.seal_config()
    sealed = lifecycle.barrier.sealed
    the_core = core()
    standby = sealed or (the_core.settings.ha_enabled and not the_core.shared.ha().active(time.monotonic()))
    body = {
        "initialized": config is not None,
        "sealed": sealed,
        "standby": standby,
        "replication_performance_mode": "unknown" if sealed else "disabled",
        "replication_dr_mode": "unknown" if sealed else "disabled",
        "server_time_utc": int(time.time()),
        "version": __version__,
    }
    if config is not None and not sealed:
        body["cluster_name"] = config.cluster_name
        body["cluster_id"] = config.cluster_id
    if config is None:
        status = codes["uninitcode"]
    elif sealed:
        status = codes["sealedcode"]
    elif standby and not _flag("standbyok"):
        status = codes["standbycode"]
    else:
        status = codes["activecode"]
    if request.method == "HEAD":
        return "", status
    return raw_json(body, status)


@bp.get("/v1/sys/leader")
def leader() -> ResponseReturnValue:
    the_core = core()
    if not the_core.settings.ha_enabled:
        # A single node without HA: the shape OpenBao gives when HA is off.
        return raw_json({"ha_enabled": False})
    return raw_json(leader_body(the_core.shared))


def _flag(name: str) -> bool:
    """A boolean query parameter the way Go's strconv.ParseBool reads it."""
    return request.args.get(name, "").lower() in ("1", "t", "true")
