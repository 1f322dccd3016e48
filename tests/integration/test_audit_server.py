"""Audit devices on a real multi-worker server, driven by OpenBao's CLI and
hvac: entries for a write, a read and a denial from every worker, whole
lines only, nothing secret in clear, ``sys/audit-hash`` matching the log,
reopening after SIGHUP, and fail-closed on a full disk with recovery."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import pytest

from tests.integration.support import BaoRunner, Server, ServerFactory, fill_up, small_tmpfs, wait_for

SECRET = "s3cr3t-value-never-in-clear"


def _client(server: Server, token: str | None = None) -> hvac.Client:
    return hvac.Client(url=server.addr, token=token, timeout=15)


def _entries(path: Path) -> list[dict[str, Any]]:
    """Every line must be one whole JSON entry: json.loads fails on a torn one."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def _init(server: Server) -> str:
    result = server.init(shares=1, threshold=1)
    server.unseal(result.keys)
    server.known_secrets.extend([*result.keys, result.root_token])
    server.call("POST", "sys/mounts/secret", status=204, token=result.root_token,
                json_body={"type": "kv", "options": {"version": "2"}})
    return result.root_token


def test_file_device_with_bao_and_hvac_across_workers(vaultd: Server, bao: BaoRunner, tmp_path: Path) -> None:
    root = _init(vaultd)
    log = tmp_path / "audit" / "audit.log"
    bao("audit", "enable", "file", f"file_path={log}", token=root)
    listed = json.loads(bao("audit", "list", "-format=json", token=root).stdout)
    assert listed["file/"]["type"] == "file" and listed["file/"]["options"]["file_path"] == str(log)
    assert log.stat().st_mode & 0o777 == 0o600

    client = _client(vaultd, root)
    client.secrets.kv.v2.create_or_update_secret("app", secret={"password": SECRET})
    token = client.auth.token.create(policies=["default"], ttl="1h")["auth"]["client_token"]
    vaultd.known_secrets.append(token)
    for _ in range(40):  # new connections, spread over the workers: all append to one file
        read = vaultd.call("GET", "secret/data/app", token=root)
        assert read["data"]["data"]["password"] == SECRET
    with pytest.raises(hvac.exceptions.Forbidden):
        _client(vaultd, token).secrets.kv.v2.read_secret_version(path="app", raise_on_deleted_version=True)

    entries = _entries(log)
    text = log.read_text()
    assert SECRET not in text and root not in text and token not in text
    writes = [e for e in entries if e["request"].get("path") == "secret/data/app"
              and e["request"]["operation"] == "update"]
    assert [e["type"] for e in writes] == ["request", "response"]
    reads = [e for e in entries if e["request"].get("path") == "secret/data/app"
             and e["request"]["operation"] == "read"]
    assert len(reads) == 2 * 41
    denied = [e for e in reads if e.get("error") == "permission denied"]
    assert len(denied) == 1 and denied[0]["type"] == "response"
    assert denied[0]["auth"]["policies"] == ["default"]
    assert len({e["request"]["id"] for e in reads}) == 41  # a request and its response share an id

    digest = client.sys.calculate_hash("file", SECRET)["data"]["hash"]
    assert digest.startswith("hmac-sha256:")
    assert reads[1]["response"]["data"]["data"]["password"] == digest
    assert writes[0]["request"]["data"]["data"]["password"] == digest
    assert reads[0]["auth"]["client_token"] == client.sys.calculate_hash("file", root)["data"]["hash"]

    pids = vaultd.worker_pids()
    assert len(pids) > 1

    # Rotation: rename, SIGHUP; new workers write to the new file, nothing is lost.
    rotated = log.with_name("audit.log.1")
    log.rename(rotated)
    os.kill(vaultd.master_pid, signal.SIGHUP)
    wait_for(lambda: not (vaultd.worker_pids() & pids) and len(vaultd.worker_pids()) == len(pids),
             "the workers replaced after SIGHUP")
    client.secrets.kv.v2.read_secret_version(path="app", raise_on_deleted_version=True)
    assert log.exists(), "no new file after the reopen"
    after = _entries(log)
    assert [e["type"] for e in after if e["request"].get("path") == "secret/data/app"] == ["request", "response"]
    assert len(_entries(rotated)) == len(entries) + 4  # the two audit-hash calls, whole, in the old file

    bao("audit", "disable", "file", token=root)
    assert client.sys.list_enabled_audit_devices()["data"] == {}
    size = log.stat().st_size
    vaultd.call("GET", "secret/data/app", token=root)
    assert log.stat().st_size == size


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path, "1m") as mount:
        yield mount


def test_fail_closed_on_a_full_disk_and_recovery(server_factory: ServerFactory, small_disk: Path) -> None:
    server = server_factory(workers=2)
    root = _init(server)
    log = small_disk / "audit.log"
    server.call("PUT", "sys/audit/file", status=204, token=root, json_body={"type": "file",
                                                                           "options": {"file_path": str(log)}})
    server.call("POST", "secret/data/k", token=root, json_body={"data": {"v": "before"}})

    fill_up(small_disk / "filler")
    refused = None
    for _ in range(50):  # the file's last page may still take a line or two
        answer = server.request("POST", "secret/data/k", token=root, json_body={"data": {"v": "during"}})
        if answer.status_code == 500:
            refused = answer
            break
    assert refused is not None, "requests were still served with no room for their audit entries"
    assert refused.json() == {"errors": ["internal error"]}
    for _ in range(5):
        assert server.request("GET", "secret/data/k", token=root).status_code == 500
        assert server.request("POST", "secret/data/k", token=root,
                              json_body={"data": {"v": "during"}}).status_code == 500
    assert server.alive()
    failures = server.log_text().count("cannot write")
    # Once per worker per episode, not once per request (11 were refused).  A
    # line that still fits in the last page's slack ends an episode, hence a margin.
    assert 1 <= failures <= 4, server.log_text()

    (small_disk / "filler").unlink()
    wait_for(lambda: server.request("GET", "secret/data/k", token=root).status_code == 200,
             "the audit device to recover once there is room")
    versions = server.call("GET", "secret/data/k", token=root)["data"]["metadata"]["version"]
    entries = _entries(log)  # whole lines only, even after the disk was full
    writes = [e for e in entries if e["type"] == "request" and e["request"].get("path") == "secret/data/k"
              and e["request"]["operation"] == "update"]
    assert len(writes) == versions, "every write that was served had its request entry written first"
    assert "writes again" in server.log_text()
