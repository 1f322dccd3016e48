"""vaultd.config: Vault-format HCL/JSON configs, defaults, errors with lines."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from vaultd.config import (
    DEFAULT_LEASE_TTL,
    DEFAULT_MAX_REQUEST_SIZE,
    Config,
    ConfigError,
    ListenerConfig,
    SealConfig,
    StorageConfig,
    UnsealerConfig,
    dev_config,
    load_config,
    parse_config,
)

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"

# The auto-unseal walkthrough config of Vault 1.0, verbatim.
WALKTHROUGH = f"""\
storage "file" {{
  path = "/opt/vault/data"
}}

listener "tcp" {{
  address     = "0.0.0.0:8200"
  tls_disable = 1
}}

seal "awskms" {{
  region     = "us-east-1"
  access_key = "AKIAIOSFODNN7EXAMPLE"
  secret_key = "{SECRET}"
  kms_key_id = "19ec80b0-dfdd-4d97-8164-c6examplekey"
  endpoint   = ""
}}

ui = true
"""

MINIMAL = 'storage "inmem" {}\nlistener "tcp" {\n  tls_disable = true\n}\n'


def error_of(text: str, source: str = "vaultd.hcl") -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source)
    return str(info.value)


def test_walkthrough_config_is_accepted_verbatim() -> None:
    config = parse_config(WALKTHROUGH, "vaultd.hcl")
    assert config.storage == StorageConfig("file", {"path": "/opt/vault/data"})
    assert config.listeners == [ListenerConfig(address="0.0.0.0:8200", tls_disable=True)]
    assert config.seal == SealConfig(
        "awskms",
        {
            "region": "us-east-1",
            "access_key": "AKIAIOSFODNN7EXAMPLE",
            "secret_key": SECRET,
            "kms_key_id": "19ec80b0-dfdd-4d97-8164-c6examplekey",
            "endpoint": "",
        },
    )
    assert config.seal.disabled is False
    assert config.ui is True


def test_defaults() -> None:
    config = parse_config(MINIMAL)
    assert config.storage == StorageConfig("inmem", {})
    assert config.default_lease_ttl == DEFAULT_LEASE_TTL == 768 * 3600
    assert config.max_lease_ttl == 768 * 3600
    assert config.log_level == "info"
    assert config.workers is None
    assert config.threads == 8
    assert config.disable_mlock is False
    assert config.seal is None and config.unsealer is None
    assert config.api_addr is None and config.cluster_name is None and config.path is None
    listener = config.listeners[0]
    assert listener.address == "127.0.0.1:8200"
    assert listener.max_request_size == DEFAULT_MAX_REQUEST_SIZE == 33554432
    assert listener.tls_cert_file is None and listener.tls_key_file is None


def test_every_top_level_key() -> None:
    config = parse_config(
        MINIMAL
        + """
api_addr = "https://vault.example.com:8200"
cluster_name = "prod"
default_lease_ttl = "1h"
max_lease_ttl = 86400
log_level = "WARNING"
disable_mlock = "true"
workers = 3
threads = 16
unsealer {
  address = "http://127.0.0.1:8200"
  unix_socket = "/run/vaultd/api.sock"
  initial_backoff = "1s"
  max_backoff = 60
}
"""
    )
    assert config.api_addr == "https://vault.example.com:8200"
    assert config.cluster_name == "prod"
    assert (config.default_lease_ttl, config.max_lease_ttl) == (3600, 86400)
    assert config.log_level == "warn"
    assert config.disable_mlock is True
    assert (config.workers, config.threads) == (3, 16)
    assert config.unsealer == UnsealerConfig(
        {
            "address": "http://127.0.0.1:8200",
            "unix_socket": "/run/vaultd/api.sock",
            "initial_backoff": "1s",
            "max_backoff": 60,
        }
    )


def test_low_max_lease_ttl_lowers_the_default() -> None:
    config = parse_config(MINIMAL + 'max_lease_ttl = "1h"\n')
    assert (config.default_lease_ttl, config.max_lease_ttl) == (3600, 3600)


def test_backend_is_an_alias_of_storage() -> None:
    config = parse_config('backend "file" {\n  path = "/srv/v"\n}\nlistener "tcp" { tls_disable = 1 }')
    assert config.storage == StorageConfig("file", {"path": "/srv/v"})


def test_repeated_listeners_are_kept_apart() -> None:
    config = parse_config(
        'storage "inmem" {}\n'
        'listener "tcp" {\n  address = "127.0.0.1:8200"\n  tls_disable = true\n}\n'
        'listener "tcp" {\n  address = "[::1]:8300"\n  tls_cert_file = "/c.pem"\n'
        '  tls_key_file = "/k.pem"\n  max_request_size = 1024\n}\n'
    )
    assert config.listeners == [
        ListenerConfig(address="127.0.0.1:8200", tls_disable=True),
        ListenerConfig(
            address="[::1]:8300", tls_cert_file="/c.pem", tls_key_file="/k.pem", max_request_size=1024
        ),
    ]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", True), ("0", False), ("true", True), ('"true"', True), ('"false"', False), ("false", False)],
)
def test_booleans_in_vault_forms(raw: str, expected: bool) -> None:
    text = f'storage "inmem" {{}}\nlistener "tcp" {{\n  tls_disable = 1\n}}\ndisable_mlock = {raw}\n'
    assert parse_config(text).disable_mlock is expected


@pytest.mark.parametrize(("raw", "expected"), [("0", DEFAULT_MAX_REQUEST_SIZE), ("-1", None), ('"2048"', 2048)])
def test_max_request_size_follows_vault(raw: str, expected: int | None) -> None:
    text = f'storage "inmem" {{}}\nlistener "tcp" {{\n  tls_disable = 1\n  max_request_size = {raw}\n}}\n'
    assert parse_config(text).listeners[0].max_request_size == expected


def test_seal_disabled_and_shamir() -> None:
    config = parse_config(MINIMAL + 'seal "awskms" {\n  disabled = "true"\n  kms_key_id = "k"\n}\n')
    assert config.seal == SealConfig("awskms", {"kms_key_id": "k"}, disabled=True)
    assert parse_config(MINIMAL + 'seal "shamir" {}\n').seal == SealConfig("shamir", {})


def test_json_config() -> None:
    doc = {
        "backend": {"file": {"path": "/var/lib/vaultd"}},
        "listener": [
            {"tcp": {"address": "127.0.0.1:8200", "tls_disable": "true"}},
            {"tcp": {"address": "10.0.0.1:8200", "tls_cert_file": "/c", "tls_key_file": "/k"}},
        ],
        "seal": {"awskms": {"region": "eu-west-1", "kms_key_id": "alias/v", "endpoint": ""}},
        "default_lease_ttl": "768h",
        "max_lease_ttl": "8760h",
        "log_level": "debug",
    }
    config = parse_config(json.dumps(doc, indent=2), "vaultd.json")
    assert config.storage == StorageConfig("file", {"path": "/var/lib/vaultd"})
    assert [listener.address for listener in config.listeners] == ["127.0.0.1:8200", "10.0.0.1:8200"]
    assert config.listeners[0].tls_disable is True
    assert config.seal == SealConfig("awskms", {"region": "eu-west-1", "kms_key_id": "alias/v", "endpoint": ""})
    assert config.max_lease_ttl == 8760 * 3600
    assert config.log_level == "debug"


def test_json_errors_name_the_line() -> None:
    text = '{\n  "storage": {"inmem": {}},\n  "listener": [\n    {"tcp": {"tls_disable": true}},\n' \
        '    {"tcp": {\n      "address": "nowhere",\n      "tls_disable": true}}\n  ]\n}\n'
    assert error_of(text, "v.json").startswith("v.json:6: listener.tcp.address: 'nowhere': missing port")
    assert error_of('{\n  "storage": {"inmem": {}},\n  "x": 1,\n}', "v.json").startswith("v.json:4: syntax error")


def test_load_config_reads_the_file(tmp_path: Path) -> None:
    hcl_file = tmp_path / "vaultd.hcl"
    hcl_file.write_text(WALKTHROUGH)
    config = load_config(str(hcl_file))
    assert config.path == str(hcl_file)
    assert config.storage.options["path"] == "/opt/vault/data"
    assert parse_config('{"storage": {"inmem": {}}, "listener": {"tcp": {"tls_disable": 1}}}').storage.type == "inmem"
    json_file = tmp_path / "vaultd.json"
    json_file.write_text(json.dumps({"storage": {"inmem": {}}, "listener": {"tcp": {"tls_disable": 1}}}))
    assert load_config(str(json_file)).storage.type == "inmem"


def test_load_config_missing_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.hcl")
    with pytest.raises(ConfigError, match=r"nope\.hcl: cannot read"):
        load_config(missing)


def test_dev_config_and_dev_parse() -> None:
    config = dev_config("127.0.0.1:18200")
    assert config.storage == StorageConfig("inmem", {})
    assert config.listeners == [ListenerConfig(address="127.0.0.1:18200", tls_disable=True)]
    assert config.api_addr == "http://127.0.0.1:18200"
    with pytest.raises(ConfigError):
        dev_config("localhost")
    parsed = parse_config("", dev=True)
    assert parsed.storage.type == "inmem" and parsed.listeners[0].tls_disable is True


def test_unknown_keys_warn_and_are_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    text = MINIMAL + 'plugin_directory = "/x"\nlistener "tcp" {\n  tls_disable = 1\n  tls_min_version = "tls12"\n}\n'
    with caplog.at_level(logging.WARNING, logger="vaultd.config"):
        config = parse_config(text, "vaultd.hcl")
    assert len(config.listeners) == 2
    messages = [r.getMessage() for r in caplog.records if r.name == "vaultd.config"]
    assert any("vaultd.hcl:5:" in m and "plugin_directory" in m for m in messages)
    assert any("vaultd.hcl:8:" in m and "listener.tcp.tls_min_version" in m for m in messages)


# Each bad config, and the start of the message it must give.
BAD = [
    ('storage "inmem" {}\nlistener "tcp" {\n  tls_disable = 1\n  address = "localhost"\n}\n',
     "vaultd.hcl:4: listener.tcp.address: 'localhost': missing port"),
    ('storage "inmem" {}\nlistener "tcp" {\n  tls_disable = 1\n  address = "::1:8200"\n}\n',
     "vaultd.hcl:4: listener.tcp.address: '::1:8200': IPv6 addresses must be in brackets"),
    ('storage "inmem" {}\nlistener "tcp" {\n  tls_disable = 1\n  address = "127.0.0.1:99999"\n}\n',
     "vaultd.hcl:4: listener.tcp.address: '127.0.0.1:99999': port must be"),
    ('storage "inmem" {}\nlistener "tcp" {\n  tls_disable = 1\n  address = 8200\n}\n',
     "vaultd.hcl:4: listener.tcp.address: expected a string"),
    ('storage "inmem" {}\nlistener "tcp" {\n  address = "127.0.0.1:8200"\n}\n',
     "vaultd.hcl:2: listener.tcp.tls_cert_file: TLS is enabled"),
    ('storage "inmem" {}\nlistener "tcp" {\n  tls_cert_file = "/c"\n}\n',
     "vaultd.hcl:2: listener.tcp.tls_key_file: TLS is enabled"),
    ('storage "inmem" {}\nlistener "tcp" {\n  tls_disable = "yes"\n}\n',
     "vaultd.hcl:3: listener.tcp.tls_disable: expected a boolean"),
    ('storage "inmem" {}\nlistener "unix" {\n  address = "/run/v.sock"\n}\n',
     "vaultd.hcl:2: listener.unix: unsupported listener type 'unix'"),
    ('storage "inmem" {}\n\nlistener "tcp" {\n  tls_disable = 1\n}\nlistener "tcp" {\n  address = "a:b"\n}\n',
     "vaultd.hcl:7: listener.tcp.address: 'a:b': port must be"),
    ('listener "tcp" { tls_disable = 1 }\nstorage "consul" {\n  address = "x"\n}\n',
     "vaultd.hcl:2: storage.consul: unsupported storage type 'consul'"),
    ('listener "tcp" { tls_disable = 1 }\nstorage "file" {\n}\n',
     "vaultd.hcl:2: storage.file.path: file storage needs a path"),
    ('listener "tcp" { tls_disable = 1 }\nstorage "file" {\n  path = "/a"\n}\nbackend "inmem" {}\n',
     "vaultd.hcl:5: backend.inmem: only one storage block is allowed"),
    ('listener "tcp" { tls_disable = 1 }\nstorage "file" {\n  path = ["/a"]\n}\n',
     "vaultd.hcl:3: storage.file.path: expected a string"),
    (MINIMAL + 'default_lease_ttl = "soon"\n', 'vaultd.hcl:5: default_lease_ttl: time: invalid duration "soon"'),
    (MINIMAL + 'max_lease_ttl = "-1h"\n', "vaultd.hcl:5: max_lease_ttl: time: invalid duration"),
    (MINIMAL + 'default_lease_ttl = "10h"\nmax_lease_ttl = "1h"\n',
     "vaultd.hcl:5: default_lease_ttl: is larger than max_lease_ttl"),
    (MINIMAL + 'log_level = "loud"\n', "vaultd.hcl:5: log_level: 'loud': expected one of"),
    (MINIMAL + "disable_mlock = 2\n", "vaultd.hcl:5: disable_mlock: expected a boolean"),
    (MINIMAL + "workers = 0\n", "vaultd.hcl:5: workers: must be at least 1"),
    (MINIMAL + 'threads = "many"\n', "vaultd.hcl:5: threads: expected an integer"),
    (MINIMAL + 'api_addr = "vault:8200"\n', "vaultd.hcl:5: api_addr: 'vault:8200': expected a URL"),
    (MINIMAL + 'cluster_name = "a"\ncluster_name = "b"\n', "vaultd.hcl:6: cluster_name: set more than once"),
    (MINIMAL + 'seal "transit" {\n  address = "x"\n}\n', "vaultd.hcl:5: seal.transit: unsupported seal type"),
    (MINIMAL + 'seal "awskms" {}\nseal "shamir" {}\n', "vaultd.hcl:6: seal.shamir: only one seal block"),
    (MINIMAL + 'seal "awskms" {\n  disabled = "maybe"\n}\n', "vaultd.hcl:6: seal.awskms.disabled: expected a boolean"),
    (MINIMAL + 'unsealer = "x"\n', "vaultd.hcl:5: unsealer: expected a block"),
    (MINIMAL + 'storage = "inmem"\n', 'vaultd.hcl:5: storage: expected a block like storage "TYPE"'),
    ('listener "tcp" { tls_disable = 1 }\n', "vaultd.hcl: storage: a storage block is required"),
    ('storage "inmem" {}\n', "vaultd.hcl: listener: at least one listener"),
    ('storage "inmem" {}\nlistener "tcp" {\n  address = \n}\n', "vaultd.hcl:4: syntax error: unexpected RIGHTBRACE"),
    ('storage "inmem" {}\nlistener "tcp" {\n  address = "x\n',
     "vaultd.hcl:4: syntax error: EOF before closing string quote"),
    ('storage "inmem" {}\nlistener "tcp" {\n', "vaultd.hcl:3: syntax error: unexpected end of file"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_invalid_values_name_file_line_and_key(text: str, message: str) -> None:
    assert error_of(text).startswith(message)


def test_config_error_carries_its_parts() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(MINIMAL + 'log_level = "loud"\n', "/etc/vaultd/vaultd.hcl")
    assert (info.value.source, info.value.line, info.value.key) == ("/etc/vaultd/vaultd.hcl", 5, "log_level")
    assert isinstance(info.value, Exception)


def test_secrets_are_redacted_from_reprs() -> None:
    config = parse_config(
        WALKTHROUGH
        + 'unsealer {\n  token = "s.unsealertoken"\n  address = "http://127.0.0.1:8200"\n}\n'
    )
    config.seal.options["session_token"] = "FwoGZXIvYXdzsessiontoken"
    for text in (repr(config), str(config), repr(config.seal), repr(config.unsealer)):
        assert SECRET not in text
        assert "FwoGZXIvYXdzsessiontoken" not in text
        assert "s.unsealertoken" not in text
    assert "<redacted>" in repr(config.seal)
    assert "AKIAIOSFODNN7EXAMPLE" in repr(config.seal)  # non-secret options stay readable
    assert "http://127.0.0.1:8200" in repr(config.unsealer)


@pytest.mark.parametrize(
    "seal_body",
    [
        f'  secret_key = ["{SECRET}"]\n',
        f'  session_token = {{ value = "{SECRET}" }}\n',
    ],
)
def test_secrets_stay_out_of_error_messages(seal_body: str) -> None:
    message = error_of(MINIMAL + 'seal "awskms" {\n' + seal_body + "}\n")
    assert message.startswith("vaultd.hcl:6: seal.awskms.")
    assert SECRET not in message


def test_illegal_character_is_not_quoted() -> None:
    # A mistyped, unquoted secret must not leak through the lexer's message.
    message = error_of(MINIMAL + "seal \"awskms\" {\n  secret_key = §ecret\n}\n")
    assert message.startswith("vaultd.hcl:6: syntax error: illegal character at column 16")
    assert "§" not in message


def test_config_is_a_plain_dataclass() -> None:
    config = Config(storage=StorageConfig("inmem"), listeners=[ListenerConfig()])
    assert config.threads == 8 and config.listeners[0].tls_disable is False


# -- bounds (issue 9): what Go's config cannot hold is a ConfigError, never a traceback ---------------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('default_lease_ttl = "99999999999999d"', "overflow"),
        ("max_lease_ttl = 9223372037", "overflow"),
        ('max_lease_ttl = "2562048h"', "invalid duration"),
        ("default_lease_ttl = 1e400", "out of range"),
        ('workers = "' + "9" * 5000 + '"', "out of range"),
        ("threads = 99999999999999999999", "out of range"),
        ('{"a": ' + "[" * 5000 + "]" * 5000 + "}", "nested deeper"),
        ('{"a": NaN}', "NaN"),
        ('{"storage": {"file": {"path": "\\ud800"}}}', "surrogate"),
        ('{"workers": ' + "9" * 5000 + "}", "syntax error"),
    ],
)
def test_values_go_cannot_hold_are_config_errors(text: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, dev=True)
    assert words in str(info.value)


def test_the_largest_durations_are_accepted() -> None:
    config = parse_config('max_lease_ttl = 9223372036\ndefault_lease_ttl = "2562047h"\n', dev=True)
    assert config.max_lease_ttl == 9223372036 and config.default_lease_ttl == 2562047 * 3600


def test_hcl_parses_repeatedly_with_one_parser() -> None:
    """The parser is built once per process; a syntax error must not leave
    state behind for the next parse."""
    with pytest.raises(ConfigError):
        parse_config("listener {", dev=True)
    assert parse_config("workers = 3", dev=True).workers == 3
