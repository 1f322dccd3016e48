"""Logging set-up shared by the daemon, the agent and the CLI.

Under systemd (stderr is the stream named by ``JOURNAL_STREAM``) records go
to the journal as structured entries: the right ``PRIORITY`` so that
``journalctl -p warning`` works, ``SYSLOG_IDENTIFIER`` (``vaultd`` or
``vaultd-unsealer``) so that every process of the daemon, master and workers,
files under one name, and for lifecycle events a stable ``MESSAGE_ID`` plus
fields (KMS error code, attempt, delay...) that monitoring can match on
without parsing prose.  journald stamps entries itself, so nothing here adds a
timestamp.  Elsewhere the lines are readable text on stderr.

The journal is written through python3-systemd (``systemd.journal.send``),
which speaks journald's native protocol, large messages included.  If that
module is missing (a virtualenv without the ``journald`` extra) the entries
still reach the journal as ``<N>``-prefixed lines on stderr: priorities
survive, the structured fields do not.

Lifecycle events are logged with :func:`log_event`; the ``MESSAGE_ID`` of
each lives in :data:`EVENTS` and nowhere else (docs/journald.md documents
them, and a unit test keeps the two in step).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass

LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

JOURNAL_FIELDS_ATTR = "journal_fields"
"""The LogRecord attribute :func:`log_event` stores its journal fields in."""


@dataclass(frozen=True)
class Event:
    """A lifecycle event: what monitoring alerts on, so its id never changes."""

    name: str
    message_id: str
    level: int
    meaning: str


EVENTS: dict[str, Event] = {
    e.name: e
    for e in (
        Event("sealed", "34da8093921c453e8ac23309c67a6494", logging.INFO,
              "the daemon is sealed and waits for the unsealer agent or key shares (at start)"),
        Event("unsealed", "7c2d384cb787487b89e576fe6fd010cc", logging.INFO,
              "the daemon was unsealed (by the agent, by key shares, or right after init)"),
        Event("unseal_failed", "c05303b6a1984a1997be80172b05abdd", logging.ERROR,
              "an unseal attempt was refused for good: a wrong key, or the agent hit a permanent error "
              "and exits"),
        Event("kms_error", "8d86f3bde0134551a4ba9f7b08c1018d", logging.WARNING,
              "a KMS call failed; WARNING while it is retried, ERROR when it cannot heal"),
        Event("operator_seal", "7c4dc75c613643ae8918b1716d51d540", logging.WARNING,
              "an operator sealed the daemon (sys/seal); it stays sealed until its next start"),
        Event("init", "90ec0d5e997f4dc692db2716a4838b30", logging.INFO,
              "the daemon was initialised (sys/init)"),
        Event("key_rotation", "76230579203c4eda8290bf66e48ee76f", logging.INFO,
              "the barrier keyring was rotated to a new term (sys/rotate)"),
        Event("agent_channel_refused", "5b0133e4716c4acb8afd03fd272492ab", logging.WARNING,
              "a peer on the agent channel is not who it must be: the agent refused the daemon's socket "
              "(and exits), or the daemon refused a caller of an agent endpoint"),
        Event("audit_device_failed", "e1b7c3f04a2d4f0c9a55d2b86c1e7f31", logging.ERROR,
              "an audit device cannot write; requests fail closed unless another device writes"),
        Event("audit_device_recovered", "3f6a9d2e8b1c4a7e96d05c4b2a1f8e47", logging.INFO,
              "an audit device that failed writes again"),
    )
}

_SYSLOG_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}

_FIELD_NAME = re.compile(r"[A-Z0-9][A-Z0-9_]{0,63}")
_RESERVED_FIELDS = frozenset(
    {"MESSAGE", "MESSAGE_ID", "PRIORITY", "SYSLOG_IDENTIFIER", "LOGGER", "CODE_FILE", "CODE_LINE", "CODE_FUNC",
     "VAULTD_EVENT"}
)

REDACTED = "[redacted]"
"""What a token-shaped string in a log line is replaced by."""

_TOKEN_SHAPED = re.compile(
    # Vault's service, batch and recovery tokens, old (s. b. r.) and new
    # (hvs. hvb. hvr.) style; vaultd's own are "s." and 24 letters and digits.
    r"(?<![A-Za-z0-9_.-])(?:hv[sbr]|[sbr])\.[A-Za-z0-9_-]{20,}"
)
_TOKEN_HEADER = re.compile(
    # A header line or a logged mapping naming a token, whatever the value
    # looks like: "X-Vault-Token: v", "X-Vault-Token v" (the malformed line
    # gunicorn quotes), "Authorization: Bearer v", "'x-vault-token': 'v'".
    r"(?i)(x-vault-token[\"']?(?:\s*[:=]\s*|\s+)|authorization[\"']?\s*[:=]\s*)"
    r"([\"']?)((?:bearer|basic)\s+)?[^\s'\",;\\]+"
)


def redact(text: str) -> str:
    """``text`` with anything token-shaped replaced by :data:`REDACTED`."""
    if not text:
        return text
    text = _TOKEN_HEADER.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(3) or ''}{REDACTED}", text)
    return _TOKEN_SHAPED.sub(REDACTED, text)


class RedactTokens(logging.Filter):
    """The safety net under every log line of every process: whatever a
    logger was handed (a token in an exception message, a header line
    gunicorn quotes back when it refuses it), tokens do not reach the
    journal or stderr.  Installed on the handlers :func:`make_handler`
    makes, so loggers routed to them (gunicorn's) are covered too.  Code
    should still never log a secret: this cannot know every secret's shape."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True  # the handler reports the bad format itself
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        fields = getattr(record, JOURNAL_FIELDS_ATTR, None)
        if fields:
            setattr(record, JOURNAL_FIELDS_ATTR, {k: redact(str(v)) for k, v in fields.items()})
        return True


def syslog_priority(levelno: int) -> int:
    """The syslog priority for a Python level (between two levels: the more
    severe one, so a custom level never gets quieter)."""
    for level in sorted(_SYSLOG_PRIORITY):
        if levelno <= level:
            return _SYSLOG_PRIORITY[level]
    return _SYSLOG_PRIORITY[logging.CRITICAL]


def log_event(
    logger: logging.Logger,
    event: str,
    message: str,
    *args: object,
    level: int | None = None,
    **fields: object,
) -> None:
    """Log a lifecycle event with its ``MESSAGE_ID`` and fields.

    ``fields`` become journal fields named in upper case
    (``kms_error_code="ThrottlingException"`` -> ``KMS_ERROR_CODE=...``);
    None values are left out.  ``level`` overrides the event's usual level
    (a KMS error that will not heal is an ERROR, not a WARNING).  Never pass
    a secret: fields are stored as they are.
    """
    try:
        spec = EVENTS[event]
    except KeyError:
        raise ValueError(f"unknown event {event!r} (known: {', '.join(EVENTS)})") from None
    journal = {"MESSAGE_ID": spec.message_id, "VAULTD_EVENT": event}
    for name, value in fields.items():
        if value is None:
            continue
        key = name.upper()
        if not _FIELD_NAME.fullmatch(key) or key in _RESERVED_FIELDS:
            raise ValueError(f"{name!r} cannot be a journal field name")
        journal[key] = _field_value(value)
    logger.log(spec.level if level is None else level, message, *args,
               extra={JOURNAL_FIELDS_ATTR: journal}, stacklevel=2)


def _field_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def journal_fields(record: logging.LogRecord, identifier: str) -> dict[str, str | int]:
    """The journal entry for a record, apart from MESSAGE.  CODE_LINE is an
    int because python3-systemd formats it with ``{:d}``."""
    fields: dict[str, str | int] = {
        "PRIORITY": str(syslog_priority(record.levelno)),
        "SYSLOG_IDENTIFIER": identifier,
        "LOGGER": record.name,
        "CODE_FILE": record.pathname,
        "CODE_LINE": record.lineno,
        "CODE_FUNC": record.funcName,
    }
    fields.update(getattr(record, JOURNAL_FIELDS_ATTR, None) or {})
    return fields


class _PriorityPrefixFormatter(logging.Formatter):
    """``<N>message``: journald's stream reader takes N as the priority."""

    def format(self, record: logging.LogRecord) -> str:
        priority = syslog_priority(record.levelno)
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).splitlines())


class JournalHandler(logging.Handler):
    """Sends each record to journald as one structured entry.

    Unlike python3-systemd's own handler this sends only the fields above:
    that one also sends the record's arguments (``CODE_ARGS``) and every
    attribute of the record, which is where a secret passed by mistake as a
    format argument would end up stored in clear.
    """

    def __init__(self, identifier: str, send: Callable[..., None]) -> None:
        super().__init__()
        self.identifier = identifier
        self._send = send
        self._fallback = _PriorityPrefixFormatter("%(message)s")

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            fields = journal_fields(record, self.identifier)
        except Exception:
            self.handleError(record)
            return
        try:
            self._send(message, **fields)
        except Exception:
            # journald gone or restarting, or a field it refused: logging
            # must never break the caller, and the line is kept on stderr.
            try:
                sys.stderr.write(self._fallback.format(record) + "\n")
                sys.stderr.flush()
            except Exception:
                self.handleError(record)


def under_journald() -> bool:
    """True when stderr is connected to the journal (systemd sets JOURNAL_STREAM)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    if not stream:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


def _journal_send() -> Callable[..., None] | None:
    try:
        from systemd import journal
    except ImportError:
        return None
    send: Callable[..., None] = journal.send
    return send


def make_handler(identifier: str) -> logging.Handler:
    """The handler for this process (journal, prefixed stream, or plain
    stderr), with the token filter on it."""
    handler = _make_handler(identifier)
    handler.addFilter(RedactTokens())
    return handler


def _make_handler(identifier: str) -> logging.Handler:
    if under_journald():
        send = _journal_send()
        if send is not None:
            handler: logging.Handler = JournalHandler(identifier, send)
            handler.setFormatter(logging.Formatter("%(message)s"))
            return handler
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_PriorityPrefixFormatter("%(name)s: %(message)s"))
        return handler
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s [%(levelname)s] %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S%z")
    )
    return handler


def setup_logging(level: str = "info", *, identifier: str = "vaultd") -> None:
    """Route every logger (ours, gunicorn's, the libraries') to one handler."""
    root = logging.getLogger()
    root.handlers[:] = [make_handler(identifier)]
    set_log_level(level)
    # Libraries chatter at INFO about every connection; keep them quieter.
    for noisy in ("botocore", "boto3", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def set_log_level(level: str) -> None:
    """Change the level at run time (``systemctl reload`` re-reads it)."""
    value = LEVELS.get(level.lower(), logging.INFO)
    logging.getLogger().setLevel(value)
    # gunicorn says "Booting worker" and the like at INFO: debug material.
    logging.getLogger("gunicorn.error").setLevel(value if value <= logging.DEBUG else max(value, logging.WARNING))


def route_to_root(*loggers: logging.Logger) -> None:
    """Make loggers that bring their own handlers (gunicorn's error and
    access logs) use ours instead, so each line appears once, formatted
    once, and with no second timestamp."""
    for logger in loggers:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True

