"""The unit files and their helper, checked against the code they describe.

The booted-systemd behaviour is tested end to end in tests/e2e; these catch
the drift that would otherwise only show there (or in production): an exit
code added to the agent but not to RestartPreventExitStatus=, an ordering
that would deadlock, a hardening setting dropped."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from unsealer import exitcodes

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "systemd"
HAS_AUTO_SEAL = UNITS / "has_auto_seal.py"


def unit(name: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as section -> key -> values (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in (UNITS / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def test_permanent_exit_codes_stop_restarts() -> None:
    agent = unit("vaultd-unsealer.service")["Service"]
    listed = {int(code) for code in agent["RestartPreventExitStatus"][0].split()}
    assert listed == set(exitcodes.PERMANENT)
    assert agent["Restart"] == ["on-failure"]


def test_the_agent_socket_lives_in_the_daemon_s_private_runtime_directory() -> None:
    """The default socket (/run/vaultd/unseal.sock, used when the config names
    no unsealer.address) is inside the daemon's RuntimeDirectory, which only
    the vaultd user can enter; the agent runs as that same user, with no
    XDG_RUNTIME_DIR that would move the default elsewhere."""
    from vaultd.agent_channel import default_socket_path

    daemon = unit("vaultd.service")["Service"]
    agent = unit("vaultd-unsealer.service")["Service"]
    assert daemon["RuntimeDirectory"] == ["vaultd"]
    assert daemon["RuntimeDirectoryMode"] == ["0700"]
    assert "RuntimeDirectoryPreserve" not in daemon
    assert default_socket_path(environ={}) == "/run/vaultd/unseal.sock"
    assert agent["User"] == daemon["User"] and agent["Group"] == daemon["Group"]
    assert agent["RuntimeDirectory"] != daemon["RuntimeDirectory"]
    assert "AF_UNIX" in agent["RestrictAddressFamilies"][0].split()
    for service in (daemon, agent):
        assert not any("XDG_RUNTIME_DIR" in v for v in service.get("Environment", []))


def test_no_deadlock_between_daemon_and_agent() -> None:
    """vaultd is ready only once the agent unsealed it: the agent must not
    be ordered after (or require) vaultd, only be part of it."""
    agent = unit("vaultd-unsealer.service")["Unit"]
    daemon = unit("vaultd.service")["Unit"]
    assert not any("vaultd.service" in v for key in ("After", "Requires", "BindsTo") for v in agent.get(key, []))
    assert agent["PartOf"] == ["vaultd.service"]
    assert "vaultd-unsealer.service" in " ".join(daemon["Wants"]).split()
    assert not any("vaultd-unsealer" in v for key in ("After", "Before", "Requires") for v in daemon.get(key, []))


def test_readiness_and_start_timeout() -> None:
    service = unit("vaultd.service")["Service"]
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    timeout = service["TimeoutStartSec"][0]
    assert timeout.endswith("s") and timeout != "infinity"  # EXTEND_TIMEOUT_USEC does the waiting


@pytest.mark.parametrize("name", ["vaultd.service", "vaultd-unsealer.service"])
def test_hardening(name: str) -> None:
    service = unit(name)["Service"]
    expected = {
        "User": "vaultd", "UMask": "0077", "LimitCORE": "0", "MemorySwapMax": "0", "NoNewPrivileges": "yes",
        "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes", "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes", "ProtectControlGroups": "yes",
        "ProtectClock": "yes", "RestrictNamespaces": "yes", "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    }
    for key, value in expected.items():
        assert service.get(key) == [value], key
    assert service["SystemCallFilter"][0] == "@system-service"
    credentials = service["EnvironmentFile"][0]
    assert credentials.startswith("-/etc/default/")  # never credentials in the unit itself
    assert not any(key.startswith("Environment") and key != "EnvironmentFile" for key in service)


@pytest.mark.parametrize("name", ["vaultd.service", "vaultd-unsealer.service", "vaultd-snapshot.service"])
def test_exposure_score(name: str) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(UNITS / name)],
                            capture_output=True, text=True, check=False)
    line = next((ln for ln in result.stdout.splitlines() if "Overall exposure level" in ln), None)
    assert line is not None, result.stdout + result.stderr
    assert float(line.split(":")[1].split()[0]) <= 2.0, line


def run_has_auto_seal(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(HAS_AUTO_SEAL), str(config)], capture_output=True, text=True,
                          check=False, cwd=ROOT)


def test_agent_runs_only_with_an_auto_seal(tmp_path: Path) -> None:
    listener = 'listener "tcp" {\n  address = "127.0.0.1:8200"\n  tls_disable = true\n}\n'
    storage = 'storage "file" {\n  path = "/var/lib/vaultd"\n}\n'
    shamir = tmp_path / "shamir.hcl"
    shamir.write_text(storage + listener)
    awskms = tmp_path / "awskms.hcl"
    awskms.write_text(storage + listener + 'seal "awskms" {\n  region = "us-east-1"\n  kms_key_id = "alias/x"\n}\n')
    broken = tmp_path / "broken.hcl"
    broken.write_text("storage {")
    assert run_has_auto_seal(awskms).returncode == 0
    skipped = run_has_auto_seal(shamir)
    assert skipped.returncode == 1 and "not needed" in skipped.stderr
    # Unreadable or invalid: start the agent, so it reports the error loudly.
    assert run_has_auto_seal(broken).returncode == 0
    assert run_has_auto_seal(tmp_path / "missing.hcl").returncode == 0


def test_shipped_config_is_valid_and_shamir(tmp_path: Path) -> None:
    """The package's default config loads, and (no seal stanza) skips the agent."""
    from vaultd.config import load_config

    shipped = ROOT / "packaging/debian/conf/vaultd.hcl"
    config = load_config(str(shipped))
    # New installs default to sqlite (issue 11); an upgrade keeps an edited config.
    assert config.storage.type == "sqlite" and config.storage.options["path"] == "/var/lib/vaultd"
    assert [item.address for item in config.listeners] == ["127.0.0.1:8200"]
    assert config.seal is None
    assert run_has_auto_seal(shipped).returncode == 1
    # Its commented awskms example works once uncommented.
    text = shipped.read_text()
    lines = text.splitlines()
    start = lines.index('# seal "awskms" {')
    end = lines.index("# }", start)
    example = "\n".join(line[2:] for line in lines[start:end + 1])
    (tmp_path / "auto.hcl").write_text(text + "\n" + example + "\n")
    config = load_config(str(tmp_path / "auto.hcl"))
    assert config.seal is not None and config.seal.type == "awskms"
    assert config.seal.options["kms_key_id"] == "alias/vaultd"


def test_snapshot_timer_saves_daily_with_a_root_only_token() -> None:
    """The backup pair: a daily timer (shipped disabled, see the rules) that
    starts a oneshot running the vaultctl command that exists, with the token
    handed over as a credential from a root-only file, never in the unit."""
    from vaultd.cli.main import COMMANDS

    timer = unit("vaultd-snapshot.timer")
    assert timer["Timer"]["OnCalendar"] == ["daily"] and timer["Timer"]["Persistent"] == ["true"]
    assert timer["Install"]["WantedBy"] == ["timers.target"]
    service = unit("vaultd-snapshot.service")
    assert "Install" not in service  # static: only the timer starts it
    body = service["Service"]
    assert body["Type"] == ["oneshot"]
    assert body["LoadCredential"] == ["token:/etc/vaultd/snapshot.token"]
    assert service["Unit"]["ConditionPathExists"] == ["/etc/vaultd/snapshot.token"]
    assert not any("VAULT_TOKEN=" in v for v in body.get("Environment", []))
    command = body["ExecStart"][0]
    assert "vaultctl operator snapshot save -renew-token" in command and "/var/backups/vaultd/" in command
    assert ("operator", "snapshot", "save") in COMMANDS
    assert body["ReadWritePaths"] == ["/var/backups/vaultd"]
    assert body["UMask"] == ["0077"] and body["ProtectSystem"] == ["strict"] and body["CapabilityBoundingSet"] == [""]
    rules = (ROOT / "packaging/debian/rules").read_text()
    for name in ("vaultd-snapshot.service", "vaultd-snapshot.timer"):
        assert f"systemd/{name} debian/vaultd/lib/systemd/system/{name}" in rules
    disabled = next(line for line in rules.splitlines() if "--no-enable" in line)
    assert "vaultd-snapshot.timer" in disabled
    enabled = next(line for line in rules.splitlines() if "--no-restart-after-upgrade" in line and "dh_" in line)
    assert "vaultd-snapshot" not in enabled
