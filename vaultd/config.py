"""Vault-format config files (HCL1, or JSON for ``*.json``) as dataclasses.

Operators move between Vault and vaultd with the same file, so the keys and
their value forms are Vault's (``tls_disable = 1`` and ``"true"`` both work,
durations are ``"768h"`` or seconds).  Keys vaultd does not use are warned
about and ignored, as an upgrade or a copied Vault config must still start;
a value that is present but wrong stops the start with the file, line and key
named, because guessing at a secrets server's listener or storage is worse
than not starting.  Secret values (AWS secret key, session token) never
appear in a repr or in an error message.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

from vaultd.durations import parse_duration
from vaultd.errors import BadRequest
from vaultd.hcl_source import Item, SourceSyntaxError, parse_hcl, parse_json

log = logging.getLogger("vaultd.config")

DEFAULT_LEASE_TTL = 768 * 3600
DEFAULT_MAX_REQUEST_SIZE = 32 * 1024 * 1024
DEFAULT_THREADS = 8

#: Accepted spellings → the canonical level stored in :attr:`Config.log_level`.
LOG_LEVELS = {
    "trace": "trace",
    "debug": "debug",
    "info": "info",
    "warn": "warn",
    "warning": "warn",
    "error": "error",
}
STORAGE_TYPES = ("file", "inmem", "postgresql", "sqlite")
POSTGRESQL_KEYS = ("connection_url", "table", "max_parallel", "ha_enabled", "ha_table")
SEAL_TYPES = ("awskms", "shamir")
AWSKMS_KEYS = ("region", "access_key", "secret_key", "session_token", "kms_key_id", "endpoint")

_SECRET_WORDS = ("secret", "token", "password", "passphrase")
_REDACTED = "<redacted>"
# Go's strconv.ParseBool, which Vault uses for string booleans.
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}
_HOSTNAME = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?$")


def is_secret_key(name: str) -> bool:
    """Whether a config key holds a credential, judged by its name so that
    options the agent adds later are covered without a list to keep."""
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def redact(options: dict[str, object]) -> dict[str, object]:
    """A copy fit for logs and reprs: secret values replaced, empty ones kept
    (an empty secret tells the reader it is unset, which is useful and safe)."""
    return {
        k: (_REDACTED if is_secret_key(k) and v not in (None, "") else v)
        for k, v in options.items()
    }


class ConfigError(Exception):
    """A config that must not be started with.

    The message reads ``vaultd.hcl:12: listener.tcp.address: reason``;
    ``line`` and ``key`` are None where unknown or not applicable.
    """

    def __init__(self, source: str, line: int | None, key: str | None, reason: str) -> None:
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {key}: {reason}" if key else f"{where}: {reason}")
        self.source = source
        self.line = line
        self.key = key
        self.reason = reason


@dataclass
class ListenerConfig:
    """One ``listener "tcp"`` block.

    ``max_request_size`` is in bytes, None for no limit (Vault's negative
    value), so it can be handed to Flask's ``MAX_CONTENT_LENGTH`` as is.
    """

    address: str = "127.0.0.1:8200"
    tls_disable: bool = False
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    max_request_size: int | None = DEFAULT_MAX_REQUEST_SIZE
    http_read_header_timeout: int = 10
    """Seconds a client has to send a request's head (Vault's name and default)."""
    http_read_timeout: int = 30
    """Seconds a client has to send a whole request, head and body."""
    unauthenticated_metrics_access: bool = False
    """``telemetry { unauthenticated_metrics_access = true }`` in the
    listener block, as Vault has it: ``sys/metrics`` on this listener needs
    no token."""


@dataclass(repr=False)
class StorageConfig:
    """The ``storage`` (or ``backend``) block; options as Vault's string map."""

    type: str
    options: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        shown = redact(dict(self.options))
        if shown.get("connection_url"):
            shown["connection_url"] = _REDACTED  # may hold a password
        return f"StorageConfig(type={self.type!r}, options={shown!r})"


@dataclass(repr=False)
class SealConfig:
    """The ``seal`` block.  ``disabled`` marks the old seal of a migration."""

    type: str
    options: dict[str, str] = field(default_factory=dict)
    disabled: bool = False

    def __repr__(self) -> str:
        return (
            f"SealConfig(type={self.type!r}, options={redact(dict(self.options))!r}, "
            f"disabled={self.disabled!r})"
        )


@dataclass(repr=False)
class UnsealerConfig:
    """The ``unsealer`` block, uninterpreted: its keys belong to the agent."""

    options: dict[str, object] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"UnsealerConfig(options={redact(self.options)!r})"


PROMETHEUS_DEFAULT_RETENTION = 24 * 3600


@dataclass
class TelemetryConfig:
    """The top-level ``telemetry`` block, read as Vault reads it.

    ``prometheus_retention_time`` is 0 without a block (Vault then answers
    ``?format=prometheus`` with "prometheus is not enabled"), 24h in a block
    that does not set it, and 0 again when set to 0.  ``disable_hostname``
    is accepted; vaultd, like OpenBao, never puts the host name into metric
    names either way."""

    prometheus_retention_time: int = 0
    disable_hostname: bool = False


@dataclass
class Config:
    """The whole file.  ``workers`` None means one per CPU; ``path`` is the
    file it came from, None for text or dev mode."""

    storage: StorageConfig
    listeners: list[ListenerConfig]
    seal: SealConfig | None = None
    """The seal in use: the enabled stanza, or a lone disabled one (the old
    seal of a migration to shamir)."""
    disabled_seal: SealConfig | None = None
    """The stanza marked ``disabled = "true"``: the seal a migration moves
    away from (the agent still unwraps with it until the move is done)."""
    unsealer: UnsealerConfig | None = None
    api_addr: str | None = None
    cluster_addr: str | None = None
    cluster_name: str | None = None
    default_lease_ttl: int = DEFAULT_LEASE_TTL
    max_lease_ttl: int = DEFAULT_LEASE_TTL
    log_level: str = "info"
    disable_mlock: bool = False
    workers: int | None = None
    threads: int = DEFAULT_THREADS
    path: str | None = None
    ui: bool = False
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)

    @property
    def ha_enabled(self) -> bool:
        return self.storage.type == "postgresql" and self.storage.options.get("ha_enabled") == "true"


def _read_text(path: str) -> str:
    """A config file's text, or the ConfigError that names why not."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, None, None, f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(path, None, None, "not UTF-8 text") from None


def load_config(path: str, *, dev: bool = False) -> Config:
    """Read and check a config file; JSON if the name ends in ``.json``."""
    text = _read_text(path)
    config = parse_config(text, path, dev=dev)
    config.path = path
    return config


def parse_config(text: str, source: str = "<string>", *, dev: bool = False) -> Config:
    """Check config text; ``source`` names it in messages.  The text is JSON
    if ``source`` ends in ``.json`` or the text starts with ``{`` (as HCL1
    itself decides), HCL otherwise.  ``dev`` lets storage (inmem) and the
    listener be left out."""
    is_json = source.endswith(".json") or text.lstrip().startswith("{")
    try:
        items = parse_json(text) if is_json else parse_hcl(text)
    except SourceSyntaxError as exc:
        raise ConfigError(source, exc.line, None, f"syntax error: {exc.reason}") from None
    return _Builder(source, items, dev).build()


def dev_config(address: str = "127.0.0.1:8200") -> Config:
    """What ``server -dev`` runs with: memory storage, plain HTTP."""
    reason = _address_problem(address)
    if reason:
        raise ConfigError("<dev>", None, "listener.tcp.address", reason)
    return Config(
        storage=StorageConfig("inmem", {}),
        listeners=[ListenerConfig(address=address, tls_disable=True)],
        api_addr=f"http://{address}",
        disable_mlock=True,
    )


@dataclass(frozen=True)
class _At:
    """Where a value sits: the top-level item and the key path inside it."""

    item: Item
    path: tuple[str, ...]

    def child(self, key: str) -> _At:
        return _At(self.item, (*self.path, key))

    @property
    def name(self) -> str:
        return ".".join(self.path)


class _Builder:
    """Turns parsed items into a :class:`Config`, failing on the first bad
    value.  One instance per parse; it only holds what messages need."""

    def __init__(self, source: str, items: list[Item], dev: bool) -> None:
        self.source = source
        self.items = items
        self.dev = dev

    # -- reporting -------------------------------------------------------

    def line(self, at: _At) -> int | None:
        path = at.path
        while path:
            if path in at.item.lines:
                return at.item.lines[path]
            path = path[:-1]
        return None

    def fail(self, at: _At, reason: str) -> NoReturn:
        raise ConfigError(self.source, self.line(at), at.name, reason)

    def warn_unknown(self, at: _At) -> None:
        line = self.line(at)
        where = f"{self.source}:{line}" if line is not None else self.source
        log.warning("%s: unknown or unsupported config key %s, ignored", where, at.name)

    # -- the file ----------------------------------------------------------

    def build(self) -> Config:
        config = Config(storage=StorageConfig("inmem", {}), listeners=[])
        storage_seen: _At | None = None
        unsealer_seen = telemetry_seen = False
        seals: list[tuple[_At, SealConfig]] = []
        scalars_seen: set[str] = set()
        for item in self.items:
            at = _At(item, (item.key,))
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
            at = next((_At(i, (i.key,)) for i in self.items if i.key == "default_lease_ttl"), None)
            if at is None:
                config.default_lease_ttl = config.max_lease_ttl
            else:
                self.fail(at, "is larger than max_lease_ttl")
        return config

    def blocks(self, at: _At) -> list[tuple[_At, str, dict[str, object]]]:
        """``kind "label" { body }`` as (where, label, body) triples; JSON may
        give one label several bodies as a list."""
        value = at.item.value
        if not isinstance(value, dict) or not value:
            self.fail(at, f'expected a block like {at.name} "TYPE" {{ ... }}')
        out: list[tuple[_At, str, dict[str, object]]] = []
        for label, bodies in value.items():
            block_at = at.child(str(label))
            for body in bodies if isinstance(bodies, list) else [bodies]:
                if not isinstance(body, dict):
                    self.fail(block_at, "expected a block body { ... }")
                out.append((block_at, str(label), body))
        return out

    # -- blocks -----------------------------------------------------------

    def storage(self, at: _At, kind: str, body: dict[str, object]) -> StorageConfig:
        if kind not in STORAGE_TYPES:
            self.fail(at, f"unsupported storage type {kind!r} (supported: {', '.join(STORAGE_TYPES)})")
        on_disk = kind in ("file", "sqlite")
        if kind == "postgresql":
            return StorageConfig(kind, self.postgresql_options(at, body))
        options = self.string_options(at, body, ("path",) if on_disk else ())
        if on_disk and not options.get("path"):
            self.fail(at.child("path"), f"{kind} storage needs a path")
        return StorageConfig(kind, options)

    def postgresql_options(self, at: _At, body: dict[str, object]) -> dict[str, str]:
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

    def listener(self, at: _At, kind: str, body: dict[str, object]) -> ListenerConfig:
        if kind != "tcp":
            self.fail(at, f'unsupported listener type {kind!r} (supported: "tcp")')
        listener = ListenerConfig()
        for key, value in body.items():
            key_at = at.child(key)
            if key == "address":
                listener.address = self.string(key_at, value)
                reason = _address_problem(listener.address)
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

    def telemetry(self, at: _At, body: object) -> TelemetryConfig:
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

    def listener_telemetry(self, at: _At, body: object) -> bool:
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

    def seal(self, at: _At, kind: str, body: dict[str, object]) -> SealConfig:
        if kind not in SEAL_TYPES:
            self.fail(at, f"unsupported seal type {kind!r} (supported: {', '.join(SEAL_TYPES)})")
        disabled = False
        if "disabled" in body:
            disabled = self.boolean(at.child("disabled"), body["disabled"])
        rest = {k: v for k, v in body.items() if k != "disabled"}
        known = AWSKMS_KEYS if kind == "awskms" else ()
        return SealConfig(kind, self.string_options(at, rest, known), disabled)

    def pick_seals(self, seals: list[tuple[_At, SealConfig]], config: Config) -> None:
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

    def string_options(self, at: _At, body: dict[str, object], known: tuple[str, ...]) -> dict[str, str]:
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

    def string(self, at: _At, value: object) -> str:
        if not isinstance(value, str):
            self.fail(at, "expected a string")
        return value

    def boolean(self, at: _At, value: object) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip() in _TRUE | _FALSE:
            return value.strip() in _TRUE
        self.fail(at, "expected a boolean (true or false)")

    def integer(self, at: _At, value: object) -> int:
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

    def positive(self, at: _At, value: object) -> int:
        number = self.integer(at, value)
        if number < 1:
            self.fail(at, "must be at least 1")
        return number

    def duration(self, at: _At, value: object) -> int:
        try:
            return parse_duration(value, field=at.name)
        except BadRequest as exc:
            self.fail(at, str(exc))


def _address_problem(address: str) -> str | None:
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


def _set_api_addr(b: _Builder, at: _At, value: object, config: Config) -> None:
    text = b.string(at, value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        b.fail(at, f"{text!r}: expected a URL like https://vault.example.com:8200")
    config.api_addr = text


def _set_cluster_addr(b: _Builder, at: _At, value: object, config: Config) -> None:
    """Reported by ``sys/leader``; vaultd forwards nothing over it (standbys redirect)."""
    text = b.string(at, value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        b.fail(at, f"{text!r}: expected a URL like https://vault.example.com:8201")
    config.cluster_addr = text


def _set_cluster_name(b: _Builder, at: _At, value: object, config: Config) -> None:
    config.cluster_name = b.string(at, value) or None


def _set_default_lease_ttl(b: _Builder, at: _At, value: object, config: Config) -> None:
    # Vault reads 0 as "the system default".
    config.default_lease_ttl = b.duration(at, value) or DEFAULT_LEASE_TTL


def _set_max_lease_ttl(b: _Builder, at: _At, value: object, config: Config) -> None:
    config.max_lease_ttl = b.duration(at, value) or DEFAULT_LEASE_TTL


def _set_log_level(b: _Builder, at: _At, value: object, config: Config) -> None:
    text = b.string(at, value).strip().lower()
    if text not in LOG_LEVELS:
        b.fail(at, f"{text!r}: expected one of {', '.join(LOG_LEVELS)}")
    config.log_level = LOG_LEVELS[text]


def _set_disable_mlock(b: _Builder, at: _At, value: object, config: Config) -> None:
    config.disable_mlock = b.boolean(at, value)


def _set_ui(b: _Builder, at: _At, value: object, config: Config) -> None:
    config.ui = b.boolean(at, value)


def _set_workers(b: _Builder, at: _At, value: object, config: Config) -> None:
    config.workers = b.positive(at, value)


def _set_threads(b: _Builder, at: _At, value: object, config: Config) -> None:
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


@dataclass
class MigrationConfig:
    """A ``vaultd operator migrate`` file: Vault's ``storage_source`` and
    ``storage_destination`` blocks, each a disk backend (``inmem`` would copy
    to or from nothing that outlives the command)."""

    source: StorageConfig
    destination: StorageConfig


MIGRATION_STORAGE_TYPES = ("file", "postgresql", "sqlite")


def load_migration_config(path: str) -> MigrationConfig:
    """Read and check a migration file; errors name the file, line and key
    as :func:`load_config` does, and unknown top-level keys are warned about
    (Vault's migrator reads only its two stanzas)."""
    text = _read_text(path)
    is_json = path.endswith(".json") or text.lstrip().startswith("{")
    try:
        items = parse_json(text) if is_json else parse_hcl(text)
    except SourceSyntaxError as exc:
        raise ConfigError(path, exc.line, None, f"syntax error: {exc.reason}") from None
    b = _Builder(path, items, False)
    found: dict[str, StorageConfig] = {}
    for item in items:
        at = _At(item, (item.key,))
        if item.key not in ("storage_source", "storage_destination"):
            b.warn_unknown(at)
            continue
        for block_at, kind, body in b.blocks(at):
            if item.key in found:
                b.fail(block_at, f"exactly one {item.key} block is required")
            if kind not in MIGRATION_STORAGE_TYPES:
                b.fail(block_at, f"unsupported storage type {kind!r} (supported: {', '.join(MIGRATION_STORAGE_TYPES)})")
            found[item.key] = b.storage(block_at, kind, body)
    for stanza in ("storage_source", "storage_destination"):
        if stanza not in found:
            example = f'{stanza} "file" {{ path = "..." }}'
            raise ConfigError(path, None, stanza, f"exactly one {stanza} block is required, e.g. {example}")
    return MigrationConfig(found["storage_source"], found["storage_destination"])
