"""The operators' kit in docs/monitoring: the alert rules pass promtool (its
syntax check and the rule unit tests in data/vaultd-alerts-test.yml), and
every vaultd metric the rules and the dashboard name is one that vaultd or
its agent really exports, so a renamed metric cannot leave an alert that
never fires."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from unsealer.metrics import AgentMetrics
from vaultd import metrics
from vaultd.api.sys_metrics import gauges
from vaultd.core.core import Core, CoreSettings
from vaultd.core.seal_state import SharedSealState
from vaultd.server import dev_bootstrap
from vaultd.storage.inmem import InmemStorage

ROOT = Path(__file__).resolve().parents[2]
KIT = ROOT / "docs" / "monitoring"
RULES = KIT / "vaultd-alerts.yml"
DASHBOARD = KIT / "vaultd-dashboard.json"
RULE_TESTS = Path(__file__).parent / "data" / "vaultd-alerts-test.yml"
NAME = re.compile(r"\bvaultd_[a-z_]+")
SUFFIXES = ("_bucket", "_count", "_sum", "_total")


def _promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus; make test installs it)")
    return subprocess.run([promtool, *args], capture_output=True, text=True, check=False, cwd=cwd, timeout=120)


def test_promtool_checks_the_rules() -> None:
    result = _promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_the_alerts_fire_when_they_should() -> None:
    result = _promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def _exported() -> set[str]:
    """Every sample name vaultd's scrape and the agent's textfile hold."""
    metrics.use_directory(None)
    try:
        core = Core(InmemStorage(), SharedSealState.create(lock_memory=False), CoreSettings())
        dev_bootstrap(core)
        current = metrics.instruments()
        current.request_done("GET", "sys", "200", 0.001)
        current.storage_done("get", 0.001)
        current.audit_entry("file/", written=True)
        current.audit_entry("file/", written=False)
        families: list[Any] = metrics.scrape(lambda: gauges(core))
    finally:
        metrics.use_directory(None)
    agent = AgentMetrics(None)
    agent.kms_error("ThrottlingException")
    agent.unsealed(1.0)
    agent.exiting("KMS_AUTH")
    families += agent.families()
    return {sample.name for family in families for sample in family.samples}


def _named(text: str) -> set[str]:
    return set(NAME.findall(text))


def test_rules_and_dashboard_name_only_exported_metrics() -> None:
    exported = _exported()
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = " ".join(target["expr"] for panel in dashboard["panels"] for target in panel["targets"])
    named = _named(RULES.read_text()) | _named(exprs) | _named(json.dumps(dashboard["templating"]))
    assert named, "no vaultd metric named at all"
    families = {name.removesuffix(suffix) for name in exported for suffix in SUFFIXES if name.endswith(suffix)}
    # A name ending in "_" is a prefix in prose ("vaultd_unsealer_*").
    missing = sorted(name for name in named if name not in exported | families and not name.endswith("_"))
    assert not missing, f"named but never exported: {missing}"
    # And the ones operators most need are used.
    for needed in ("vaultd_core_unsealed", "vaultd_http_requests_total", "vaultd_unsealer_kms_errors_total",
                   "vaultd_audit_entries_failed_total", "vaultd_unsealer_failing"):
        assert needed in named
