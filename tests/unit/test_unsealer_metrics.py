"""The agent's node_exporter textfile: its settings, its atomic, readable
writes, and that a place it cannot write never stops the agent.  What an
agent counts against a real daemon and KMS is in
tests/integration/test_autounseal.py."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from unsealer.metrics import AgentMetrics
from unsealer.settings import SettingsError, settings_from_config
from vaultd.config import parse_config

BASE = 'storage "inmem" {}\nlistener "tcp" {\n  address = "127.0.0.1:8200"\n  tls_disable = true\n}\n'


def _samples(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(path.read_text()) for s in family.samples}


def test_every_event_rewrites_the_whole_file_readable_by_node_exporter(tmp_path: Path) -> None:
    path = tmp_path / "vaultd-unsealer.prom"
    old = os.umask(0o077)  # the unit's UMask
    try:
        metrics = AgentMetrics(str(path))
        metrics.kms_call()
        metrics.kms_error("ThrottlingException")
        metrics.retry("kms")
        assert _samples(path)[("vaultd_unsealer_failing", ())] == 1
        metrics.kms_call()
        metrics.unsealed(1.5)
    finally:
        os.umask(old)
    seen = _samples(path)
    assert seen[("vaultd_unsealer_kms_calls_total", ())] == 2
    assert seen[("vaultd_unsealer_kms_errors_total", (("code", "ThrottlingException"),))] == 1
    assert seen[("vaultd_unsealer_retries_total", (("cause", "kms"),))] == 1
    assert seen[("vaultd_unsealer_retries_total", (("cause", "daemon"),))] == 0
    assert seen[("vaultd_unsealer_failing", ())] == 0
    assert seen[("vaultd_unsealer_unseal_duration_seconds", ())] == 1.5
    assert path.stat().st_mode & 0o777 == 0o644
    assert os.listdir(tmp_path) == [path.name]  # no temporary file left behind


def test_a_permanent_failure_is_named(tmp_path: Path) -> None:
    path = tmp_path / "agent.prom"
    AgentMetrics(str(path)).exiting("KMS_AUTH")
    seen = _samples(path)
    assert seen[("vaultd_unsealer_permanent_failure", (("exit_name", "KMS_AUTH"),))] == 1
    assert seen[("vaultd_unsealer_failing", ())] == 1


def test_an_unwritable_place_is_reported_once_and_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    metrics = AgentMetrics(str(tmp_path / "missing" / "agent.prom"))
    caplog.set_level(logging.WARNING, logger="vaultd.unsealer.metrics")
    metrics.kms_call()
    metrics.retry("daemon")
    assert metrics.kms_calls == 1
    assert len([r for r in caplog.records if "cannot write the metrics textfile" in r.getMessage()]) == 1


def test_settings() -> None:
    def textfile(line: str) -> str | None:
        return settings_from_config(parse_config(BASE + f"unsealer {{\n{line}\n}}\n")).metrics_textfile

    assert textfile('metrics_textfile = "/srv/textfiles/vaultd.prom"') == "/srv/textfiles/vaultd.prom"
    assert textfile('metrics_textfile = ""') is None
    for bad in ('metrics_textfile = "relative.prom"', 'metrics_textfile = "/srv/vaultd.txt"', "metrics_textfile = 1"):
        with pytest.raises(SettingsError, match="metrics_textfile"):
            textfile(bad)
