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

import logging
from dataclasses import dataclass, field
from pathlib import Path

from vaultd.hcl_source import SourceSyntaxError, parse_hcl, parse_json

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
    from vaultd.config_builder import Builder  # it imports this module's types
    is_json = source.endswith(".json") or text.lstrip().startswith("{")
    try:
        items = parse_json(text) if is_json else parse_hcl(text)
    except SourceSyntaxError as exc:
        raise ConfigError(source, exc.line, None, f"syntax error: {exc.reason}") from None
    return Builder(source, items, dev).build()


def dev_config(address: str = "127.0.0.1:8200") -> Config:
    """What ``server -dev`` runs with: memory storage, plain HTTP."""
    from vaultd.config_builder import address_problem
    reason = address_problem(address)
    if reason:
        raise ConfigError("<dev>", None, "listener.tcp.address", reason)
    return Config(
        storage=StorageConfig("inmem", {}),
        listeners=[ListenerConfig(address=address, tls_disable=True)],
        api_addr=f"http://{address}",
        disable_mlock=True,
    )


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
    from vaultd.config_builder import At, Builder
    text = _read_text(path)
    is_json = path.endswith(".json") or text.lstrip().startswith("{")
    try:
        items = parse_json(text) if is_json else parse_hcl(text)
    except SourceSyntaxError as exc:
        raise ConfigError(path, exc.line, None, f"syntax error: {exc.reason}") from None
    b = Builder(path, items, False)
    found: dict[str, StorageConfig] = {}
    for item in items:
        at = At(item, (item.key,))
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
