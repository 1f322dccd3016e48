"""Vault-like table and JSON output.

Tables are for people (aligned columns, ``n/a`` for empty values, durations
as ``1h``); ``-format=json`` is for scripts and prints the server's JSON
unchanged except where a token would leak.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable

from vaultd.durations import human_duration

FORMATS = ("table", "json")
MAX_LINE_LENGTH = 78
_TOO_LONG = 100_000
"""Extra cost of a line over the width (only a single long word makes one)."""
_GAP = 4


def out(text: str = "", end: str = "\n") -> None:
    sys.stdout.write(text + end)


def err(text: str) -> None:
    sys.stderr.write(text.rstrip("\n") + "\n")


def print_json(value: object) -> None:
    out(json.dumps(value, indent=2))


def table(rows: Iterable[tuple[object, ...]], header: tuple[str, ...] | None = ("Key", "Value")) -> str:
    """Columns padded like Vault's: a header, a dashed rule, then rows (or
    the rows alone, with ``header=None``, as Vault's ``columnOutput``)."""
    body = [tuple(value_text(c) if not isinstance(c, str) else c for c in row) for row in rows]
    lines = [header, tuple("-" * len(h) for h in header), *body] if header else body
    if not lines:
        return ""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    rendered = []
    for line in lines:
        cells = [cell.ljust(widths[i] + _GAP) for i, cell in enumerate(line[:-1])]
        rendered.append(("".join(cells) + line[-1]).rstrip())
    return "\n".join(rendered)


def kv_table(data: dict[str, object], durations: tuple[str, ...] = ()) -> str:
    """A Key/Value table of a response's ``data``, keys sorted as Vault does."""
    rows = []
    for key in sorted(data):
        value = data[key]
        if key in durations and isinstance(value, int) and not isinstance(value, bool):
            rows.append((key, human_duration(value)))
        else:
            rows.append((key, value_text(value)))
    return table(rows)


def wrap_at_length(text: str, width: int = MAX_LINE_LENGTH) -> str:
    """Vault's ``wrapAtLength``: lines of at most ``width`` columns with the
    least raggedness (the sum over all lines but the last of the square of
    the room left), not greedy filling, so multi-line messages break exactly
    where the real CLI breaks them.  A word longer than the line stands on
    its own line."""
    words = text.strip().replace("\n", " ").split(" ")
    n = len(words)
    cost = [0] * (n + 1)
    cut = [n] * (n + 1)
    for start in range(n - 1, -1, -1):
        length = -1
        best, best_cut = None, n
        for end in range(start, n):
            length += 1 + len(words[end])
            if end == n - 1 and (length <= width or start == n - 1):
                best, best_cut = 0, n  # the last line is free
                break
            if end + 1 < n:
                room = width - length
                total = room * room + cost[end + 1] + (_TOO_LONG if length > width else 0)
                if best is None or total < best:
                    best, best_cut = total, end + 1
        cost[start], cut[start] = best or 0, best_cut
    lines, start = [], 0
    while start < n:
        lines.append(" ".join(words[start:cut[start]]))
        start = cut[start]
    return "\n".join(lines)


def heading(title: str) -> str:
    return f"== {title} =="


def value_text(value: object) -> str:
    """One table cell.  Go's ``%v`` forms, since that is what operators
    know from Vault: ``<nil>``, ``[a b]``, ``map[k:v]``; empty is ``n/a``."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else "n/a"
    if isinstance(value, list):
        return "[" + " ".join(_inner(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_inner(v)}" for k, v in sorted(value.items())) + "]"
    return str(value)


def _inner(value: object) -> str:
    return value if isinstance(value, str) else value_text(value)



def json_list(value: object) -> str:
    """Policy lists as Vault prints them in token tables: ``["default"]``."""
    return json.dumps(value if isinstance(value, list) else [])
