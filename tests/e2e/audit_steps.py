"""The e2e test's audit steps (issue 12): a syslog device seen through
``journalctl -t vaultd-audit``, and a file device in /var/log/vaultd that
the package's logrotate config rotates under load without losing an entry.

Run by :func:`tests.e2e.test_systemd.run_scenario` on an unsealed server
with a root token; each step disables its device again.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from tests.integration.support import wait_for

if TYPE_CHECKING:
    from tests.e2e.nspawn import Container
    from tests.e2e.support import Report, Vaultd


def wait_until(condition: Any, what: str, timeout: float) -> Any:
    return wait_for(condition, what, timeout=timeout, interval=0.2)


def _text(value: object) -> str:
    """``journalctl -o json`` gives a value that is not UTF-8 as a byte array."""
    if isinstance(value, list):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


AUDIT_FILE = "/var/log/vaultd/audit.log"
"""Where the README enables the file device: the unit's LogsDirectory=, which
the package's /etc/logrotate.d/vaultd rotates."""


def _audit_hash(v: Vaultd, headers: dict[str, str], device: str, value: str) -> str:
    response = requests.post(f"{v.url}/v1/sys/audit-hash/{device}", json={"input": value}, headers=headers,
                             timeout=10)
    response.raise_for_status()
    return str(response.json()["data"]["hash"])


def audit_syslog(v: Vaultd, headers: dict[str, str], value: str, secrets: list[str],
                 report: Report) -> None:
    """A syslog device lands in journald under its own identifier
    (``journalctl -t vaultd-audit``), attributed to the unit: a request and a
    response entry for a write and a read, the written value and the token
    only as the device's HMAC (``sys/audit-hash`` gives the same).  No
    cursor: journalctl 252 finds nothing for ``-t`` with ``--after-cursor``,
    and this is the first device the container's vaultd ever had."""
    requests.put(f"{v.url}/v1/sys/audit/syslog", json={"type": "syslog"}, headers=headers,
                 timeout=10).raise_for_status()
    path = "secret/data/e2e-audited"
    requests.post(f"{v.url}/v1/{path}", json={"data": {"value": value}}, headers=headers,
                  timeout=10).raise_for_status()
    requests.get(f"{v.url}/v1/{path}", headers=headers, timeout=10).raise_for_status()

    def logged() -> list[dict[str, Any]] | None:
        out = v.journal("-t", "vaultd-audit", "-o", "json")
        entries = [json.loads(line) for line in out.splitlines() if line.strip()]
        ours = [(e, json.loads(_text(e["MESSAGE"]))) for e in entries]
        kinds = {(body["type"], body["request"]["operation"]) for _, body in ours
                 if body["request"]["path"] == path}
        return entries if len(kinds) == 4 else None

    entries = wait_until(logged, f"journalctl -t vaultd-audit to show the write and the read of {path}", timeout=30)
    assert all(e.get("_SYSTEMD_UNIT") == "vaultd.service" and e.get("SYSLOG_FACILITY") == "4" for e in entries), \
        {k: entries[0].get(k) for k in ("_SYSTEMD_UNIT", "SYSLOG_FACILITY", "SYSLOG_IDENTIFIER")}
    bodies = [json.loads(_text(e["MESSAGE"])) for e in entries]
    write = next(b for b in bodies if b["type"] == "request" and b["request"]["path"] == path
                 and b["request"]["operation"] == "update")
    assert write["request"]["data"] == {"data": {"value": _audit_hash(v, headers, "syslog", value)}}, write
    assert write["auth"]["client_token"] == _audit_hash(v, headers, "syslog", headers["X-Vault-Token"]), write
    raw = "\n".join(_text(e["MESSAGE"]) for e in entries)
    for secret in secrets:
        assert secret not in raw, "a secret is in clear in an audit entry"
    requests.delete(f"{v.url}/v1/sys/audit/syslog", headers=headers, timeout=10).raise_for_status()
    report(f"audit: syslog device -> journalctl -t vaultd-audit: {len(entries)} entries, hashed, "
           "attributed to vaultd.service")


def audit_file_rotation(c: Container, v: Vaultd, headers: dict[str, str], secrets: list[str],
                        report: Report) -> None:
    """A file device in /var/log/vaultd, 0600 and the service user's, rotated
    by the package's logrotate config (run as cron would, forced) while
    requests keep coming: the rotated file ends in whole lines, the new file
    (made by the daemon after the SIGHUP) takes the entries that follow, and
    every request answered has both its entries in one or the other."""
    requests.put(f"{v.url}/v1/sys/audit/file", json={"type": "file", "options": {"file_path": AUDIT_FILE}},
                 headers=headers, timeout=10).raise_for_status()
    assert c.run("stat", "-c", "%a %U %G", AUDIT_FILE).stdout.split() == ["600", "vaultd", "vaultd"]
    rotated = c.path(AUDIT_FILE + ".1")
    answered: list[int] = []
    failures: list[str] = []
    stop = threading.Event()

    dropped: list[int] = []

    def load() -> None:
        with requests.Session() as session:
            session.headers.update(headers)
            number = 0
            while not stop.is_set():
                try:
                    response = session.get(f"{v.url}/v1/secret/data/rotation/{number}", timeout=10)
                except requests.ConnectionError:
                    # A keep-alive connection an old worker closed as it retired: ask again.
                    dropped.append(number)
                    if len(dropped) > 10:
                        failures.append(f"{number}: connections keep failing")
                        return
                    continue
                if response.status_code != 404:  # an unwritten path: audited, and answered 404
                    failures.append(f"{number}: {response.status_code} {response.text[:200]}")
                    return
                answered.append(number)
                number += 1

    def entries_in(path: Path) -> list[dict[str, Any]]:
        return [json.loads(line) for line in path.read_text().splitlines()]

    worker = threading.Thread(target=load, name="audit-load")
    worker.start()
    try:
        wait_until(lambda: len(answered) >= 20 or failures, "requests before the rotation", timeout=30)
        started = time.monotonic()
        c.run("logrotate", "-f", "/etc/logrotate.d/vaultd", timeout=60)
        assert rotated.is_file(), "logrotate did not rotate the audit file"
        # nocreate: the daemon's new workers make the file when they first write.
        wait_until(lambda: c.path(AUDIT_FILE).is_file() and c.path(AUDIT_FILE).stat().st_size > 0,
                   "entries in the new audit file", timeout=30)
        took = time.monotonic() - started
        before = len(answered)
        wait_until(lambda: len(answered) >= before + 20 or failures, "requests after the rotation", timeout=30)
    finally:
        stop.set()
        worker.join(timeout=30)
    assert not failures, failures
    assert c.run("stat", "-c", "%a %U %G", AUDIT_FILE).stdout.split() == ["600", "vaultd", "vaultd"]
    old_text = rotated.read_bytes()
    assert old_text.endswith(b"\n"), old_text[-200:]
    old, new = entries_in(rotated), entries_in(c.path(AUDIT_FILE))  # whole JSON lines, or this raises
    seen: dict[str, set[str]] = {}
    for entry in old + new:
        seen.setdefault(entry["request"]["path"], set()).add(entry["type"])
    lost = [n for n in answered if seen.get(f"secret/data/rotation/{n}") != {"request", "response"}]
    assert not lost, f"{len(lost)} of {len(answered)} requests lack an audit entry, e.g. {lost[:5]}"
    assert any(e["request"]["path"].startswith("secret/data/rotation/") for e in new), "nothing after the SIGHUP"
    for path in (rotated, c.path(AUDIT_FILE)):
        text = path.read_text()
        for secret in secrets:
            assert secret not in text, f"a secret is in clear in {path.name}"
    requests.delete(f"{v.url}/v1/sys/audit/file", headers=headers, timeout=10).raise_for_status()
    report(f"audit: logrotate -f rotated {AUDIT_FILE} under load; new file written {took:.2f} s after; "
           f"{len(answered)} requests, {len(old)} + {len(new)} entries, none lost, whole lines"
           + (f"; {len(dropped)} keep-alive connections closed by retiring workers" if dropped else ""))
