"""What the audit remembers between requests to stay cheap, and that it
never outlives what it may: the HMACs of a caller's token and accessor and
the text of its ``auth`` block (dropped when the server seals), and the
caller the request entry describes (handed to the core's token check of the
same request only, never to the next request on the thread).

The line-for-line equality of the spliced lines with the entries is in
tests/unit/test_audit.py; this file is about the memory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_audit import App as AuditApp
from vaultd.audit.entry import Formatter, _encode
from vaultd.audit.hashing import Hasher, hash_structure
from vaultd.core.audit import described_caller, take_described
from vaultd.core.token_entry import TokenEntry


class App(AuditApp):
    """test_audit's app with a file device enabled and one secret written."""

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        self.log = tmp_path / "audit.log"
        assert self.call("PUT", "sys/audit/file", self.root,
                         {"type": "file", "options": {"file_path": str(self.log)}}).status_code == 204
        assert self.call("POST", "secret/data/app", self.root, {"data": {"password": "pw"}}).status_code == 200

    def token(self, **params: Any) -> str:
        answer = self.call("POST", "auth/token/create", self.root, params)
        assert answer.status_code == 200, answer.data
        return str(answer.json["auth"]["client_token"])

    def entries(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def hmac(self, value: str) -> str:
        return str(self.call("POST", "sys/audit-hash/file", self.root, {"input": value}).json["data"]["hash"])

    def formatters(self) -> list[Formatter]:
        return [live.formatter for live in self.core.audit._devices() if live.formatter is not None]


def test_a_bad_token_after_a_good_one_is_logged_without_the_good_one_s_auth(tmp_path: Path) -> None:
    app = App(tmp_path)
    good = app.token(policies=["default"], display_name="good")
    assert app.call("GET", "auth/token/lookup-self", good).status_code == 200
    assert app.call("GET", "secret/data/app", good).status_code == 403  # the default policy: denied
    assert app.call("GET", "secret/data/app", "not-a-token").status_code == 403
    # A request whose handler never checks the token (seal-status) leaves
    # nothing on the thread for the next one either.
    assert app.call("GET", "sys/seal-status", good).status_code == 200
    assert described_caller.get() is None
    *_, good_request, good_response, bad_request, bad_response = app.entries()[:-2]
    for entry in (good_request, good_response):
        assert entry["auth"]["display_name"] == "token-good"
        assert entry["auth"]["client_token"] == app.hmac(good)
        assert entry["request"]["client_token_accessor"] == entry["auth"]["accessor"]
    for entry in (bad_request, bad_response):
        assert entry["auth"] == {"client_token": app.hmac("not-a-token")}
        assert "client_token_accessor" not in entry["request"]
    assert bad_response["error"] == "permission denied"


def test_a_revoked_or_spent_token_is_described_as_stored_now(tmp_path: Path) -> None:
    """The remembered auth block follows the stored entry: a use spent, a
    revocation, are in the next request's entries."""
    app = App(tmp_path)
    limited = app.token(policies=["root"], num_uses=3)
    for _ in range(2):
        assert app.call("GET", "secret/data/app", limited).status_code == 200
    uses = [e["auth"].get("remaining_uses") for e in app.entries()[-4:]]
    assert uses == [3, 3, 2, 2]  # described before the request spends its use, as before
    assert app.call("POST", "auth/token/revoke-self", limited).status_code == 204
    assert app.call("GET", "secret/data/app", limited).status_code == 403
    request, response = app.entries()[-2:]
    assert request["auth"] == response["auth"] == {"client_token": app.hmac(limited)}


def test_the_core_takes_the_described_caller_once_and_only_for_its_token(tmp_path: Path) -> None:
    entry = TokenEntry(id_hash="h", accessor="a", policies=["p"], path="auth/token/create", display_name="token",
                       creation_time=0.0, ttl=0)
    described_caller.set(("s.one", entry))
    try:
        assert take_described("s.other") is None
        assert take_described(None) is None
        taken = take_described("s.one")
        assert taken is not None and taken is not entry and taken.policies == ["p"]
        taken.policies.append("changed")
        assert entry.policies == ["p"]  # a copy: the stored entry is shared
        assert take_described("s.one") is None  # a second check looks the token up again
    finally:
        described_caller.set(None)


def test_token_memos_are_dropped_when_the_server_seals(tmp_path: Path) -> None:
    app = App(tmp_path)
    assert app.call("GET", "secret/data/app", app.root).status_code == 200
    formatters = app.formatters()
    assert formatters and all(f._hashed and f._auth_text and f._request_text for f in formatters)
    assert app.core.audit._callers and app.core.audit._token_hashes
    assert app.call("PUT", "sys/seal", app.root).status_code == 204
    app.core.lifecycle.refresh()  # what every worker's seal watch does within a second
    assert all(not f._hashed and not f._auth_text and not f._request_text for f in formatters)
    assert not app.core.audit._callers and not app.core.audit._token_hashes
    answer = app.call("GET", "secret/data/app", app.root)
    assert answer.status_code == 503
    request, response = app.entries()[-2:]
    assert "auth" not in request and "auth" not in response  # sealed: no salt, no token


def test_the_memo_is_bounded_and_long_values_are_not_kept() -> None:
    from vaultd.audit import entry as entry_module
    from vaultd.audit.base import format_options

    formatter = Formatter(format_options({}), Hasher("salt"))
    for i in range(entry_module.MEMO_ENTRIES + 5):
        assert formatter._token(f"s.{i}") == Hasher("salt")(f"s.{i}")
    assert len(formatter._hashed) <= entry_module.MEMO_ENTRIES
    long = "x" * (entry_module.MEMO_LONGEST + 1)
    assert formatter._token(long) == Hasher("salt")(long) and long not in formatter._hashed


def test_hashing_keeps_times_and_hashes_everything_else() -> None:
    hasher = Hasher("salt")
    kept = ["2024-01-02T03:04:05Z", "2024-01-02T03:04:05.123456789+01:00"]
    hashed = ["", "x", "2024-01-02T03:04:05.1234567890Z", "2024-01-02 03:04:05Z", "aaaaaaaaaaTaaaaaaaaaaaa",
              "٢٠٢٤-01-02T03:04:05Z"]
    out = hash_structure({"k": [*kept, *hashed], "n": 1.5, "b": False, "z": None}, hasher)
    assert out["k"] == kept + [hasher(value) for value in hashed]
    assert (out["n"], out["b"], out["z"]) == (1.5, False, None)
    assert hasher("") == "hmac-sha256:" + __import__("hmac").new(b"salt", b"", "sha256").hexdigest()


def test_the_encoder_writes_what_json_dumps_writes() -> None:
    for value in ({"a": [1, 2.5, None, True, "é\u2028", {"b": ""}]}, "plain", [], {}, 3, float("inf")):
        assert _encode(value) == json.dumps(value, separators=(",", ":"))


def test_a_forked_child_opens_its_own_audit_file(tmp_path: Path) -> None:
    """The device keeps its descriptor, and tells a fork (a new gunicorn
    worker) from the process that opened it without asking for its pid."""
    import os

    from vaultd.audit.file import FileDevice

    path = tmp_path / "audit.log"
    device = FileDevice({"file_path": str(path)})
    device.write(b"parent\n")
    inherited = device._fd
    child = os.fork()
    if child == 0:  # pragma: no cover - the child's result is its exit status
        try:
            device.write(b"child\n")
            os._exit(0 if device._fd not in (None, inherited) else 1)
        finally:
            os._exit(2)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    device.write(b"parent again\n")
    assert device._fd == inherited
    assert path.read_bytes() == b"parent\nchild\nparent again\n"


def test_remembered_blocks_make_the_same_lines_as_the_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each line twice (the second from what the formatter remembers) and
    both equal to ``line(entry)``, whatever is empty or changes per request."""
    from vaultd.audit import entry as entry_module
    from vaultd.audit.base import format_options
    from vaultd.audit.entry import AuthInfo, RequestInfo, ResponseInfo

    monkeypatch.setattr(entry_module, "_now", lambda: "2026-11-30T00:00:00.5Z")
    auth = AuthInfo(accessor="acc", display_name="token", policies=["root"], token_policies=["root"],
                    token_ttl=60, token_issue_time="2026-11-30T00:00:00Z")
    variants = [
        {"client_token": "s.abc", "client_token_accessor": "acc", "auth": auth, "mount_type": "kv",
         "mount_point": "secret/", "mount_accessor": "kv_1", "remote_address": "127.0.0.1", "remote_port": 4000},
        {"client_token": "s.abc", "client_token_accessor": "acc", "auth": auth, "mount_type": "kv",
         "mount_point": "secret/", "mount_accessor": "kv_1", "remote_address": "::1", "remote_port": 4001,
         "wrap_ttl": 60},
        {"client_token": "s.abc", "client_token_accessor": "acc", "auth": auth, "mount_type": "kv",
         "mount_point": "secret/", "mount_accessor": "kv_1", "path": "secret/data/b"},
        {"client_token": "not-a-token", "remote_address": "127.0.0.1"},
        {"client_token": "s.abc", "client_token_accessor": "acc", "auth": auth, "path": "secret/data/\u00e9\"q\""},
        {},
        {"client_token": "s.abc", "data": {"k": "v"}},
        {"client_token": "x" * 600},
        {"client_token": "s.abc", "path": "p" * 600},
    ]
    response = ResponseInfo(status=200, data={"data": {"v": "secret"}})
    for options in ({}, {"log_raw": "true"}, {"prefix": "AUDIT:", "hmac_accessor": "false"}):
        formatter = Formatter(format_options(options), Hasher("salt"))
        for round_ in range(2):
            for n, fields in enumerate(variants):
                values = {"path": "secret/data/a", **fields}
                request = RequestInfo(id=f"id-{round_}-{n}" if n != 5 else "", operation="read", **values)
                assert formatter.request_line(request) == formatter.line(formatter.request_entry(request))
                assert formatter.response_line(request, response) == formatter.line(
                    formatter.response_entry(request, response))
