"""Vault's duration strings (``"768h"``, ``"1h30m"``, ``"90s"``, ``3600``).

Vault holds every duration in a Go ``time.Duration``: int64 nanoseconds, so
nothing beyond about 292 years exists there.  A larger value once stored
here broke every later use of it (a KV key answered 500 for good), so each
parser below refuses what Go cannot hold, with the words Vault uses
(OpenBao's ``parseutil.ParseDurationSecond`` and Go's ``time.ParseDuration``).
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

from vaultd.errors import BadRequest

_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h|d)")

MAX_NANOSECONDS = 2**63 - 1
"""The largest Go ``time.Duration``."""
MAX_SECONDS = MAX_NANOSECONDS // 1_000_000_000
"""9223372036 s, about 292 years: the largest whole-second duration Vault has."""
OVERFLOW = "multiplication of durations resulted in overflow, one operand may be too large"
"""parseutil's words when seconds or days times their unit leave int64 nanoseconds."""


def parse_duration(value: object, *, field: str = "duration") -> int:
    """Seconds as an int, at most :data:`MAX_SECONDS`.  Accepts ints, digit
    strings (seconds) and Go-style duration strings; anything else is a 400
    naming the field."""
    if isinstance(value, bool):
        raise BadRequest(f"invalid {field}: {value!r}")
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise BadRequest(f"invalid {field}: expected a whole number of seconds")
        value = int(value)
    if isinstance(value, int):
        if value < 0:
            raise BadRequest(f"invalid {field}: must not be negative")
        return _bounded(value)
    if isinstance(value, str):
        text = value.strip()
        if text == "":
            return 0
        if text.isascii() and text.isdigit():
            return _bounded(int(text))
        if text.endswith("d") and text[:-1].isascii() and text[:-1].isdigit():
            return _bounded(int(text[:-1]) * 86400)
        seconds = go_duration_seconds(text)
        if seconds is not None:
            return int(seconds)
        raise BadRequest(f'time: invalid duration "{value}"')
    raise BadRequest(f"invalid {field}: expected a duration")


def _bounded(seconds: int) -> int:
    if seconds > MAX_SECONDS:
        raise BadRequest(OVERFLOW)
    return seconds


def go_duration_seconds(text: str) -> float | None:
    """Seconds in a Go duration string (``"1h30m"``, ``"500ms"``), or None
    when ``text`` is not one, which includes anything longer than Go's
    int64 nanoseconds can hold.  Fractions are kept; callers round as they need."""
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0 or not total * 1e9 <= MAX_NANOSECONDS:
        return None
    return total


def format_duration(seconds: int) -> str:
    """Go's ``time.Duration.String()`` for whole seconds (``"0s"``, ``"1h0m0s"``)."""
    if seconds == 0:
        return "0s"
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m}m{s}s"
    if m:
        return f"{m}m{s}s"
    return f"{s}s"


def human_duration(seconds: int) -> str:
    """A whole number of seconds as Go prints a ``time.Duration`` with its
    zero parts left out, as Vault's CLI tables and TTL warnings do ("1h",
    "1m40s", "6s")."""
    if seconds <= 0:
        return "0s"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours}h" if hours else ""
    if minutes or (hours and secs):
        text += f"{minutes}m"
    if secs or not text:
        text += f"{secs}s"
    return text


def rfc3339(ts: float) -> str:
    """A Unix time as Go's ``time.Time`` marshals it in UTC (nanosecond digits)."""
    dt = datetime.fromtimestamp(ts, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond:06d}000Z"
