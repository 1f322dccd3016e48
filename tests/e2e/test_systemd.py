"""The Debian package under a real booted systemd: install, readiness only
when unsealed, restart and crash recovery, a KMS outage at start, the
journal, and the units' hardening.

Every unseal by the agent is checked to have gone over the private agent
channel (issue 9): the agent's current run names the unix socket, the
daemon serves it, ``/run/vaultd`` and the socket have the owner and modes
the units promise, another local user cannot reach it, and the key
endpoints answer 403 on TCP.  The agent runs under its full sandbox
(``ProtectSystem=strict``, ``PrivateUsers=yes``, its own syscall filter),
so a unit that could not reach the socket fails here.

One Debian bookworm container (``tests/e2e/nspawn.py``) boots from a cached
debootstrap; the .deb is built by ``make deb`` meanwhile (once per session:
``tests/e2e/support.py``).  The KMS emulator
(moto) and a fault proxy in front of it run on the host's loopback, which
the container shares.  The steps build on each other, as an operator's day
does, so they are one test; each prints what it measured.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.audit_steps import audit_file_rotation, audit_syslog
from tests.e2e.nspawn import Container, booted
from tests.e2e.support import (
    AGENT_SOCKET,
    DebianImage,
    Report,
    Vaultd,
    assert_unsealed_over_socket,
    save_journal,
    wait_until,
)
from tests.e2e.support import journal_text as _text
from tests.faultproxy import FaultProxy
from tests.kms_fixtures import ACCESS_KEY, SECRET_KEY, MotoServer, create_kms_key, free_port
from vaultd.logging import EVENTS

pytestmark = pytest.mark.e2e

START_TIMEOUT_FOR_TEST = 15
"""TimeoutStartSec= for the KMS-outage step (the unit ships 90 s): the test
waits past it to show EXTEND_TIMEOUT_USEC keeps a waiting daemon alive."""
SECRET_VALUE = "e2e-secret-value-4f1d9a"


def test_vaultd_under_systemd(tmp_path: Path, debian_image: DebianImage, kms: tuple[MotoServer, FaultProxy],
                              report: Report) -> None:
    for line in debian_image.describe():
        report(line)
    moto, proxy = kms
    key = create_kms_key(moto.endpoint)
    port = free_port()
    started = time.monotonic()
    with booted(debian_image.lower, tmp_path / "container") as c:
        report(f"container booted in {time.monotonic() - started:.1f} s")
        v = Vaultd(c, port)
        try:
            run_scenario(c, v, debian_image.deb, key.key_id, proxy, report)
        finally:
            save_journal(c, tmp_path / "journal.txt", report)


def run_scenario(c: Container, v: Vaultd, deb: Path, key_id: str, proxy: FaultProxy, report: Report) -> None:
    # -- apt install: returns although the server is uninitialised -----------
    shutil.copy(deb, c.path("/root") / deb.name)
    started = time.monotonic()
    install = c.run("apt-get", "install", "-y", f"/root/{deb.name}", timeout=600)
    report(f"apt-get install returned in {time.monotonic() - started:.1f} s")
    assert "--no-block" in install.stdout, install.stdout
    assert c.run("systemctl", "is-enabled", "vaultd.service").stdout.strip() == "enabled"
    state = v.wait_state("activating", "uninitialized: run vaultctl operator init", timeout=60)
    assert state["SubState"] == "start"
    agent = v.state("vaultd-unsealer.service")
    assert agent["ActiveState"] == "inactive" and agent["Result"] == "exec-condition", agent  # shamir: skipped
    assert c.run("stat", "-c", "%a %U %G", "/etc/vaultd/vaultd.hcl").stdout.split() == ["640", "root", "vaultd"]
    for name in ("/etc/default/vaultd", "/etc/default/vaultd-unsealer"):
        assert c.run("stat", "-c", "%a %U", name).stdout.split() == ["600", "root"]
    assert c.run("id", "-u", "vaultd").returncode == 0
    # A new install runs on the package's default, sqlite: the uninitialised
    # server has already made its database, private to the vaultd user.
    shipped_default = c.path("/etc/vaultd/vaultd.hcl").read_text()
    assert 'storage "sqlite" {\n  path = "/var/lib/vaultd"\n}' in shipped_default, shipped_default
    assert_sqlite_database(c)

    # -- configure seal "awskms" against the emulator, credentials in 0600 files
    c.path("/etc/vaultd/vaultd.hcl").write_text(f"""
storage "sqlite" {{
  path = "/var/lib/vaultd"
}}
listener "tcp" {{
  address     = "127.0.0.1:{v.url.rsplit(':', 1)[1]}"
  tls_disable = true
}}
log_level = "info"
workers   = 2
seal "awskms" {{
  region     = "us-east-1"
  kms_key_id = "{key_id}"
  endpoint   = "{proxy.url}"
}}
unsealer {{
  initial_backoff = "200ms"
  max_backoff     = "2s"
}}
""")
    credentials = (f"AWS_ACCESS_KEY_ID={ACCESS_KEY}\nAWS_SECRET_ACCESS_KEY={SECRET_KEY}\n"
                   "AWS_EC2_METADATA_DISABLED=true\n")
    for name in ("/etc/default/vaultd", "/etc/default/vaultd-unsealer"):
        c.path(name).write_text(credentials)  # keeps the file's 0600
    assert c.run("stat", "-c", "%a", "/etc/default/vaultd-unsealer").stdout.strip() == "600"
    before = v.state()["MainPID"]
    c.run("systemctl", "restart", "--no-block", "vaultd.service")
    v.wait_state("activating", "uninitialized", new_pid_than=before)
    v.wait_state("active", unit="vaultd-unsealer.service")  # pulled in by vaultd, condition met now

    # -- init with recovery shares: unsealed at once, READY ---------------------
    init = json.loads(v.vaultctl("operator", "init", "-recovery-shares=3", "-recovery-threshold=2",
                                 "-format=json").stdout)
    root_token = init["root_token"]
    secrets = [root_token, SECRET_VALUE, SECRET_KEY, *init["recovery_keys_hex"], *init["recovery_keys_b64"]]
    state = v.wait_state("active", "unsealed, 2 workers")
    report(f"init: unsealed by init; the agent, over {AGENT_SOCKET}: "
           f"{assert_unsealed_over_socket(c, v, by_agent=False)!r}")
    # The agent reaches the socket under its full sandbox, as shipped.
    sandbox = c.show("vaultd-unsealer.service", "ProtectSystem", "PrivateUsers", "PrivateMounts", "User",
                     "RestrictAddressFamilies")
    families = set(sandbox.pop("RestrictAddressFamilies").split())
    assert sandbox == {"ProtectSystem": "strict", "PrivateUsers": "yes", "PrivateMounts": "yes",
                       "User": "vaultd"}, sandbox
    assert families == {"AF_UNIX", "AF_INET", "AF_INET6"}, families
    headers = {"X-Vault-Token": root_token}
    requests.post(f"{v.url}/v1/sys/mounts/secret", json={"type": "kv", "options": {"version": "2"}},
                  headers=headers, timeout=10).raise_for_status()
    requests.post(f"{v.url}/v1/secret/data/e2e", json={"data": {"value": SECRET_VALUE}},
                  headers=headers, timeout=10).raise_for_status()

    def data_intact() -> None:
        response = requests.get(f"{v.url}/v1/secret/data/e2e", headers=headers, timeout=10)
        assert response.status_code == 200, response.text
        assert response.json()["data"]["data"] == {"value": SECRET_VALUE}

    data_intact()
    assert_sqlite_database(c)
    assert not c.path("/var/lib/vaultd/core").exists()  # nothing in the file backend's layout
    report("fresh install: storage sqlite, /var/lib/vaultd/vaultd.db 0600 vaultd:vaultd")

    # -- systemctl restart: blocks until READY, i.e. until unsealed -----------
    before = state["MainPID"]
    started = time.monotonic()
    c.run("systemctl", "restart", "vaultd.service", timeout=120)
    took = time.monotonic() - started
    state = v.state()
    assert state["ActiveState"] == "active" and state["MainPID"] != before, state
    assert state["StatusText"] == "unsealed, 2 workers", state
    ready = (int(state["ActiveEnterTimestampMonotonic"]) - int(state["ExecMainStartTimestampMonotonic"])) / 1e6
    report(f"systemctl restart vaultd -> READY (unsealed by the agent): {took:.2f} s "
           f"(systemd: exec to READY {ready:.2f} s)")
    report(f"  over the socket: {assert_unsealed_over_socket(c, v)!r}")
    data_intact()

    # -- kill -9 the main PID: systemd restarts it, the agent unseals it -------
    before, restarts = state["MainPID"], int(state["NRestarts"])
    started = time.monotonic()
    c.run("sh", "-c", f"kill -9 {before}")
    state = v.wait_state("active", "unsealed", new_pid_than=before)
    took = time.monotonic() - started
    assert int(state["NRestarts"]) == restarts + 1, state
    report(f"kill -9 {before} -> restarted and READY again in {took:.2f} s (NRestarts {state['NRestarts']})")
    report(f"  over the socket: {assert_unsealed_over_socket(c, v)!r}")
    data_intact()

    # -- systemctl reload: RELOADING=1 ... READY=1, log level re-read ----------
    config = c.path("/etc/vaultd/vaultd.hcl")
    config.write_text(config.read_text().replace('log_level = "info"', 'log_level = "debug"'))
    cursor = v.cursor()
    c.run("systemctl", "reload", "vaultd.service", timeout=60)
    wait_until(lambda: "log level debug" in v.journal("-u", "vaultd", f"--after-cursor={cursor}"),
               "the reload to be logged")
    after = v.wait_state("active", "unsealed")
    assert after["MainPID"] == state["MainPID"] and after["NRestarts"] == state["NRestarts"], after

    # -- a config from before the socket, naming a TCP agent address, still
    #    unseals (with a warning from both ends); back to the default after --
    shipped = config.read_text()
    config.write_text(shipped.replace("unsealer {", f'unsealer {{\n  address = "{v.url}"', 1))
    # Deliberate restarts in quick succession: clear StartLimitBurst=5's count.
    reset_start_limits = ("systemctl", "reset-failed", "vaultd.service", "vaultd-unsealer.service")
    c.run(*reset_start_limits)
    c.run("systemctl", "restart", "vaultd.service", timeout=120)
    v.wait_state("active", "unsealed")
    boot_id = requests.get(f"{v.url}/v1/sys/vaultd/state", timeout=10).json()["boot_id"]
    wait_until(lambda: any(_text(e.get("MESSAGE", "")).startswith(f"unsealed the daemon (boot {boot_id})")
                           for e in v.current_run("vaultd-unsealer.service")), "the agent to unseal over TCP")
    agent_said = [_text(e.get("MESSAGE", "")) for e in v.current_run("vaultd-unsealer.service")]
    assert f"watching {v.url} (seal awskms)" in agent_said, agent_said
    assert any(line.startswith(f"unsealer.address is the TCP address {v.url}") for line in agent_said), agent_said
    assert not c.path(AGENT_SOCKET).exists()  # not served on the socket then
    assert requests.get(f"{v.url}/v1/sys/vaultd/stored-key", timeout=10).status_code == 200  # the weaker mode
    with pytest.raises(AssertionError):  # the socket check tells the two apart
        assert_unsealed_over_socket(c, v)
    report("explicit TCP agent address (an older config): unsealed over TCP, with warnings")
    config.write_text(shipped)
    c.run(*reset_start_limits)
    c.run("systemctl", "restart", "vaultd.service", timeout=120)
    after = v.wait_state("active", "unsealed")
    report(f"  back to the default: {assert_unsealed_over_socket(c, v)!r}")

    # -- a dependent unit, and KMS down while vaultd restarts -------------------
    c.path("/etc/systemd/system/vaultd-consumer.service").write_text(f"""[Unit]
Description=needs secrets from vaultd
Requires=vaultd.service
After=vaultd.service

[Service]
Type=oneshot
RemainAfterExit=yes
# (no % in here: systemd would expand it as a specifier)
ExecStart=/usr/bin/python3 -c "import json, sys, urllib.request; \\
s = json.load(urllib.request.urlopen('{v.url}/v1/sys/seal-status')); \\
print('consumer saw sealed=' + str(s['sealed'])); sys.exit(1 if s['sealed'] else 0)"
""")
    dropin = c.path("/etc/systemd/system/vaultd.service.d/e2e-start-timeout.conf")
    dropin.parent.mkdir(parents=True, exist_ok=True)
    dropin.write_text(f"[Service]\nTimeoutStartSec={START_TIMEOUT_FOR_TEST}s\n")
    c.run("systemctl", "daemon-reload")

    proxy.go_down()
    cursor = v.cursor()
    before = after["MainPID"]
    restarted_at = time.monotonic()
    c.run("systemctl", "restart", "--no-block", "vaultd.service")
    state = v.wait_state("activating", "sealed: waiting for unsealer", new_pid_than=before)
    c.run("systemctl", "start", "--no-block", "vaultd-consumer.service")

    def kms_warnings() -> list[str]:
        out = v.journal("-u", "vaultd-unsealer", "-p", "warning", f"--after-cursor={cursor}", "-o", "cat")
        return [line for line in out.splitlines() if "KMS" in line]

    warnings = wait_until(lambda: len(kms_warnings()) >= 3 and kms_warnings(), "the agent's KMS warnings")
    # Past the start timeout: only EXTEND_TIMEOUT_USEC keeps the unit alive.
    time.sleep(max(0.0, START_TIMEOUT_FOR_TEST + 5 - (time.monotonic() - restarted_at)))
    during = v.state()
    assert during["ActiveState"] == "activating", during
    # (a manual restart resets NRestarts; an automatic one would raise it)
    assert during["MainPID"] == state["MainPID"] and during["NRestarts"] == state["NRestarts"], during
    assert during["StatusText"] == "sealed: waiting for unsealer", during
    consumer = v.state("vaultd-consumer.service")
    assert consumer["ActiveState"] == "inactive", consumer
    assert "vaultd-consumer.service" in c.run("systemctl", "list-jobs", "--no-legend").stdout
    report(f"KMS down: vaultd still activating after {time.monotonic() - restarted_at:.0f} s "
           f"(TimeoutStartSec={START_TIMEOUT_FOR_TEST}s), NRestarts {during['NRestarts']}, "
           f"{len(kms_warnings())} agent warnings, e.g. {warnings[0]!r}")

    proxy.come_up()
    back = time.monotonic()
    state = v.wait_state("active", "unsealed", timeout=60)
    report(f"KMS back -> vaultd active and unsealed in {time.monotonic() - back:.2f} s")
    report(f"  over the socket: {assert_unsealed_over_socket(c, v)!r}")
    consumer = v.wait_state("active", unit="vaultd-consumer.service", timeout=60)
    assert int(consumer["ExecMainStartTimestampMonotonic"]) >= int(state["ActiveEnterTimestampMonotonic"])
    assert "consumer saw sealed=False" in v.journal("-u", "vaultd-consumer", "-o", "cat")
    data_intact()

    # -- operator seal: stays sealed (and the unit active) until a restart ------
    v.vaultctl("operator", "seal", token=root_token)
    state = v.wait_state("active", "sealed by operator")
    wait_until(lambda: "sealed by an operator" in v.journal("-u", "vaultd-unsealer", "-p", "warning", "-o", "cat"),
               "the agent's warning about the operator seal")
    assert v.state()["StatusText"] == "sealed by operator"

    # -- upgrade (reinstall): an auto-unsealed server is restarted, no wait -----
    before = state["MainPID"]
    started = time.monotonic()
    upgrade = c.run("apt-get", "install", "-y", "--reinstall", f"/root/{deb.name}", timeout=600)
    report(f"apt-get install --reinstall returned in {time.monotonic() - started:.1f} s")
    assert "try-restart" in upgrade.stdout, upgrade.stdout
    v.wait_state("active", "unsealed", new_pid_than=before)
    report(f"  over the socket: {assert_unsealed_over_socket(c, v)!r}")
    data_intact()
    assert_sqlite_database(c)

    # -- audit devices: syslog into journald, a file rotated by logrotate --------
    audit_syslog(v, headers, SECRET_VALUE, secrets, report)
    audit_file_rotation(c, v, headers, secrets, report)

    # -- the journal: MESSAGE_IDs, priorities, fields, no secrets ---------------
    entries = [json.loads(line) for line in v.journal("-o", "json").splitlines() if line.strip()]
    check_journal(entries, secrets)
    raw = c.run("journalctl", "--no-pager", "-o", "export", errors="replace").stdout  # the secrets are ASCII
    for secret in secrets:
        assert secret not in raw, "a secret is in the journal"
    report(f"journal: {len(entries)} entries, lifecycle MESSAGE_IDs present, none of "
           f"{len(secrets)} secrets found")

    # -- hardening ---------------------------------------------------------------
    scores = {}
    for unit in ("vaultd.service", "vaultd-unsealer.service"):
        out = c.run("systemd-analyze", "security", "--no-pager", unit).stdout
        match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out)
        assert match, out
        scores[unit] = float(match.group(1))
    report("systemd-analyze security: " + ", ".join(f"{u} {s}" for u, s in scores.items()))
    assert all(score <= 2.0 for score in scores.values()), scores
    assert c.run("systemctl", "is-failed", "vaultd-unsealer.service", check=False).stdout.strip() != "failed"

    # -- remove keeps the state, purge deletes it ---------------------------------
    c.run("apt-get", "remove", "-y", "vaultd", timeout=300)
    assert v.state()["ActiveState"] in ("inactive", "failed")
    assert c.path("/var/lib/vaultd").is_dir()
    c.run("apt-get", "purge", "-y", "vaultd", timeout=300)
    assert not c.path("/var/lib/vaultd").exists()
    assert not c.path("/etc/default/vaultd-unsealer").exists()

    # -- a shamir-sealed server is not restarted by an upgrade --------------------
    c.run("apt-get", "install", "-y", f"/root/{deb.name}", timeout=600)
    config = c.path("/etc/vaultd/vaultd.hcl")  # the shipped default: shamir, on our port
    config.write_text(config.read_text().replace("127.0.0.1:8200", v.url.removeprefix("http://")))
    c.run("systemctl", "restart", "--no-block", "vaultd.service")
    v.wait_state("activating", "uninitialized")
    init = json.loads(v.vaultctl("operator", "init", "-key-shares=1", "-key-threshold=1", "-format=json").stdout)
    v.wait_state("activating", "sealed: 0/1 key shares")
    v.vaultctl("operator", "unseal", init["unseal_keys_b64"][0])
    state = v.wait_state("active", "unsealed")
    upgrade = c.run("apt-get", "install", "-y", "--reinstall", f"/root/{deb.name}", timeout=600)
    assert "NOT restarting" in upgrade.stdout, upgrade.stdout
    after = v.state()
    assert after["MainPID"] == state["MainPID"] and after["StatusText"].startswith("unsealed"), after
    report("upgrade of a shamir-sealed server: left running and unsealed, not restarted")

    upgrade_from_file(c, v, deb, shipped_default, report)


def assert_sqlite_database(c: Container) -> None:
    """The sqlite backend's one database, private to the service's user."""
    database = "/var/lib/vaultd/vaultd.db"
    assert c.path(database).is_file(), "no sqlite database in /var/lib/vaultd"
    assert c.run("stat", "-c", "%a %U %G", database).stdout.split() == ["600", "vaultd", "vaultd"]


def upgrade_from_file(c: Container, v: Vaultd, deb: Path, shipped_default: str, report: Report) -> None:
    """A server that ran on the old default (storage "file") gets the new
    default config (storage "sqlite") over it, as dpkg does to an unmodified
    conffile on upgrade: after the restart it serves its data with the file
    backend, says so in the journal, and makes no empty database."""
    c.run("apt-get", "purge", "-y", "vaultd", timeout=300)
    c.run("apt-get", "install", "-y", f"/root/{deb.name}", timeout=600)
    c.run("systemctl", "stop", "vaultd.service", timeout=120)
    c.run("rm", "-rf", "/var/lib/vaultd/vaultd.db", "/var/lib/vaultd/vaultd.db-wal", "/var/lib/vaultd/vaultd.db-shm")
    ours = shipped_default.replace("127.0.0.1:8200", v.url.removeprefix("http://"))
    config = c.path("/etc/vaultd/vaultd.hcl")
    config.write_text(ours.replace('storage "sqlite" {', 'storage "file" {', 1))
    c.run("systemctl", "reset-failed", "vaultd.service", check=False)
    c.run("systemctl", "start", "--no-block", "vaultd.service")
    v.wait_state("activating", "uninitialized")
    init = json.loads(v.vaultctl("operator", "init", "-key-shares=1", "-key-threshold=1", "-format=json").stdout)
    v.vaultctl("operator", "unseal", init["unseal_keys_b64"][0])
    state = v.wait_state("active", "unsealed")
    headers = {"X-Vault-Token": init["root_token"]}
    requests.post(f"{v.url}/v1/sys/mounts/old", json={"type": "kv", "options": {"version": "2"}},
                  headers=headers, timeout=10).raise_for_status()
    requests.post(f"{v.url}/v1/old/data/kept", json={"data": {"value": "from-file"}},
                  headers=headers, timeout=10).raise_for_status()
    assert c.path("/var/lib/vaultd/core/_seal-config").is_file()
    assert not c.path("/var/lib/vaultd/vaultd.db").exists()

    config.write_text(ours)  # the new default, as the upgrade installs it
    cursor = v.cursor()
    c.run("systemctl", "restart", "--no-block", "vaultd.service")
    v.wait_state("activating", "sealed: 0/1 key shares", new_pid_than=state["MainPID"])
    v.vaultctl("operator", "unseal", init["unseal_keys_b64"][0])
    v.wait_state("active", "unsealed")
    response = requests.get(f"{v.url}/v1/old/data/kept", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["data"]["data"] == {"value": "from-file"}
    assert not c.path("/var/lib/vaultd/vaultd.db").exists()
    warning = ("found file-backend data in /var/lib/vaultd; serving it with the file backend; "
               "run vaultd operator migrate to move it to sqlite")
    entries = [json.loads(line) for line in v.journal(f"--after-cursor={cursor}", "-o", "json").splitlines()
               if line.strip()]
    said = [e for e in entries if _text(e.get("MESSAGE", "")) == warning]
    assert said, [_text(e.get("MESSAGE", "")) for e in entries]
    assert said[0].get("PRIORITY") == "4" and said[0].get("_SYSTEMD_UNIT") == "vaultd.service", {
        k: said[0].get(k) for k in ("PRIORITY", "_SYSTEMD_UNIT", "SYSLOG_IDENTIFIER", "_PID", "LOGGER")
    }
    report("upgrade from file: the new default config (sqlite) serves the file data, with the warning")


def check_journal(entries: list[dict[str, Any]], secrets: list[str]) -> None:
    def find(event: str, identifier: str, priority: str) -> list[dict[str, Any]]:
        message_id = EVENTS[event].message_id
        return [e for e in entries if e.get("MESSAGE_ID") == message_id
                and e.get("SYSLOG_IDENTIFIER") == identifier and e.get("PRIORITY") == priority]

    expected = [
        ("sealed", "vaultd", "6", "vaultd.service"),
        ("init", "vaultd", "6", "vaultd.service"),
        ("unsealed", "vaultd", "6", "vaultd.service"),
        ("operator_seal", "vaultd", "4", "vaultd.service"),
        ("kms_error", "vaultd-unsealer", "4", "vaultd-unsealer.service"),
    ]
    for event, identifier, priority, unit in expected:
        found = find(event, identifier, priority)
        assert found, f"no {event} entry (MESSAGE_ID {EVENTS[event].message_id}, priority {priority})"
        assert all(e.get("_SYSTEMD_UNIT") == unit for e in found), found[0]
    kms = find("kms_error", "vaultd-unsealer", "4")[0]
    assert kms.get("KMS_ERROR_CODE") and kms.get("ATTEMPT") and kms.get("RETRY_DELAY_SEC"), kms
    unsealed_by = {e.get("UNSEALED_BY") for e in find("unsealed", "vaultd", "6")}
    assert {"init", "unsealer"} <= unsealed_by, unsealed_by
    # The TCP probes of the key endpoints were refused and logged; the agent
    # never refused its socket (it would have exited with code 7).
    refused = [e for e in entries if e.get("MESSAGE_ID") == EVENTS["agent_channel_refused"].message_id]
    assert refused and all(e.get("SYSLOG_IDENTIFIER") == "vaultd" and e.get("TRANSPORT") == "tcp"
                           for e in refused), refused
    ours = [e for e in entries if e.get("SYSLOG_IDENTIFIER") in ("vaultd", "vaultd-unsealer")]
    assert any(e.get("LOGGER", "").startswith("gunicorn") for e in ours), "gunicorn's log is not in the journal"
    for entry in ours:
        message = _text(entry.get("MESSAGE", ""))
        assert not re.match(r"\[?\d{4}-\d\d-\d\d[ T]\d\d:\d\d", message), f"a second timestamp: {message!r}"
        for secret in secrets:
            assert secret not in message
