"""vaultd's own endpoints for the unsealer agent, under ``sys/vaultd/``
(a path Vault does not use).

``state`` tells the agent which run of the daemon it talks to (``boot_id``)
and whether an operator sealed it; ``stored-key`` hands it the KMS-wrapped
unseal key; ``unseal`` takes the key back once KMS has unwrapped it.

The stored key and the unseal call are served on the agent's unix socket
only (see :mod:`vaultd.agent_channel`), to a peer whose uid the kernel
vouches for (``SO_PEERCRED``): the daemon's own uid, root, or an id the
``unsealer`` stanza names.  On TCP they answer 403, unless the config names a
TCP agent address explicitly; then loopback clients are served, as before,
and the daemon warned at start that this is weaker.

The client socket is read from ``environ["gunicorn.socket"]``, which
gunicorn's workers (and vaultd's own worker class) put in every request's
environ; without it (a test client) the request counts as TCP.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
import os
import socket
from typing import Any

from flask import Blueprint, current_app, request
from flask.typing import ResponseReturnValue

from vaultd.agent_channel import AgentChannel, peer_credentials
from vaultd.api.http import Field, core, fields, json_body, raw_json
from vaultd.core import seal_migration
from vaultd.errors import BadRequest, PermissionDenied
from vaultd.logging import log_event

bp = Blueprint("sys_vaultd", __name__)
log = logging.getLogger("vaultd.api")

CHANNEL_CONFIG_KEY = "VAULTD_AGENT_CHANNEL"
"""Where the server puts the :class:`AgentChannel` in the Flask app's config."""


def _client_socket() -> socket.socket | None:
    sock: Any = request.environ.get("gunicorn.socket")
    return sock if isinstance(sock, socket.socket) else None


def _require_agent() -> None:
    """Serve the key endpoints to the agent only (see the module docstring)."""
    channel: AgentChannel | None = current_app.config.get(CHANNEL_CONFIG_KEY)
    sock = _client_socket()
    if sock is not None and sock.family == socket.AF_UNIX:
        try:
            pid, uid, gid = peer_credentials(sock)
        except OSError:
            pid, uid, gid = 0, -1, -1
        allowed = channel.daemon_allows(uid, gid) if channel is not None else uid in (0, _own_uid())
        if allowed:
            return
        _refused("unix", f"uid {uid} may not use the agent socket", peer_uid=uid, peer_gid=gid, peer_pid=pid)
        raise PermissionDenied("permission denied: this uid may not use the agent endpoints")
    if channel is not None and channel.tcp_allowed:
        remote = request.remote_addr or ""
        try:
            if ipaddress.ip_address(remote).is_loopback:
                return
        except ValueError:
            pass
        _refused("tcp", f"{remote or 'an unknown address'} is not a loopback client")
        raise PermissionDenied("this endpoint is served to local clients only")
    _refused("tcp", f"{request.remote_addr or 'a client'} asked over TCP")
    raise PermissionDenied("this endpoint is served on the unsealer agent's unix socket only")


def _own_uid() -> int:
    return os.geteuid()


def _refused(transport: str, why: str, **fields: object) -> None:
    log_event(log, "agent_channel_refused", "refused %s %s to a caller: %s", request.method, request.path, why,
              peer_side="agent", transport=transport, **fields)


@bp.get("/v1/sys/vaultd/state")
def state() -> ResponseReturnValue:
    c = core()
    lifecycle = c.lifecycle
    lifecycle.refresh()
    config = lifecycle.seal_config()
    migration = lifecycle.migration()
    return raw_json(
        {
            "boot_id": c.shared.boot_id,
            "initialized": config is not None,
            "sealed": lifecycle.barrier.sealed,
            "seal_type": config.type if config else lifecycle.seal_type,
            "sealed_by_operator": c.shared.sealed_by_operator,
            # A seal migration under way: the agent stands aside (from
            # shamir) or unwraps with the old, disabled seal (from awskms).
            "migration": migration is not None,
            "migration_from": migration.from_type if migration else "",
            "migration_to": migration.to_type if migration else "",
            "migration_key_held": seal_migration.key_held(lifecycle) if migration else False,
        }
    )


@bp.get("/v1/sys/vaultd/stored-key")
def stored_key() -> ResponseReturnValue:
    _require_agent()
    return raw_json(core().lifecycle.stored_key().to_dict())


@bp.route("/v1/sys/vaultd/unseal", methods=["PUT", "POST"])
def unseal() -> ResponseReturnValue:
    _require_agent()
    body = fields(json_body(), {"key": Field(str, required=True), "boot_id": Field(str, required=True)})
    try:
        key = base64.b64decode(body["key"], validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("'key' must be base64") from None
    return raw_json(core().lifecycle.submit_unwrapped_key(key, body["boot_id"]))
