"""Request parameters decoded the way Vault's ``framework.FieldData`` does.

Clients and scripts written against Vault depend on its lenient decoding
(``"true"`` is a bool, ``"0x10"`` is 16, ``[{"a": 1}]`` is a map) and match on
its error strings, so an engine that decodes differently breaks them in ways
that are hard to see.  Every rule here was checked against a real OpenBao
2.7.2; the Go type names in messages (``json.Number``...) are what Vault
prints, because Vault decodes JSON numbers as ``json.Number``.

Error messages name fields and Go types, never values: parameter values can
be secrets.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from vaultd.durations import MAX_NANOSECONDS, MAX_SECONDS, OVERFLOW
from vaultd.errors import BadRequest

ABSENT: Any = object()
"""Returned for a parameter the request does not carry (null is not absent)."""

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}
_DURATION_UNITS_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # U+00B5
    "μs": 1_000,  # U+03BC
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}
_NUMBER = re.compile(r"([0-9]*)(?:\.([0-9]*))?")
_VALIDATION_PREFIX = "Field validation failed: "


class FieldError(ValueError):
    """A parameter could not be decoded; ``str()`` is Vault's detail text."""


def go_type(value: object) -> str:
    """The Go type Vault's JSON decoder would have produced for ``value``."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "json.Number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "[]interface {}"
    if isinstance(value, dict):
        return "map[string]interface {}"
    return "interface {}"


def go_quote(text: str) -> str:
    """Go's ``strconv.Quote``, so messages quote keys byte-for-byte like Vault."""
    named = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}
    out = ['"']
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        elif ch in named:
            out.append(named[ch])
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    out.append('"')
    return "".join(out)


def multierror(errors: list[str]) -> str:
    """hashicorp/go-multierror's text, which Vault returns verbatim."""
    if len(errors) == 1:
        return f"1 error occurred:\n\t* {errors[0]}\n\n"
    points = "\n\t".join(f"* {e}" for e in errors)
    return f"{len(errors)} errors occurred:\n\t{points}\n\n"


def parse_go_int(text: str) -> int:
    """``strconv.ParseInt(text, 0, 64)``: sign, and 0x/0o/0b/leading-0 bases."""
    body = text[1:] if text[:1] in "+-" else text
    base, digits = 10, body
    lowered = body[:2].lower()
    if lowered in ("0x", "0o", "0b"):
        base, digits = {"0x": 16, "0o": 8, "0b": 2}[lowered], body[2:]
    elif len(body) > 1 and body[0] == "0":
        base, digits = 8, body[1:]
    allowed = "0123456789abcdef"[:base]
    if not digits or not all(c in allowed for c in digits.lower()):
        raise FieldError("strconv.ParseInt: invalid syntax")
    significant = digits.lstrip("0")
    if len(significant) > 64:  # wider than int64 in any base (and too long for int())
        raise FieldError("strconv.ParseInt: value out of range")
    value = int(significant or "0", base)
    if text.startswith("-"):
        value = -value
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise FieldError("strconv.ParseInt: value out of range")
    return value


def parse_go_int_base10(text: str) -> int:
    """``strconv.ParseInt(text, 10, 64)`` for a ``[+-]?[0-9]+`` string;
    OverflowError when it leaves int64."""
    digits = text.lstrip("+-").lstrip("0")
    if len(digits) > 19:
        raise OverflowError("value out of range")
    value = int(digits or "0")
    value = -value if text.startswith("-") else value
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise OverflowError("value out of range")
    return value


def to_int(value: object) -> int:
    """Vault's ``TypeInt``: weakly typed, as ``mapstructure.WeakDecode`` does."""
    if value is None:
        return 0
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise FieldError("'' cannot parse value as 'int': strconv.ParseInt: value out of range")
        return value
    if isinstance(value, (str, float)):
        text = value if isinstance(value, str) else repr(value)
        if text == "":
            return 0
        try:
            return parse_go_int(text)
        except FieldError as err:
            raise FieldError(f"'' cannot parse value as 'int': {err}") from None
    raise FieldError(f"'' expected type 'int', got unconvertible type '{go_type(value)}'")


def to_bool(value: object) -> bool:
    """Vault's ``TypeBool``: ``strconv.ParseBool`` over the JSON text."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, (str, int, float)):
        text = value if isinstance(value, str) else repr(value)
        if text in _TRUE:
            return True
        if text in _FALSE or text == "":
            return False
        raise FieldError("'' cannot parse value as 'bool': strconv.ParseBool: invalid syntax")
    raise FieldError(f"'' expected type 'bool', got unconvertible type '{go_type(value)}'")


def to_map(value: object, where: str = "") -> dict[str, Any] | None:
    """Vault's ``TypeMap``.  A list of maps is merged (mapstructure's weak
    decoding); null stays None so callers can keep Vault's "null" data."""
    if value is None:
        return None
    if isinstance(value, dict):
        return value
    if isinstance(value, list):
        merged: dict[str, Any] = {}
        for index, item in enumerate(value):
            part = to_map(item, f"{where}[{index}]")
            if part:
                merged.update(part)
        return merged
    raise FieldError(
        f"'{where}' expected type 'map[string]interface {{}}', got unconvertible type '{go_type(value)}'"
    )


def to_int_list(value: object) -> list[int]:
    """Vault's ``TypeCommaIntSlice``: a list, one number, or ``"1,2"``."""
    if value is None:
        return []
    if isinstance(value, str):
        items: list[object] = list(value.split(","))
    elif isinstance(value, list):
        items = list(value)
    elif isinstance(value, dict):
        items = [value]
    else:
        items = [value]
    out: list[int] = []
    errors: list[str] = []
    for index, item in enumerate(items):
        try:
            if isinstance(item, (list, dict)):
                raise FieldError(f"'' expected type 'int', got unconvertible type '{go_type(item)}'")
            out.append(to_int(item))
        except FieldError as err:
            errors.append(str(err).replace("''", f"'[{index}]'", 1))
    if errors:
        raise FieldError("decoding failed due to the following error(s):\n\n" + "\n".join(errors))
    return out


def parse_go_duration_ns(text: str) -> int:
    """Go's ``time.ParseDuration``, with its error messages."""
    quoted = go_quote(text)
    rest, negative = text, False
    if rest[:1] in ("+", "-"):
        negative, rest = rest[0] == "-", rest[1:]
    if rest == "0":
        return 0
    if not rest:
        raise FieldError(f"time: invalid duration {quoted}")
    total = 0
    while rest:
        match = _NUMBER.match(rest)
        whole, frac = (match.group(1), match.group(2)) if match else ("", None)
        if not whole and not frac:
            raise FieldError(f"time: invalid duration {quoted}")
        whole = whole.lstrip("0")
        if len(whole) > 19 or int(whole or "0") > 2**63:  # Go's leadingInt overflows
            raise FieldError(f"time: invalid duration {quoted}")
        rest = rest[match.end():] if match else rest
        unit_len = 0
        while unit_len < len(rest) and rest[unit_len] not in ".0123456789":
            unit_len += 1
        unit, rest = rest[:unit_len], rest[unit_len:]
        if not unit:
            raise FieldError(f"time: missing unit in duration {quoted}")
        if unit not in _DURATION_UNITS_NS:
            raise FieldError(f"time: unknown unit {go_quote(unit)} in duration {quoted}")
        scale = _DURATION_UNITS_NS[unit]
        total += int(whole or "0") * scale
        if frac:
            total += int(frac[:30]) * scale // 10 ** len(frac[:30])
        # Go accumulates in a uint64 and refuses anything past int64's range
        # (one more on the negative side).
        if total > MAX_NANOSECONDS + (1 if negative else 0):
            raise FieldError(f"time: invalid duration {quoted}")
    return -total if negative else total


def to_duration_seconds(value: object, *, signed: bool = False) -> int:
    """Vault's ``TypeDurationSecond`` (``signed`` for ``TypeSignedDurationSecond``):
    seconds as an int, strings in Go syntax plus a ``d`` suffix for days."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise FieldError("could not parse duration from input")
    if isinstance(value, int):
        seconds = _within_go_duration(value)
    else:
        text = value if isinstance(value, str) else repr(value)
        seconds = _duration_text_seconds(text)
    if seconds < 0 and not signed:
        raise FieldError(f"cannot provide negative value '{seconds}'")
    return seconds


def _within_go_duration(seconds: int) -> int:
    """``seconds`` if Go's ``time.Duration`` can hold it, else parseutil's
    overflow error (its check of ``n * time.Second``)."""
    if not -MAX_SECONDS <= seconds <= MAX_SECONDS:
        raise FieldError(OVERFLOW)
    return seconds


def _duration_text_seconds(text: str) -> int:
    """parseutil's order: an int64 of seconds, an int64 of days with ``d``,
    then Go's duration syntax."""
    if text == "":
        return 0
    if re.fullmatch(r"[+-]?[0-9]+", text):
        try:
            return _within_go_duration(parse_go_int_base10(text))
        except OverflowError:
            pass  # not an int64: Go's ParseDuration gets it, and refuses it
    if text.endswith("d"):
        try:
            days = parse_go_int(text[:-1])
        except FieldError:
            pass
        else:
            if abs(days) > MAX_SECONDS // 86400:
                raise FieldError(OVERFLOW)
            return days * 86400
    ns = parse_go_duration_ns(text)
    seconds = abs(ns) // 1_000_000_000
    return -seconds if ns < 0 else seconds


class Params:
    """One request's parameters and how its endpoint reports decoding errors.

    Vault prefixes the message with "Field validation failed: " except for
    create/update on paths that have an existence check (KV v2 ``data/`` and
    ``metadata/``); ``prefixed`` carries that difference.
    """

    def __init__(self, raw: Mapping[str, Any], *, prefixed: bool = True) -> None:
        self.raw = raw
        self.prefixed = prefixed

    def has(self, name: str) -> bool:
        return name in self.raw

    def error(self, name: str, detail: str) -> BadRequest:
        prefix = _VALIDATION_PREFIX if self.prefixed else ""
        return BadRequest(f'{prefix}error converting input for field "{name}": {detail}')

    def _get(self, name: str, convert: Any) -> Any:
        if name not in self.raw:
            return ABSENT
        try:
            return convert(self.raw[name])
        except FieldError as err:
            raise self.error(name, str(err)) from None

    def int(self, name: str) -> Any:
        """int, or ABSENT."""
        return self._get(name, to_int)

    def bool(self, name: str) -> Any:
        """bool, or ABSENT."""
        return self._get(name, to_bool)

    def map(self, name: str) -> Any:
        """dict, None for null, or ABSENT."""
        return self._get(name, to_map)

    def int_list(self, name: str) -> list[int]:
        value = self._get(name, to_int_list)
        return [] if value is ABSENT else value

    def duration(self, name: str, *, signed: bool = False) -> Any:
        """Seconds, or ABSENT."""
        return self._get(name, lambda v: to_duration_seconds(v, signed=signed))

    def unknown(self, known: frozenset[str]) -> list[str]:
        """Parameters the endpoint ignores, sorted, for Vault's warning."""
        return sorted(k for k in self.raw if k not in known)


def ignored_warning(names: list[str]) -> str:
    return f"Endpoint ignored these unrecognized parameters: [{' '.join(names)}]"
