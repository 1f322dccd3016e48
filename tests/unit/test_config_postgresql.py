"""``storage "postgresql"`` in the config: Vault's keys, what is refused and
why, and a connection URL that never shows (it may hold a password)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vaultd.config import ConfigError, load_migration_config, parse_config
from vaultd.storage.postgresql import connection_string, split_row

LISTENER = 'listener "tcp" {\n  address = "127.0.0.1:8200"\n  tls_disable = true\n}\n'
URL = "postgresql://vault:s3cret-pw@db.example:5432/vault?sslmode=require"


def config(body: str) -> str:
    return f'storage "postgresql" {{\n{body}\n}}\n{LISTENER}'


def test_vault_keys_parse() -> None:
    parsed = parse_config(config(f'  connection_url = "{URL}"\n  table = "kv"\n  max_parallel = 4\n'
                                 '  ha_enabled = "false"\n  ha_table = "vault_ha_locks"'))
    assert parsed.storage.type == "postgresql"
    assert parsed.storage.options == {"connection_url": URL, "table": "kv", "max_parallel": "4",
                                      "ha_enabled": "false", "ha_table": "vault_ha_locks"}
    assert "s3cret-pw" not in repr(parsed.storage) and "s3cret-pw" not in repr(parsed)


def test_connection_url_may_come_from_the_environment() -> None:
    assert parse_config(config("")).storage.options == {}


@pytest.mark.parametrize(("body", "key", "reason"), [
    ('  ha_table = "locks; DROP TABLE x"', "ha_table", "must be a table name"),
    ('  ha_enabled = "maybe"', "ha_enabled", "expected a boolean"),
    ("  max_parallel = 0", "max_parallel", "must be at least 1"),
    ('  max_parallel = "lots"', "max_parallel", "expected an integer"),
    ('  table = "kv; DROP TABLE x"', "table", "must be a table name"),
    ('  table = ""', "table", "must be a table name"),
])
def test_bad_values_are_refused_with_the_key(body: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(config(body), "vaultd.hcl")
    assert info.value.key == f"storage.postgresql.{key}"
    assert reason in info.value.reason
    assert info.value.line == 2


@pytest.mark.parametrize("value", ['"true"', "true", '"1"'])
def test_ha_enabled_needs_api_addr(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(config(f"  ha_enabled = {value}"), "vaultd.hcl")
    assert info.value.key == "api_addr"
    assert "ha_enabled needs api_addr" in info.value.reason
    parsed = parse_config(config(f"  ha_enabled = {value}") + '\napi_addr = "http://10.0.0.1:8200"\n'
                          'cluster_addr = "https://10.0.0.1:8201"\n', "vaultd.hcl")
    assert parsed.ha_enabled and parsed.storage.options["ha_enabled"] == "true"
    assert parsed.cluster_addr == "https://10.0.0.1:8201"


def test_unknown_keys_warned_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING"):
        parsed = parse_config(config('  max_idle_connections = 3'))
    assert parsed.storage.options == {}
    assert any("max_idle_connections" in r.getMessage() for r in caplog.records)


def test_migration_config_accepts_postgresql(tmp_path: Path) -> None:
    path = tmp_path / "migrate.hcl"
    path.write_text(f'storage_source "sqlite" {{\n  path = "/var/lib/vaultd"\n}}\n'
                    f'storage_destination "postgresql" {{\n  connection_url = "{URL}"\n}}\n')
    parsed = load_migration_config(str(path))
    assert parsed.destination.type == "postgresql"
    assert parsed.destination.options["connection_url"] == URL


def test_connection_string_adds_vaultd_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VAULT_PG_CONNECTION_URL", raising=False)
    text = connection_string("host=db dbname=vault connect_timeout=9")
    assert "application_name=vaultd" in text and "connect_timeout=9" in text
    assert "connect_timeout=5" in connection_string("host=db")
    monkeypatch.setenv("VAULT_PG_CONNECTION_URL", "host=fromenv")
    assert "host=fromenv" in connection_string("host=db")
    with pytest.raises(ValueError) as info:
        monkeypatch.setenv("VAULT_PG_CONNECTION_URL", "password='s3cret-pw")
        connection_string(None)
    assert "s3cret-pw" not in str(info.value)


@pytest.mark.parametrize(("key", "row"), [
    ("foo", ("", "/", "foo")),
    ("foo/bar", ("/", "/foo/", "bar")),
    ("foo/bar/baz", ("/foo/", "/foo/bar/", "baz")),
    ("a/b/c/d", ("/a/b/", "/a/b/c/", "d")),
])
def test_rows_are_laid_out_as_vault_does(key: str, row: tuple[str, str, str]) -> None:
    assert split_row(key) == row
