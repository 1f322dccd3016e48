"""How a parsed Vault-format config becomes :class:`vaultd.config.Config`:
every key checked where it stands, so an error names the file, line and key.

Split from :mod:`vaultd.config`, which holds the dataclasses and the entry
points (``load_config``, ``parse_config``, ``load_migration_config``) and
imports this module when it parses.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass
from typing import NoReturn
from urllib.parse import urlsplit

from vaultd.config import (
    AWSKMS_KEYS,
    DEFAULT_LEASE_TTL,
    DEFAULT_MAX_REQUEST_SIZE,
    LOG_LEVELS,
    POSTGRESQL_KEYS,
    PROMETHEUS_DEFAULT_RETENTION,
    SEAL_TYPES,
    STORAGE_TYPES,
    Config,
    ConfigError,
    ListenerConfig,
    SealConfig,
    StorageConfig,
    TelemetryConfig,
    UnsealerConfig,
)
from vaultd.durations import parse_duration
from vaultd.errors import BadRequest
from vaultd.hcl_source import Item

log = logging.getLogger("vaultd.config")

_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}
_HOSTNAME = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?$")


@dataclass(frozen=True)
class At:
    """Where a value sits: the top-level item and the key path inside it."""

    item: Item
    path: tuple[str, ...]

    def child(self, key: str) -> At:
        return At(self.item, (*self.path, key))

    @property
    def name(self) -> str:
        return ".".join(self.path)


class Builder:
    """Turns parsed items into a :class:`Config`, failing on the first bad
    value.  One instance per parse; it only holds what messages need."""

    def __init__(self, source: str, items: list[Item], dev: bool) -> None:
        self.source = source
        self.items = items
        self.dev = dev

    # -- reporting -------------------------------------------------------

    def line(self, at: At) -> int | None:
        path = at.path
        while path:
            if path in at.item.lines:
                return at.item.lines[path]
            path = path[:-1]
        return None

    def fail(self, at: At, reason: str) -> NoReturn:
        raise ConfigError(self.source, self.line(at), at.name, reason)

    def warn_unknown(self, at: At) -> None:
        line = self.line(at)
        where = f"{self.source}:{line}" if line is not None else self.source
        log.warning("%s: unknown or unsupported config key %s, ignored", where, at.name)

    # -- the file ----------------------------------------------------------

    def build(self) -> Config:
        config = Config(storage=StorageConfig("inmem", {}), listeners=[])
        storage_seen: At | None = None
        unsealer_seen = telemetry_seen = False
        seals: list[tuple[At, SealConfig]] = []
        scalars_seen: set[str] = set()
        for item in self.items:
            at = At(item, (item.key,))
            key = item.key
            if key in ("storage", "backend"):
                for block_at, kind, body in self.blocks(at):
                    if storage_seen is not None:
                        self.fail(block_at, f"only one storage block is allowed (first: {storage_seen.name})")
                    storage_seen = block_at
                    config.storage = self.storage(block_at, kind, body)
            elif key == "listener":
                for block_at, kind, body in self.blocks(at):
                    config.listeners.append(self.listener(block_at, kind, body))
            elif key == "seal":
                for block_at, kind, body in self.blocks(at):
                    seals.append((block_at, self.seal(block_at, kind, body)))
            elif key == "unsealer":
                if unsealer_seen:
                    self.fail(at, "only one unsealer block is allowed")
                unsealer_seen = True
                if not isinstance(item.value, dict):
                    self.fail(at, "expected a block: unsealer { ... }")
                config.unsealer = UnsealerConfig(dict(item.value))
            elif key == "telemetry":
                if telemetry_seen:
                    self.fail(at, "only one telemetry block is allowed")
                telemetry_seen = True
                config.telemetry = self.telemetry(at, item.value)
            elif key in _SCALARS:
                if key in scalars_seen:
                    self.fail(at, "set more than once")
                scalars_seen.add(key)
                _SCALARS[key](self, at, item.value, config)
            else:
                self.warn_unknown(at)
        self.pick_seals(seals, config)
        if config.ha_enabled and not config.api_addr:
            raise ConfigError(self.source, None, "api_addr", "ha_enabled needs api_addr: the URL other nodes "
                              "redirect clients to, e.g. api_addr = \"http://10.0.0.1:8200\"")
        if storage_seen is None and not self.dev:
            reason = 'a storage block is required, e.g. storage "file" { path = "..." }'
            raise ConfigError(self.source, None, "storage", reason)
        if not config.listeners:
            if not self.dev:
                raise ConfigError(self.source, None, "listener", 'at least one listener "tcp" block is required')
            config.listeners.append(ListenerConfig(tls_disable=True))
        if config.default_lease_ttl > config.max_lease_ttl:
            # Only both set explicitly is a contradiction; a lone low
            # max_lease_ttl lowers the default with it (Vault refuses to start).
            at = next((At(i, (i.key,)) for i in self.items if i.key == "default_lease_ttl"), None)
            if at is None:
                config.default_lease_ttl = config.max_lease_ttl
            else:
                self.fail(at, "is larger than max_lease_ttl")
        return config

    def blocks(self, at: At) -> list[tuple[At, str, dict[str, object]]]:
        """``kind "label" { body }`` as (where, label, body) triples; JSON may
        give one label several bodies as a list."""
        value = at.item.value
        if not isinstance(value, dict) or not value:
            self.fail(at, f'expected a block like {at.name} "TYPE" {{ ... }}')
        out: list[tuple[At, str, dict[str, object]]] = []
        for label, bodies in value.items():
            block_at = at.child(str(label))
            for body in bodies if isinstance(bodies, list) else [bodies]:
                if not isinstance(body, dict):
                    self.fail(block_at, "expected a block body { ... }")
                out.append((block_at, str(label), body))
        return out

    # -- blocks -----------------------------------------------------------

    def storage(self, at: At, kind: str, body: dict[str, object]) -> StorageConfig:
        if kind not in STORAGE_TYPES:
            self.fail(at, f"unsupported storage type {kind!r} (supported: {', '.join(STORAGE_TYPES)})")
        on_disk = kind in ("file", "sqlite")
        if kind == "postgresql":
            return StorageConfig(kind, self.postgresql_options(at, body))
        options = self.string_options(at, body, ("path",) if on_disk else ())
        if on_disk and not options.get("path"):
            self.fail(at.child("path"), f"{kind} storage needs a path")
        return StorageConfig(kind, options)

    def postgresql_options(self, at: At, body: dict[str, object]) -> dict[str, str]:
        """Vault's keys.  ``connection_url`` may be left out (Vault's
        ``VAULT_PG_CONNECTION_URL``, else libpq's ``PG*`` environment).
        ``ha_enabled = true`` makes the nodes on one database elect one
        active node (vaultd/core/ha.py); it needs ``api_addr``, where the
        standbys send their clients."""
        options = self.string_options(at, body, POSTGRESQL_KEYS)
        if "ha_enabled" in options:
            # Normalised, so that the server reads one spelling.
            options["ha_enabled"] = "true" if self.boolean(at.child("ha_enabled"), options["ha_enabled"]) else "false"
        ha_table = options.get("ha_table")
        if ha_table is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]{0,59}", ha_table):
            self.fail(at.child("ha_table"), "must be a table name: a letter or _, then letters, digits, _ or $ "
                                            "(at most 60)")
        if "max_parallel" in options and self.integer(at.child("max_parallel"), options["max_parallel"]) < 1:
            self.fail(at.child("max_parallel"), "must be at least 1")
        table = options.get("table")
        if table is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]{0,59}", table):
            self.fail(at.child("table"), "must be a table name: a letter or _, then letters, digits, _ or $ "
                                         "(at most 60)")
        return options

    def listener(self, at: At, kind: str, body: dict[str, object]) -> ListenerConfig:
        if kind != "tcp":
            self.fail(at, f'unsupported listener type {kind!r} (supported: "tcp")')
        listener = ListenerConfig()
        for key, value in body.items():
            key_at = at.child(key)
            if key == "address":
                listener.address = self.string(key_at, value)
                reason = address_problem(listener.address)
                if reason:
                    self.fail(key_at, f"{listener.address!r}: {reason}")
            elif key == "tls_disable":
                listener.tls_disable = self.boolean(key_at, value)
            elif key in ("tls_cert_file", "tls_key_file"):
                setattr(listener, key, self.string(key_at, value) or None)
            elif key == "max_request_size":
                size = self.integer(key_at, value)
                listener.max_request_size = (
                    None if size < 0 else size or DEFAULT_MAX_REQUEST_SIZE
                )
            elif key in ("http_read_header_timeout", "http_read_timeout"):
                # 0 keeps the default: no deadline at all would let stalled
                # clients hold connections for ever.
                setattr(listener, key, self.duration(key_at, value) or getattr(ListenerConfig, key))
            elif key == "telemetry":
                listener.unauthenticated_metrics_access = self.listener_telemetry(key_at, value)
            else:
                self.warn_unknown(key_at)
        if not listener.tls_disable:
            for key in ("tls_cert_file", "tls_key_file"):
                if not getattr(listener, key):
                    self.fail(at.child(key), "TLS is enabled (tls_disable is false) but no file is given")
        return listener

    def telemetry(self, at: At, body: object) -> TelemetryConfig:
        if not isinstance(body, dict):
            self.fail(at, "expected a block: telemetry { ... }")
        telemetry = TelemetryConfig(prometheus_retention_time=PROMETHEUS_DEFAULT_RETENTION)
        for key, value in body.items():
            key_at = at.child(key)
            if key == "prometheus_retention_time":
                telemetry.prometheus_retention_time = self.duration(key_at, value)
            elif key == "disable_hostname":
                telemetry.disable_hostname = self.boolean(key_at, value)
            elif key == "unauthenticated_metrics_access":
                line = self.line(key_at)
                log.warning("%s:%s: telemetry.unauthenticated_metrics_access belongs in a listener's telemetry "
                            "block (as in Vault); ignored here", self.source, line if line is not None else "?")
            else:
                self.warn_unknown(key_at)
        return telemetry

    def listener_telemetry(self, at: At, body: object) -> bool:
        """The listener's ``telemetry`` block: whether ``sys/metrics`` is open."""
        if not isinstance(body, dict):
            self.fail(at, "expected a block: telemetry { ... }")
        allowed = False
        for key, value in body.items():
            if key == "unauthenticated_metrics_access":
                allowed = self.boolean(at.child(key), value)
            else:
                self.warn_unknown(at.child(key))
        return allowed

    def seal(self, at: At, kind: str, body: dict[str, object]) -> SealConfig:
        if kind not in SEAL_TYPES:
            self.fail(at, f"unsupported seal type {kind!r} (supported: {', '.join(SEAL_TYPES)})")
        disabled = False
        if "disabled" in body:
            disabled = self.boolean(at.child("disabled"), body["disabled"])
        rest = {k: v for k, v in body.items() if k != "disabled"}
        known = AWSKMS_KEYS if kind == "awskms" else ()
        return SealConfig(kind, self.string_options(at, rest, known), disabled)

    def pick_seals(self, seals: list[tuple[At, SealConfig]], config: Config) -> None:
        """One seal, or two during a seal migration (Vault's rule): the old
        one marked ``disabled = "true"`` and the new one enabled."""
        if len(seals) > 2:
            self.fail(seals[2][0], "at most two seal blocks are allowed: the old (disabled) and the new one")
        enabled = [(at, s) for at, s in seals if not s.disabled]
        disabled = [(at, s) for at, s in seals if s.disabled]
        if len(enabled) > 1:
            self.fail(enabled[1][0], 'only one seal block may be enabled; to migrate, mark the old one '
                      'disabled = "true"')
        if len(disabled) > 1:
            self.fail(disabled[1][0], "only one seal block may be disabled (the seal a migration leaves)")
        config.disabled_seal = disabled[0][1] if disabled else None
        config.seal = enabled[0][1] if enabled else config.disabled_seal

    def string_options(self, at: At, body: dict[str, object], known: tuple[str, ...]) -> dict[str, str]:
        """Vault's ``map[string]string`` block options: scalars become strings."""
        options: dict[str, str] = {}
        for key, value in body.items():
            key_at = at.child(key)
            if key not in known:
                self.warn_unknown(key_at)
                continue
            if isinstance(value, bool):
                options[key] = "true" if value else "false"
            elif isinstance(value, (str, int, float)):
                options[key] = str(value)
            else:
                self.fail(key_at, "expected a string")
        return options

    # -- values -----------------------------------------------------------

    def string(self, at: At, value: object) -> str:
        if not isinstance(value, str):
            self.fail(at, "expected a string")
        return value

    def boolean(self, at: At, value: object) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip() in _TRUE | _FALSE:
            return value.strip() in _TRUE
        self.fail(at, "expected a boolean (true or false)")

    def integer(self, at: At, value: object) -> int:
        """An int64, as Vault's Go config holds every integer."""
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]{1,19}\s*", value):
            number = int(value)
        elif isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]+\s*", value):
            self.fail(at, "is out of range (at most 9223372036854775807)")
        if number is None:
            self.fail(at, "expected an integer")
        if not -(2**63) <= number < 2**63:
            self.fail(at, "is out of range (at most 9223372036854775807)")
        return number

    def positive(self, at: At, value: object) -> int:
        number = self.integer(at, value)
        if number < 1:
            self.fail(at, "must be at least 1")
        return number

    def duration(self, at: At, value: object) -> int:
        try:
            return parse_duration(value, field=at.name)
        except BadRequest as exc:
            self.fail(at, str(exc))


def address_problem(address: str) -> str | None:
    """Why ``host:port`` cannot be listened on, or None.  An empty host means
    every interface, as in Go; IPv6 hosts must be bracketed."""
    if address.startswith("["):
        host, sep, port = address[1:].partition("]:")
        if not sep:
            return "expected [IPv6]:port"
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return "not a valid IPv6 address"
    else:
        host, sep, port = address.rpartition(":")
        if not sep:
            return "missing port (expected host:port)"
        if ":" in host:
            return "IPv6 addresses must be in brackets, e.g. [::1]:8200"
        if host and not _HOSTNAME.match(host):
            return "not a valid host name or IP address"
    if not port.isdigit() or int(port) > 65535:
        return "port must be a number from 0 to 65535"
    return None


def _set_api_addr(b: Builder, at: At, value: object, config: Config) -> None:
    text = b.string(at, value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        b.fail(at, f"{text!r}: expected a URL like https://vault.example.com:8200")
    config.api_addr = text


def _set_cluster_addr(b: Builder, at: At, value: object, config: Config) -> None:
    """Reported by ``sys/leader``; vaultd forwards nothing over it (standbys redirect)."""
    text = b.string(at, value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        b.fail(at, f"{text!r}: expected a URL like https://vault.example.com:8201")
    config.cluster_addr = text


def _set_cluster_name(b: Builder, at: At, value: object, config: Config) -> None:
    config.cluster_name = b.string(at, value) or None


def _set_default_lease_ttl(b: Builder, at: At, value: object, config: Config) -> None:
    # Vault reads 0 as "the system default".
    config.default_lease_ttl = b.duration(at, value) or DEFAULT_LEASE_TTL


def _set_max_lease_ttl(b: Builder, at: At, value: object, config: Config) -> None:
    config.max_lease_ttl = b.duration(at, value) or DEFAULT_LEASE_TTL


def _set_log_level(b: Builder, at: At, value: object, config: Config) -> None:
    text = b.string(at, value).strip().lower()
    if text not in LOG_LEVELS:
        b.fail(at, f"{text!r}: expected one of {', '.join(LOG_LEVELS)}")
    config.log_level = LOG_LEVELS[text]


def _set_disable_mlock(b: Builder, at: At, value: object, config: Config) -> None:
    config.disable_mlock = b.boolean(at, value)


def _set_ui(b: Builder, at: At, value: object, config: Config) -> None:
    config.ui = b.boolean(at, value)


def _set_workers(b: Builder, at: At, value: object, config: Config) -> None:
    config.workers = b.positive(at, value)


def _set_threads(b: Builder, at: At, value: object, config: Config) -> None:
    config.threads = b.positive(at, value)


_SCALARS = {
    "api_addr": _set_api_addr,
    "cluster_addr": _set_cluster_addr,
    "cluster_name": _set_cluster_name,
    "default_lease_ttl": _set_default_lease_ttl,
    "max_lease_ttl": _set_max_lease_ttl,
    "log_level": _set_log_level,
    "disable_mlock": _set_disable_mlock,
    "ui": _set_ui,
    "workers": _set_workers,
    "threads": _set_threads,
}
