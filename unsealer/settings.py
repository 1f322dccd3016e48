"""The agent's settings, from the ``unsealer { ... }`` stanza of the daemon's
own config file.

The agent reads the daemon's file rather than a file of its own so that the
address it dials and the seal it unwraps with cannot drift apart from what
the daemon serves.  Keys::

    unsealer {
      address         = "http://127.0.0.1:8200"   # or https://..., unix:///run/vaultd.sock
      ca_file         = "/etc/vaultd/ca.pem"      # for https
      initial_backoff = "500ms"                   # first retry delay (upper bound)
      max_backoff     = "30s"                     # cap on every retry delay
      poll_interval   = "1s"                      # how often a healthy daemon is looked at
      timeout         = "10s"                     # per HTTP request to the daemon
    }

Without ``address`` the first listener of the same file is dialled (a
wildcard bind address becomes loopback).
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

from vaultd.config import Config, ListenerConfig
from vaultd.durations import go_duration_seconds

log = logging.getLogger("vaultd.unsealer")

DEFAULT_INITIAL_BACKOFF = 0.5
DEFAULT_MAX_BACKOFF = 30.0
DEFAULT_POLL_INTERVAL = 1.0
DEFAULT_TIMEOUT = 10.0

KNOWN_KEYS = frozenset({"address", "ca_file", "initial_backoff", "max_backoff", "poll_interval", "timeout"})



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


def listener_url(listener: ListenerConfig) -> str:
    """How a local client reaches a listener: wildcard binds become loopback."""
    host, _, port = listener.address.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    scheme = "http" if listener.tls_disable else "https"
    return f"{scheme}://{host}:{port}"


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
    address = options.get("address")
    if address is None or address == "":
        if not config.listeners:
            raise SettingsError("unsealer.address is not set and the config has no listener")
        address = listener_url(config.listeners[0])
    if not isinstance(address, str):
        raise SettingsError("unsealer.address: expected a string")
    address = address.rstrip("/")
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
    )
    if settings.max_backoff < settings.initial_backoff:
        raise SettingsError("unsealer.max_backoff must not be smaller than unsealer.initial_backoff")
    return settings


def _seconds(options: dict[str, object], key: str, default: float) -> float:
    value = options.get(key)
    return default if value is None else parse_seconds(value, key)
