"""Audit entries, their HMAC, and fail-closed, on an in-process core and app.

The server-level behaviour (several workers, the bao CLI, a full disk,
SIGHUP) is in tests/integration/test_audit_server.py."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from vaultd.api.app import create_app
from vaultd.audit.base import OptionError, make_device
from vaultd.audit.entry import FormatOptions, Formatter, RequestInfo, ResponseInfo
from vaultd.audit.hashing import Hasher, hash_structure
from vaultd.audit.syslog import SyslogDevice
from vaultd.core.core import Core, CoreSettings
from vaultd.core.seal_state import SharedSealState
from vaultd.server import dev_bootstrap
from vaultd.storage.file import FileStorage

SECRET = "correct-horse-battery-staple"


def test_hmac_is_vault_s_identified_hmac() -> None:
    expected = hmac.new(b"the-salt", b"value", hashlib.sha256).hexdigest()
    assert Hasher("the-salt")("value") == "hmac-sha256:" + expected


def test_every_string_is_hashed_but_keys_numbers_and_times() -> None:
    value = {"a": "x", "n": 3, "b": True, "l": ["y", {"deep": "z"}], "t": "2024-01-02T03:04:05.123Z", "none": None}
    out = hash_structure(value, lambda s: f"H({s})")
    assert out == {"a": "H(x)", "n": 3, "b": True, "l": ["H(y)", {"deep": "H(z)"}],
                   "t": "2024-01-02T03:04:05.123Z", "none": None}
    assert value["a"] == "x"  # a copy, not changed in place


def test_request_and_response_entries_hash_tokens_data_and_accessors() -> None:
    fmt = Formatter(FormatOptions(), Hasher("s"))
    request = RequestInfo(id="i", operation="update", path="secret/data/x", client_token="s.tok",
                          data={"data": {"password": SECRET}}, client_token_accessor="acc")
    response = ResponseInfo(status=200, data={"data": {"password": SECRET}},
                            auth={"client_token": "s.new", "accessor": "acc2", "policies": ["p"]},
                            wrap_info={"token": "s.wrap", "ttl": 60})
    line = fmt.line(fmt.response_entry(request, response))
    text = line.decode()
    assert line.endswith(b"\n") and text.count("\n") == 1
    for clear in (SECRET, "s.tok", "s.new", "s.wrap", '"acc"', '"acc2"'):
        assert clear not in text
    entry = json.loads(text)
    assert entry["type"] == "response"
    assert entry["request"]["client_token"] == Hasher("s")("s.tok")
    assert entry["response"]["data"]["data"]["password"] == Hasher("s")(SECRET)
    assert entry["response"]["auth"]["policies"] == ["p"]
    assert entry["response"]["wrap_info"]["ttl"] == 60


def test_log_raw_and_hmac_accessor_false() -> None:
    fmt = Formatter(FormatOptions(log_raw=True, prefix="AUDIT "), Hasher("s"))
    request = RequestInfo(id="i", operation="read", path="p", client_token="s.tok", data={"k": "v"})
    text = fmt.line(fmt.request_entry(request)).decode()
    assert text.startswith("AUDIT {") and "s.tok" in text and '"v"' in text
    fmt = Formatter(FormatOptions(hmac_accessor=False), Hasher("s"))
    entry = fmt.request_entry(RequestInfo(id="i", operation="read", path="p", client_token_accessor="acc"))
    assert entry["request"]["client_token_accessor"] == "acc"


@pytest.mark.parametrize(("type_", "options", "message"), [
    ("nope", {}, "unknown backend type"),
    ("file", {}, "file_path is required"),
    ("file", {"file_path": "relative.log"}, "absolute"),
    ("file", {"file_path": "/tmp/x.log", "mode": "9z"}, "ParseUint"),
    ("syslog", {"facility": "NOPE"}, "facility"),
])
def test_bad_options_are_refused(type_: str, options: dict[str, str], message: str) -> None:
    with pytest.raises(OptionError, match=message):
        make_device(type_, options)


def test_file_device_appends_whole_lines_with_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "audit.log"
    device = make_device("file", {"file_path": str(path), "mode": "0640"})
    device.write(b'{"a":1}\n')
    device.write(b'{"b":2}\n')
    assert path.read_bytes() == b'{"a":1}\n{"b":2}\n'
    assert path.stat().st_mode & 0o777 == 0o640
    path.rename(tmp_path / "rotated.log")
    device.reopen()
    device.write(b'{"c":3}\n')
    assert path.read_bytes() == b'{"c":3}\n'


def test_syslog_device_sends_one_datagram_with_its_tag(tmp_path: Path) -> None:
    address = str(tmp_path / "log.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(address)
    try:
        device = SyslogDevice({"facility": "LOCAL0", "tag": "vaultd-audit"}, socket_path=address)
        device.write(b'{"x":1}\n')
        assert server.recv(4096) == b'<134>vaultd-audit: {"x":1}'
    finally:
        server.close()
    with pytest.raises(OSError):
        device.write(b'{"x":2}\n')  # the socket is gone: the device fails, it does not drop lines silently


class App:
    def __init__(self, tmp_path: Path) -> None:
        self.core = Core(FileStorage(str(tmp_path / "storage")), SharedSealState.create(lock_memory=False),
                         CoreSettings(storage_type="file"))
        _, self.root = dev_bootstrap(self.core)
        self.client = create_app(self.core).test_client()
        self.tmp = tmp_path

    def call(self, method: str, path: str, token: str | None = None, body: Any = None) -> Any:
        headers = {"X-Vault-Token": token} if token else {}
        return self.client.open(f"/v1/{path}", method=method, json=body, headers=headers)

    def enable(self, name: str, options: dict[str, str]) -> None:
        answer = self.call("PUT", f"sys/audit/{name}", self.root, {"type": "file", "options": options})
        assert answer.status_code == 204, answer.data


def entries(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_app_audits_fast_path_reads_writes_and_denials(tmp_path: Path) -> None:
    app = App(tmp_path)
    log = tmp_path / "audit.log"
    app.enable("file", {"file_path": str(log)})
    assert app.call("POST", "secret/data/app", app.root, {"data": {"password": SECRET}}).status_code == 200
    assert app.call("GET", "secret/data/app", app.root).status_code == 200  # answered by the fast path
    assert app.call("GET", "secret/data/app", "not-a-token").status_code == 403
    lines = entries(log)
    assert [(e["type"], e["request"]["operation"], e["request"]["path"]) for e in lines] == [
        ("request", "update", "secret/data/app"), ("response", "update", "secret/data/app"),
        ("request", "read", "secret/data/app"), ("response", "read", "secret/data/app"),
        ("request", "read", "secret/data/app"), ("response", "read", "secret/data/app"),
    ]
    assert lines[-1]["error"] == "permission denied"
    assert lines[1]["request"]["mount_type"] == "kv"
    text = log.read_text()
    assert SECRET not in text and app.root not in text
    digest = app.call("POST", "sys/audit-hash/file", app.root, {"input": SECRET}).json["data"]["hash"]
    assert lines[3]["response"]["data"]["data"]["password"] == digest
    assert lines[2]["auth"]["client_token"] == app.call(
        "POST", "sys/audit-hash/file", app.root, {"input": app.root}).json["data"]["hash"]


def test_sys_audit_needs_sudo_and_refuses_bad_devices(tmp_path: Path) -> None:
    app = App(tmp_path)
    token = app.call("POST", "auth/token/create", app.root, {"policies": ["default"]}).json["auth"]["client_token"]
    assert app.call("GET", "sys/audit", token).status_code == 403
    assert app.call("PUT", "sys/audit/f", token, {"type": "file", "options": {"file_path": "/tmp/x"}}).status_code \
        == 403
    bad = app.call("PUT", "sys/audit/f", app.root, {"type": "file", "options": {"file_path": "relative"}})
    assert bad.status_code == 400 and "absolute" in bad.json["errors"][0]
    app.enable("f", {"file_path": str(tmp_path / "a.log")})
    clash = app.call("PUT", "sys/audit/f", app.root, {"type": "file", "options": {"file_path": str(tmp_path / "b")}})
    assert clash.status_code == 400 and clash.json["errors"] == ["path already in use"]
    listed = app.call("GET", "sys/audit", app.root).json["data"]
    assert listed["f/"]["type"] == "file" and listed["f/"]["options"] == {"file_path": str(tmp_path / "a.log")}
    assert app.call("DELETE", "sys/audit/f", app.root).status_code == 204
    assert app.call("GET", "sys/audit", app.root).json["data"] == {}


def _audit_count(name: str, device: str) -> float:
    """A device's counter as this process's metrics registry has it."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from vaultd.metrics import instruments

    text = generate_latest(instruments().registry).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("device") == device:
                return sample.value
    return 0.0


def test_fail_closed_refuses_and_changes_nothing_then_recovers(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    app = App(tmp_path)
    good = tmp_path / "good.log"
    app.enable("good", {"file_path": str(good)})
    # /dev/full: every write fails with ENOSPC.  mode=0 leaves the device node's mode alone.
    app.enable("full", {"file_path": "/dev/full", "mode": "0"})
    failed_before = _audit_count("vaultd_audit_entries_failed_total", "full/")
    written_before = _audit_count("vaultd_audit_entries_total", "good/")
    with caplog.at_level(logging.INFO, logger="vaultd.audit"):
        for i in range(3):  # one device that writes is enough
            assert app.call("POST", "secret/data/a", app.root, {"data": {"i": i}}).status_code == 200
        # Each request is two entries (request, response): counted per device.
        assert _audit_count("vaultd_audit_entries_failed_total", "full/") - failed_before == 6
        assert _audit_count("vaultd_audit_entries_total", "good/") - written_before == 6
        failed = [r for r in caplog.records if "cannot write" in r.getMessage()]
        assert len(failed) == 1  # once per episode, not per request
        # Take the good device away behind the API's back: now nothing can write.
        os.chmod(good, 0o600)
        rows = app.core.audit._devices()
        good_device = next(live for live in rows if live.path == "good/")
        good_device.device.path = "/dev/full"  # type: ignore[attr-defined]
        good_device.device.reopen()
        refused = app.call("POST", "secret/data/a", app.root, {"data": {"i": 99}})
        assert refused.status_code == 500 and refused.json == {"errors": ["internal error"]}
        assert app.call("GET", "secret/data/a", app.root).status_code == 500  # reveals nothing either
        good_device.device.path = str(good)  # type: ignore[attr-defined]
        good_device.device.reopen()
        answer = app.call("GET", "secret/data/a", app.root)
        # The refused write changed nothing.
        assert answer.status_code == 200 and answer.json["data"]["data"] == {"i": 2}
        assert any("writes again" in r.getMessage() for r in caplog.records)


def test_an_unreadable_audit_table_fails_closed(tmp_path: Path) -> None:
    """A worker that cannot read the table may not know of an enabled
    device: it refuses rather than serve unaudited, and recovers."""
    from vaultd.core.audit import TABLE_KEY
    from vaultd.core.seal_state import EPOCH_AUDIT

    app = App(tmp_path)
    app.enable("f", {"file_path": str(tmp_path / "a.log")})
    assert app.call("POST", "secret/data/a", app.root, {"data": {"v": 1}}).status_code == 200
    table = app.core.barrier.get(TABLE_KEY)
    assert table is not None
    app.core.barrier.put(TABLE_KEY, b"{not json")
    app.core.shared.bump_epoch(EPOCH_AUDIT)
    refused = app.call("GET", "secret/data/a", app.root)
    assert refused.status_code == 500 and refused.json == {"errors": ["internal error"]}
    app.core.barrier.put(TABLE_KEY, table)
    app.core.shared.bump_epoch(EPOCH_AUDIT)
    assert app.call("GET", "secret/data/a", app.root).status_code == 200


def test_spliced_lines_are_the_entries_byte_for_byte(monkeypatch: pytest.MonkeyPatch) -> None:
    """request_line/response_line splice each request's blocks, encoded once,
    into both lines: they must equal line(request_entry) and
    line(response_entry) exactly, whatever is empty."""
    from vaultd.audit import entry as entry_module
    from vaultd.audit.base import format_options
    from vaultd.audit.entry import AuthInfo, Formatter, RequestInfo, ResponseInfo
    from vaultd.audit.hashing import Hasher

    monkeypatch.setattr(entry_module, "_now", lambda: "2026-11-30T00:00:00.5Z")
    requests = [
        RequestInfo(id="1", operation="read", path="secret/data/a", client_token="s.abc", client_token_accessor="acc",
                    data={"x": ["é", {"y": "z"}], "n": 1}, remote_address="127.0.0.1", remote_port=4,
                    mount_type="kv", mount_point="secret/", auth=AuthInfo(accessor="acc", policies=["root"])),
        RequestInfo(id="2", operation="update", path="sys/unseal"),
    ]
    responses = [ResponseInfo(status=200, data={"data": {"v": "secret"}}, warnings=["w"]),
                 ResponseInfo(status=403, error="permission denied"),
                 ResponseInfo(status=200, auth={"client_token": "s.new", "accessor": "a2", "policies": ["p"]},
                              wrap_info={"token": "s.w", "ttl": 60})]
    for options in ({}, {"log_raw": "true"}, {"prefix": "AUDIT:", "hmac_accessor": "false"}):
        fmt = Formatter(format_options(options), Hasher("salt"))
        for request in requests:
            assert fmt.request_line(request) == fmt.line(fmt.request_entry(request))
            for response in responses:
                assert fmt.response_line(request, response) == fmt.line(fmt.response_entry(request, response))


def test_key_material_stays_out_even_with_log_raw(tmp_path: Path) -> None:
    """log_raw writes data in clear, but never the data of the endpoints that
    carry key material: a generate-root OTP, the encoded token and the token
    sys/decode-token answers would give a root token to whoever reads the log."""
    from vaultd.core.generate_root import OTP_LENGTH, encode_token

    app = App(tmp_path)
    log = tmp_path / "raw.log"
    app.enable("raw", {"file_path": str(log), "log_raw": "true"})
    otp = "K" * OTP_LENGTH
    encoded = encode_token(app.root, otp)
    assert app.call("PUT", "sys/generate-root/attempt", None, {"otp": otp}).status_code == 200
    decoded = app.call("PUT", "sys/decode-token", None, {"encoded_token": encoded, "otp": otp})
    assert decoded.status_code == 200 and decoded.json["data"]["token"] == app.root
    text = log.read_text()
    assert otp not in text and encoded not in text and app.root not in text
    assert "sys/decode-token" in text and "sys/generate-root/attempt" in text  # audited, without the data
