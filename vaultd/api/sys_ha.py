"""HA on the HTTP side: standbys redirect, ``sys/leader``, ``sys/step-down``.

A standby answers only what is about the node itself (health, seal status,
leader, unseal, metrics, the agent channel); everything else gets a
``307 Temporary Redirect`` to the active node's ``api_addr`` with the same
path and query, as Vault does when request forwarding is not used.  The
``vault`` and ``bao`` CLIs and hvac (requests) follow a 307 with the same
method and body.  The role comes from the shared seal state, written by the
master's HA thread (:mod:`vaultd.core.ha`); a node whose lease deadline has
passed is not active, whatever the thread last wrote.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from flask import Blueprint
from flask.typing import ResponseReturnValue

from vaultd.api.http import client_token, core, encode_json, no_content, raw_json
from vaultd.core.seal_state import HA_ACTIVE, HA_OFF, SharedSealState
from vaultd.logical import Operation

bp = Blueprint("sys_ha", __name__)

NODE_PATHS = frozenset({
    "/v1/sys/health", "/v1/sys/seal-status", "/v1/sys/leader", "/v1/sys/unseal", "/v1/sys/metrics",
    "/v1/sys/init",
})
"""Answered by every node itself, standby or not."""
NODE_PREFIXES = ("/v1/sys/vaultd/",)
"""vaultd's agent channel: a node's own agent unseals that node."""
NO_ACTIVE = "local node not active but active cluster node not found"

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class StandbyGate:
    """WSGI middleware in front of the whole app when HA is enabled."""

    def __init__(self, app: WsgiApp, shared: SharedSealState) -> None:
        self.app = app
        self.shared = shared

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        state = self.shared.ha()
        if state.active(time.monotonic()) or not self.shared.unsealed:
            return self.app(environ, start_response)
        path = str(environ.get("PATH_INFO", ""))
        if path in NODE_PATHS or path.startswith(NODE_PREFIXES) or not path.startswith("/v1/"):
            return self.app(environ, start_response)
        if state.role in (HA_OFF, HA_ACTIVE) or not state.api_addr or state.leader == "":
            # Just unsealed (the HA thread has not decided yet), past its own
            # lease deadline (cut from the database: fenced), or no node
            # holds the lock: nobody to send the client to.
            body = encode_json({"errors": [NO_ACTIVE]})
            start_response("503 Service Unavailable", [("Content-Type", "application/json"),
                                                       ("Content-Length", str(len(body))),
                                                       ("Retry-After", "1")])
            return [body]
        location = state.api_addr.rstrip("/") + quote(path, safe="/:@!$&'()*+,;=-._~")
        query = str(environ.get("QUERY_STRING", ""))
        if query:
            location += "?" + query
        start_response("307 Temporary Redirect", [("Location", location), ("Content-Length", "0"),
                                                  ("Cache-Control", "no-store")])
        return [b""]


def leader_body(shared: SharedSealState) -> dict[str, Any]:
    """Vault's ``sys/leader`` shape for an HA node."""
    state = shared.ha()
    is_self = state.active(time.monotonic())
    since = (datetime.fromtimestamp(state.since, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
             if is_self and state.since else "0001-01-01T00:00:00Z")
    known = state.role != HA_OFF and bool(state.leader)
    return {
        "ha_enabled": True,
        "is_self": is_self,
        "active_time": since,
        "leader_address": state.api_addr if known else "",
        "leader_cluster_address": state.cluster_addr if known else "",
        "performance_standby": False,
        "performance_standby_last_remote_wal": 0,
    }


@bp.route("/v1/sys/step-down", methods=["PUT", "POST"])
def step_down() -> ResponseReturnValue:
    """The active node gives the lock up and stays away from it for a few
    seconds (``STEP_DOWN_HOLD``), so another node takes over.  Reaches only
    an active node: a standby redirected the request."""
    the_core = core()
    the_core.check(client_token(), "sys/step-down", Operation.UPDATE, sudo=True)
    if not the_core.settings.ha_enabled:
        return raw_json({"errors": ["this node is not in an HA cluster (storage ha_enabled is off)"]}, 400)
    the_core.shared.request_step_down()
    return no_content()
