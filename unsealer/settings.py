"""The agent's settings, from the ``unsealer { ... }`` stanza of the daemon's
own config file.

The agent reads the daemon's file rather than a file of its own so that the
address it dials and the seal it unwraps with cannot drift apart from what
the daemon serves.  Keys::

    unsealer {
      address         = "unix:///run/vaultd/unseal.sock"  # the default; see below
      ca_file         = "/etc/vaultd/ca.pem"      # for https (and TLS over the socket)
      daemon_uids     = ["vaultd2"]               # more owners trusted for the daemon's socket
      initial_backoff = "500ms"                   # first retry delay (upper bound)
      max_backoff     = "30s"                     # cap on every retry delay
      poll_interval   = "1s"                      # how often a healthy daemon is looked at
      timeout         = "10s"                     # per HTTP request to the daemon
    }

Without ``address`` the agent dials the daemon's default unix socket
(:func:`vaultd.agent_channel.default_socket_path`, the same function the
daemon binds with).  A TCP ``address`` still works (plain HTTP to loopback
only, or https), but it is weaker: see the README's "agent channel".
Over a unix socket the agent checks who owns the socket and its directory
and which uid the daemon runs as (:mod:`vaultd.agent_channel`).
"""

from __future__ import annotations

import ipaddress
import logging
import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from unsealer.metrics import DEFAULT_TEXTFILE
from vaultd.agent_channel import AgentChannel, ChannelError, channel_from_config
from vaultd.config import Config
from vaultd.durations import go_duration_seconds

log = logging.getLogger("vaultd.unsealer")

DEFAULT_INITIAL_BACKOFF = 0.5
DEFAULT_MAX_BACKOFF = 30.0
DEFAULT_POLL_INTERVAL = 1.0
DEFAULT_TIMEOUT = 10.0

KNOWN_KEYS = frozenset(
    {"address", "ca_file", "initial_backoff", "max_backoff", "poll_interval", "timeout",
     "allowed_uids", "allowed_gids", "daemon_uids", "metrics_textfile"}
)


class SettingsError(ValueError):
    """The unsealer stanza cannot be used as written."""


@dataclass(frozen=True)
class AgentSettings:
    address: str
    ca_file: str | None = None
    initial_backoff: float = DEFAULT_INITIAL_BACKOFF
    max_backoff: float = DEFAULT_MAX_BACKOFF
    poll_interval: float = DEFAULT_POLL_INTERVAL
    timeout: float = DEFAULT_TIMEOUT
    metrics_textfile: str | None = None
    """Where the agent writes its node_exporter textfile; None for nowhere."""
    channel: AgentChannel | None = None
    """The unix socket channel and whom to trust on it; None for TCP."""
    unix_tls: bool = False
    """The daemon's listeners use TLS, and gunicorn then speaks TLS on every
    socket it serves, the agent's included."""


def parse_seconds(value: object, key: str) -> float:
    """A positive duration in seconds, sub-second allowed (``"500ms"``, ``0.5``,
    ``"2"``, ``"1m30s"``): :func:`vaultd.durations.parse_duration` rounds to
    whole seconds, which cannot express the default first backoff."""
    seconds: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            seconds = go_duration_seconds(text)
    if seconds is None or not seconds > 0 or seconds == float("inf"):
        raise SettingsError(f"unsealer.{key}: invalid duration {value!r} (e.g. \"500ms\", \"30s\")")
    return seconds


def is_loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_address(address: str) -> None:
    """Refuse addresses over which the plaintext unseal key would travel
    readable by others: plain HTTP is allowed to loopback only."""
    if address.startswith("unix:") or address.startswith("/"):
        return
    parts = urlsplit(address)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(
            f"unsealer.address: {address!r} is not an http://, https:// or unix:// address"
        )
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise SettingsError(
            f"unsealer.address: refusing to send the unseal key over plain HTTP to {parts.hostname}; "
            "use https, a loopback address or a unix socket"
        )


def settings_from_config(config: Config) -> AgentSettings:
    options = dict(config.unsealer.options) if config.unsealer is not None else {}
    for key in sorted(set(options) - KNOWN_KEYS):
        log.warning("unsealer.%s: unknown key, ignored", key)
    try:
        channel = channel_from_config(config)
    except ChannelError as exc:
        raise SettingsError(str(exc)) from None
    address = channel.address
    check_address(address)
    ca_file = options.get("ca_file")
    if ca_file is not None and not isinstance(ca_file, str):
        raise SettingsError("unsealer.ca_file: expected a string")
    settings = AgentSettings(
        address=address,
        ca_file=ca_file or None,
        initial_backoff=_seconds(options, "initial_backoff", DEFAULT_INITIAL_BACKOFF),
        max_backoff=_seconds(options, "max_backoff", DEFAULT_MAX_BACKOFF),
        poll_interval=_seconds(options, "poll_interval", DEFAULT_POLL_INTERVAL),
        timeout=_seconds(options, "timeout", DEFAULT_TIMEOUT),
        metrics_textfile=_textfile(options),
        channel=channel if channel.is_unix else None,
        unix_tls=channel.is_unix and bool(config.listeners) and not config.listeners[0].tls_disable,
    )
    if settings.max_backoff < settings.initial_backoff:
        raise SettingsError("unsealer.max_backoff must not be smaller than unsealer.initial_backoff")
    if not channel.is_unix:
        log.warning("unsealer.address is the TCP address %s: any local user who binds that port while the "
                    "daemon restarts can pose as it (the agent still sends the key only over loopback or "
                    "TLS); the default unix socket is safer", address)
    return settings


def _textfile(options: dict[str, object]) -> str | None:
    """``metrics_textfile``: a ``*.prom`` path, or "" for none.  Unset, the
    node_exporter directory Debian's prometheus-node-exporter reads, if
    this machine has it."""
    value = options.get("metrics_textfile")
    if value is None:
        return DEFAULT_TEXTFILE if os.path.isdir(os.path.dirname(DEFAULT_TEXTFILE)) else None
    if not isinstance(value, str) or (value and not (os.path.isabs(value) and value.endswith(".prom"))):
        raise SettingsError("unsealer.metrics_textfile: expected an absolute path ending in .prom, or \"\"")
    return value or None


def _seconds(options: dict[str, object], key: str, default: float) -> float:
    value = options.get(key)
    return default if value is None else parse_seconds(value, key)
