"""Vault's duration strings (``"768h"``, ``"1h30m"``, ``"90s"``, ``3600``)."""

from __future__ import annotations

import re

from vaultd.errors import BadRequest

_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h|d)")


def parse_duration(value: object, *, field: str = "duration") -> int:
    """Seconds as an int.  Accepts ints, digit strings (seconds) and Go-style
    duration strings; anything else is a 400 naming the field."""
    if isinstance(value, bool):
        raise BadRequest(f"invalid {field}: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise BadRequest(f"invalid {field}: must not be negative")
        return value
    if isinstance(value, float) and value >= 0 and value == int(value):
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if text == "":
            return 0
        if text.isdigit():
            return int(text)
        seconds = go_duration_seconds(text)
        if seconds is not None:
            return int(seconds)
        raise BadRequest(f'time: invalid duration "{value}"')
    raise BadRequest(f"invalid {field}: expected a duration")


def go_duration_seconds(text: str) -> float | None:
    """Seconds in a Go duration string (``"1h30m"``, ``"500ms"``), or None
    when ``text`` is not one.  Fractions are kept; callers round as they need."""
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT[match.group(2)]
        pos = match.end()
    return total if pos == len(text) and pos > 0 else None


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
