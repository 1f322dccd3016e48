"""vaultd.logging: lifecycle events, journal fields, and where lines go."""

from __future__ import annotations

import io
import logging
import os
import re
import sys
from pathlib import Path

import gunicorn.config
import pytest

from vaultd import logging as vlog
from vaultd.server import VaultdLogger

ROOT = Path(__file__).resolve().parents[2]


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def collect() -> logging.Logger:
    logger = logging.getLogger("vaultd.test-events")
    logger.handlers[:] = [Collect()]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return logger


def records(logger: logging.Logger) -> list[logging.LogRecord]:
    handler = logger.handlers[0]
    assert isinstance(handler, Collect)
    return handler.records


def test_message_ids_are_unique_128_bit_ids() -> None:
    ids = [event.message_id for event in vlog.EVENTS.values()]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert set(vlog.EVENTS) == {"sealed", "unsealed", "unseal_failed", "kms_error", "operator_seal", "init",
                                "key_rotation", "agent_channel_refused", "audit_device_failed",
                                "audit_device_recovered", "generate_root_started", "generate_root_cancelled",
                                "generate_root_failed", "generate_root_completed",
                                "rekey_started", "rekey_cancelled", "rekey_failed", "rekey_completed",
                                "seal_migration_pending", "seal_migration_key_received", "seal_migration_completed",
                                "seal_migration_failed", "unsealer_stood_aside",
                                "became_active", "became_standby", "lost_lock"}


def test_docs_list_every_event_with_its_id_and_priority() -> None:
    doc = (ROOT / "docs/journald.md").read_text()
    for event in vlog.EVENTS.values():
        row = next((line for line in doc.splitlines() if line.startswith(f"| `{event.name}` |")), None)
        assert row is not None, f"docs/journald.md has no row for {event.name}"
        assert f"`{event.message_id}`" in row
        assert f"| {vlog.syslog_priority(event.level)} " in row


def test_log_event_carries_message_id_and_fields(collect: logging.Logger) -> None:
    vlog.log_event(collect, "kms_error", "attempt %d failed: %s", 3, "throttled",
                   kms_error_code="ThrottlingException", attempt=3, retry_delay_sec=1.23456, permanent=False,
                   cluster_id=None)
    [record] = records(collect)
    assert record.levelno == logging.WARNING
    assert record.getMessage() == "attempt 3 failed: throttled"
    assert getattr(record, vlog.JOURNAL_FIELDS_ATTR) == {
        "MESSAGE_ID": vlog.EVENTS["kms_error"].message_id,
        "VAULTD_EVENT": "kms_error",
        "KMS_ERROR_CODE": "ThrottlingException",
        "ATTEMPT": "3",
        "RETRY_DELAY_SEC": "1.235",
        "PERMANENT": "false",
    }
    # CODE_FILE points at the caller, not at vaultd/logging.py.
    assert record.pathname == __file__


def test_log_event_level_can_be_raised(collect: logging.Logger) -> None:
    vlog.log_event(collect, "kms_error", "gone for good", level=logging.ERROR)
    assert records(collect)[0].levelno == logging.ERROR


@pytest.mark.parametrize("fields", [{"message_id": "x"}, {"priority": 1}, {"bad-name": 1}, {"_private": 1}])
def test_log_event_refuses_fields_it_must_not_set(collect: logging.Logger, fields: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        vlog.log_event(collect, "init", "initialised", **fields)
    assert records(collect) == []


def test_log_event_refuses_unknown_events(collect: logging.Logger) -> None:
    with pytest.raises(ValueError, match="unknown event"):
        vlog.log_event(collect, "exploded", "boom")


@pytest.mark.parametrize(
    ("level", "priority"),
    [(logging.DEBUG, 7), (logging.INFO, 6), (logging.WARNING, 4), (logging.ERROR, 3), (logging.CRITICAL, 2),
     (25, 4), (logging.CRITICAL + 10, 2)],
)
def test_syslog_priorities(level: int, priority: int) -> None:
    assert vlog.syslog_priority(level) == priority


def test_journal_fields_for_a_plain_record() -> None:
    record = logging.LogRecord("vaultd.core", logging.ERROR, "/x/y.py", 12, "failed %s", ("hard",), None, "fn")
    fields = vlog.journal_fields(record, "vaultd-unsealer")
    assert fields == {
        "PRIORITY": "3",
        "SYSLOG_IDENTIFIER": "vaultd-unsealer",
        "LOGGER": "vaultd.core",
        "CODE_FILE": "/x/y.py",
        "CODE_LINE": 12,
        "CODE_FUNC": "fn",
    }


def test_journal_handler_sends_only_the_chosen_fields() -> None:
    """Unlike python3-systemd's JournalHandler, the format arguments are not
    sent as a field of their own (where a secret would be stored as is)."""
    sent: list[tuple[str, dict[str, object]]] = []
    handler = vlog.JournalHandler("vaultd", lambda message, **fields: sent.append((message, fields)))
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("vaultd.test-journal")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    vlog.log_event(logger, "init", "initialised: seal %s", "awskms", seal_type="awskms")
    [(message, fields)] = sent
    assert message == "initialised: seal awskms"
    assert fields["MESSAGE_ID"] == vlog.EVENTS["init"].message_id
    assert fields["SEAL_TYPE"] == "awskms" and fields["PRIORITY"] == "6"
    assert "CODE_ARGS" not in fields and "ARGS" not in fields


def test_journal_handler_keeps_the_line_when_the_journal_refuses(capsys: pytest.CaptureFixture[str]) -> None:
    def refuse(message: str, **fields: object) -> None:
        raise OSError("journal socket gone")

    handler = vlog.JournalHandler("vaultd", refuse)
    handler.setFormatter(logging.Formatter("%(message)s"))
    record = logging.LogRecord("vaultd.core", logging.WARNING, __file__, 1, "still %s", ("here",), None)
    handler.emit(record)
    assert capsys.readouterr().err == "<4>still here\n"


def test_under_journald_only_when_stderr_is_the_named_stream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stream = open(tmp_path / "stream", "w")
    try:
        monkeypatch.setattr(sys, "stderr", stream)
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert vlog.under_journald()
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
        assert not vlog.under_journald()  # a child that inherited the variable, not the stream
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not vlog.under_journald()
    finally:
        stream.close()


def test_plain_stderr_lines_outside_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buffer)
    handler = vlog.make_handler("vaultd")
    record = logging.LogRecord("vaultd.core", logging.WARNING, __file__, 1, "sealed", (), None)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[WARNING\] vaultd.core: sealed",
                        handler.format(record))


def test_priority_prefix_marks_every_line() -> None:
    formatter = vlog._PriorityPrefixFormatter("%(message)s")
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "one\ntwo", (), None)
    assert formatter.format(record) == "<3>one\n<3>two"


def test_gunicorn_lines_reach_our_handler_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """gunicorn's error log is routed to the root handler: one line, in our
    format, not a second gunicorn-formatted (timestamped) copy."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    collector = Collect()
    try:
        root.handlers[:] = [collector]
        root.setLevel(logging.INFO)
        cfg = gunicorn.config.Config()
        cfg.set("errorlog", "-")
        cfg.set("loglevel", "info")
        glog = VaultdLogger(cfg)
        assert glog.error_log.handlers == [] and glog.error_log.propagate
        glog.error("Worker (pid:%s) was sent SIGKILL!", 42)
        glog.setup(cfg)  # what a reload does: still routed, no handler stacked
        glog.error("again")
        assert [r.getMessage() for r in collector.records] == ["Worker (pid:42) was sent SIGKILL!", "again"]
        assert collector.records[0].name == "gunicorn.error"
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def test_set_log_level_keeps_gunicorn_quiet_unless_debugging() -> None:
    root = logging.getLogger()
    saved = root.level
    try:
        vlog.set_log_level("info")
        assert root.level == logging.INFO
        assert logging.getLogger("gunicorn.error").level == logging.WARNING
        vlog.set_log_level("debug")
        assert logging.getLogger("gunicorn.error").level == logging.DEBUG
    finally:
        root.setLevel(saved)


# -- tokens never reach a log line ---------------------------------------------------

VAULTD_TOKEN = "s.AbCdEfGhIjKlMnOpQrStUvWx"


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        (f"Invalid HTTP Header: 'X-Vault-Token {VAULTD_TOKEN}'", VAULTD_TOKEN),
        ("X-Vault-Token: a-custom-token-of-any-shape", "a-custom-token-of-any-shape"),
        ("x-vault-token=abc123", "abc123"),
        ("Authorization: Bearer hvs.CAESIJ0123456789abcdefghijklmnop", "CAESIJ0123456789"),
        ("{'Authorization': 'Bearer opaque-bearer-value'}", "opaque-bearer-value"),
        ("retrying with hvs.0123456789abcdefghijABCDEFGHIJ now", "0123456789abcdefghij"),
        ("batch b.AAAAAAAAAAAAAAAAAAAAAAAAAAAA and recovery hvr.BBBBBBBBBBBBBBBBBBBBBBBB", "AAAAAAAAAAAA"),
    ],
)
def test_token_shaped_text_is_redacted(line: str, secret: str) -> None:
    cleaned = vlog.redact(line)
    assert secret not in cleaned and vlog.REDACTED in cleaned


@pytest.mark.parametrize(
    "line",
    ["authorization failed for this path", "vaultd.core.tokens: s.short", "sealed: 1/3 key shares",
     "mounted kv engine at secret/"],
)
def test_ordinary_lines_are_left_alone(line: str) -> None:
    assert vlog.redact(line) == line


def test_the_handler_redacts_messages_arguments_and_tracebacks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buffer)
    logger = logging.getLogger("vaultd.test-redact")
    logger.handlers[:] = [vlog.make_handler("vaultd")]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        logger.warning("token %s in an argument", VAULTD_TOKEN)
        try:
            raise ValueError(f"bad token {VAULTD_TOKEN}")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.handlers[:] = []
    out = buffer.getvalue()
    assert VAULTD_TOKEN not in out
    assert out.count(vlog.REDACTED) == 2 and "ValueError" in out


def test_journal_entries_are_redacted_too() -> None:
    sent: list[tuple[str, dict]] = []
    handler = vlog.JournalHandler("vaultd", lambda message, **fields: sent.append((message, fields)))
    handler.addFilter(vlog.RedactTokens())
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "saw %s", (VAULTD_TOKEN,), None)
    record.journal_fields = {"DETAIL": f"X-Vault-Token: {VAULTD_TOKEN}"}
    handler.handle(record)
    assert VAULTD_TOKEN not in repr(sent) and vlog.REDACTED in sent[0][0]


def test_gunicorn_lines_are_redacted_through_our_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    """gunicorn quotes a header line it refuses: routed to the root handler,
    the token in it is gone."""
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buffer)
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        vlog.setup_logging("info")
        cfg = gunicorn.config.Config()
        cfg.set("errorlog", "-")
        glog = VaultdLogger(cfg)
        glog.warning(f"Invalid request from ip=127.0.0.1: Invalid HTTP Header: 'X-Vault-Token {VAULTD_TOKEN}'")
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    out = buffer.getvalue()
    assert "Invalid HTTP Header" in out and VAULTD_TOKEN not in out and vlog.REDACTED in out
