"""``GET /v1/sys/metrics``: Vault's JSON summary, or ``?format=prometheus``.

As in Vault: a token whose policy allows ``read`` on ``sys/metrics`` is
needed (root, or a policy that names the path), unless the listener the
request came in on has ``telemetry { unauthenticated_metrics_access = true }``;
the Prometheus text is served only when the top-level ``telemetry`` block
enables it (``prometheus_retention_time`` above 0), and errors about the
format are ``text/plain`` 400s, not JSON ones, because that is what Vault
answers there and what scrapers show.

The counts come from every worker (:mod:`vaultd.metrics`); the gauges are read
here, in the worker that is scraped, from the shared seal state and, at most
once per :data:`COUNTS_TTL` per worker, from the token store.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, current_app, request
from flask.typing import ResponseReturnValue

from vaultd import metrics
from vaultd.api.http import client_token, core, encode_json
from vaultd.config import Config
from vaultd.core.core import Core
from vaultd.errors import VaultError
from vaultd.logical import Operation

bp = Blueprint("sys_metrics", __name__)

ACCESS_CONFIG_KEY = "vaultd.metrics_access"
COUNTS_TTL = 30.0
"""Seconds a worker reuses its token and lease counts: counting decrypts
every token entry, which is a scrape's job, not every scrape's."""
_PROMETHEUS = "prometheus"
_OPENMETRICS = "application/openmetrics-text"
_PROMETHEUS_SCHEMA = "prometheus/telemetry"


@dataclass(frozen=True)
class MetricsAccess:
    """What the config says about ``sys/metrics``.  The default (no config:
    a test app) is Vault's with no telemetry block: token needed, no
    Prometheus text."""

    prometheus: bool = False
    open_listeners: tuple[tuple[str, int], ...] = ()
    """(host, port) of the listeners with unauthenticated access."""

    @classmethod
    def from_config(cls, config: Config) -> MetricsAccess:
        open_listeners = []
        for listener in config.listeners:
            if listener.unauthenticated_metrics_access:
                host, _, port = listener.address.rpartition(":")
                open_listeners.append((host.strip("[]"), int(port)))
        return cls(config.telemetry.prometheus_retention_time > 0, tuple(open_listeners))

    def is_open(self, environ: dict[str, Any]) -> bool:
        """Whether the request came in on a listener that lets anyone read
        the metrics: judged by the socket it arrived on, never by a header."""
        if not self.open_listeners:
            return False
        sock = environ.get("gunicorn.socket")
        if not isinstance(sock, socket.socket) or sock.family not in (socket.AF_INET, socket.AF_INET6):
            return False
        host, port = sock.getsockname()[:2]
        return any(port == want_port and want_host in (host, "", "0.0.0.0", "::")
                   for want_host, want_port in self.open_listeners)


def _access() -> MetricsAccess:
    access = current_app.config.get(ACCESS_CONFIG_KEY)
    return access if isinstance(access, MetricsAccess) else MetricsAccess()


def _text(status: int, body: str, content_type: str = "text/plain") -> Response:
    return Response(body, status=status, content_type=content_type)


def _format() -> str:
    requested = request.args.get("format", "")
    if requested:
        return requested
    accept = request.headers.getlist("Accept")
    if accept and accept[0].startswith(_OPENMETRICS):
        return _PROMETHEUS
    if any(_PROMETHEUS_SCHEMA in value for value in accept):
        return _PROMETHEUS
    return ""


@bp.get("/v1/sys/metrics")
def read_metrics() -> ResponseReturnValue:
    access = _access()
    the_core = core()
    if not access.is_open(request.environ):
        the_core.check(client_token(), "sys/metrics", Operation.READ)
    wanted = _format()
    if wanted not in ("", _PROMETHEUS):
        return _text(400, f'metric response format "{wanted[:64]}" unknown')
    if wanted == _PROMETHEUS and not access.prometheus:
        return _text(400, "prometheus is not enabled")
    families = metrics.scrape(lambda: gauges(the_core))
    if wanted == _PROMETHEUS:
        return _text(200, metrics.prometheus_text(families).decode(), metrics.PROMETHEUS_CONTENT_TYPE)
    return Response(encode_json(metrics.json_summary(families)), status=200, content_type="application/json")


# -- gauges read at scrape time ---------------------------------------------------------------

_counts_lock = threading.Lock()
_counts: dict[int, tuple[float, int, tuple[int, int]]] = {}
"""id(core) -> (when, seal generation, (tokens, leases))."""


def _stored_counts(the_core: Core) -> tuple[int, int] | None:
    """Live tokens and, of those, the ones with a TTL (every lease in vaultd
    is a token's): None while sealed."""
    generation = the_core.shared.generation
    now = time.monotonic()
    with _counts_lock:
        cached = _counts.get(id(the_core))
        if cached is not None and cached[1] == generation and now - cached[0] < COUNTS_TTL:
            return cached[2]
        try:
            the_core.begin()
            entries = the_core.tokens.entries()
        except VaultError:
            return None
        wall = time.time()
        live = [entry for entry in entries if not entry.expired(wall)]
        counts = (len(live), sum(1 for entry in live if entry.expire_time is not None))
        _counts[id(the_core)] = (now, generation, counts)
        return counts


def gauges(the_core: Core) -> list[metrics.Gauge]:
    shared = the_core.shared
    unsealed = shared.unsealed
    out = [
        metrics.Gauge("vaultd_core_unsealed", "1 while the server is unsealed, 0 while sealed.", float(unsealed)),
        metrics.Gauge("vaultd_core_sealed_by_operator", "1 while an operator's seal holds the server sealed.",
                      float(shared.sealed_by_operator)),
    ]
    if the_core.settings.ha_enabled:
        state = shared.ha()
        role = "active" if state.active(time.monotonic()) else "standby" if unsealed else "sealed"
        renewals, lost = shared.ha_counts()
        out.extend(metrics.ha_gauges(role, renewals=renewals, lost=lost))
    if unsealed:
        since = max(0.0, time.time() - shared.unsealed_at)
        out.append(metrics.Gauge("vaultd_core_unsealed_duration_seconds", "Seconds since the last unseal.", since))
        counts = _stored_counts(the_core)
        if counts is not None:
            out.append(metrics.Gauge("vaultd_token_count", "Live tokens in storage.", float(counts[0])))
            out.append(metrics.Gauge("vaultd_expire_num_leases", "Live leases (tokens with a TTL).",
                                     float(counts[1])))
    return out
