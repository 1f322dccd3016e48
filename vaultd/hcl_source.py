"""Read HCL1 and JSON config text into ordered top-level items, with lines.

pyhcl folds repeated top-level blocks into one dict, so a second
``listener "tcp" {}`` silently replaces the first, and it reports no line
numbers.  Vault allows several listeners, and an operator fixing a config
needs the line.  This module keeps pyhcl's grammar but asks it for the raw
list of top-level items, and walks pyhcl's own lexer alongside to learn
where every key sits.  Nothing here knows what the keys mean.
"""

from __future__ import annotations

import json
import math
import re
import threading
from dataclasses import dataclass, field

from hcl.lexer import Lexer
from hcl.parser import HclParser

_KEY_TOKENS = ("IDENTIFIER", "STRING")


class SourceSyntaxError(Exception):
    """The text is not HCL/JSON.  ``line`` is 1-based, or None if unknown."""

    def __init__(self, reason: str, line: int | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.line = line


@dataclass
class Item:
    """One top-level statement: ``key = value`` or ``key "label" { ... }``.

    ``lines`` maps key paths that start with ``key`` (for example
    ``("listener", "tcp", "address")``) to the line they first appear on
    inside this item; it is empty when the positions are unknown (JSON).
    """

    key: str
    value: object
    lines: dict[tuple[str, ...], int] = field(default_factory=dict)


class _ItemListParser(HclParser):
    """pyhcl's parser, returning top-level items as a list of pairs.

    Only the top-level flattening (the one call with ``replace=True``) is
    changed; pyhcl builds its grammar from the ``p_*`` methods, which are
    inherited untouched, so the grammar is exactly pyhcl's.
    """

    def objectlist_flat(self, lt: list[tuple[str, object]], replace: bool) -> object:
        if replace:
            return list(lt)
        return super().objectlist_flat(lt, replace)


MAX_DEPTH = 100
"""How deeply config values may nest; Vault's own config has three levels."""
_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_values(value: object) -> None:
    """What neither parser refuses but nothing after it can use: nesting
    past :data:`MAX_DEPTH`, text with a lone surrogate (no file name or
    address can hold one) and numbers that are not finite."""
    pending: list[tuple[object, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if depth > MAX_DEPTH:
            raise SourceSyntaxError(f"values nested deeper than {MAX_DEPTH} levels", None)
        if isinstance(item, str):
            if not item.isascii() and _SURROGATE.search(item):
                raise SourceSyntaxError("a string holds a lone UTF-16 surrogate", None)
        elif isinstance(item, float) and not math.isfinite(item):
            raise SourceSyntaxError("a number is out of range", None)
        elif isinstance(item, dict):
            pending.extend((key, depth) for key in item)
            pending.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, (list, tuple)):
            pending.extend((child, depth + 1) for child in item)


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


_PARSER: _ItemListParser | None = None
_PARSER_LOCK = threading.Lock()


def _parse_pairs(text: str) -> object:
    """pyhcl's parse with one parser per process: building it (ply's yacc
    tables) takes a third of a second, and ply keeps its stacks on the
    parser object, hence the lock."""
    global _PARSER
    with _PARSER_LOCK:
        if _PARSER is None:
            _PARSER = _ItemListParser()
        return _PARSER.parse(text)


def parse_hcl(text: str) -> list[Item]:
    """Top-level items in file order, repeated blocks kept apart."""
    try:
        pairs = _parse_pairs(text)
    except ValueError as exc:
        raise _syntax_error(str(exc), text) from None
    except RecursionError:
        raise SourceSyntaxError(f"values nested deeper than {MAX_DEPTH} levels", None) from None
    if pairs is None:
        pairs = []
    _check_values(pairs)
    items = [Item(key=str(k), value=v) for k, v in pairs]
    _attach(items, _hcl_key_lines(text))
    return items


def parse_json(text: str) -> list[Item]:
    """Top-level items of a JSON config; a list value of a block key is one
    item per element, as Vault's JSON form writes repeated blocks."""
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise SourceSyntaxError(exc.msg, exc.lineno) from None
    except RecursionError:
        raise SourceSyntaxError(f"values nested deeper than {MAX_DEPTH} levels", None) from None
    except ValueError as exc:  # NaN/Infinity, or an integer too long to convert
        raise SourceSyntaxError(str(exc).split(";")[0][:120], None) from None
    _check_values(data)
    if not isinstance(data, dict):
        raise SourceSyntaxError("the top level must be a JSON object", 1)
    items: list[Item] = []
    for key, value in data.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            items.extend(Item(key=key, value=v) for v in value)
        else:
            items.append(Item(key=key, value=value))
    _attach(items, _json_key_lines(text))
    return items


def _attach(items: list[Item], positions: list[dict[tuple[str, ...], int]]) -> None:
    """Give each item its key lines, if the position walk agrees with the
    real parser on the items; the walks are simplifications of the grammars,
    so on any disagreement lines are left unknown rather than wrong."""
    if len(positions) == len(items) and all(
        (it.key,) in pos for it, pos in zip(items, positions, strict=True)
    ):
        for it, pos in zip(items, positions, strict=True):
            it.lines = pos


def _syntax_error(message: str, text: str) -> SourceSyntaxError:
    """pyhcl's ``ValueError`` as a line and a reason.

    pyhcl's parser labels the absolute offset "column"; that is dropped.  The
    lexer quotes an illegal character, which could be part of a mistyped
    secret, so the character is dropped too.
    """
    match = re.match(r"Line (\d+), column (\d+)(?:, index \d+)?: (.*)", message, re.DOTALL)
    if match:
        line, column, reason = int(match.group(1)), int(match.group(2)), match.group(3)
        if reason.startswith("Illegal character"):
            reason = f"illegal character at column {column + 1}"
        return SourceSyntaxError(reason, line)
    if message.startswith("Unexpected end of file"):
        return SourceSyntaxError("unexpected end of file" + message[22:], text.count("\n") + 1)
    return SourceSyntaxError(message, None)


def _hcl_key_lines(text: str) -> list[dict[tuple[str, ...], int]]:
    """For each top-level item, the first line of every key path in it.

    A small state machine over pyhcl's tokens: keys collect until ``=``/``:``
    (an assignment) or ``{`` (a block); values are skipped, and objects
    inside lists are not indexed because they have no key path.
    """
    lexer = Lexer()
    lexer.input(text)
    items: list[dict[tuple[str, ...], int]] = []
    stack: list[tuple[str, ...] | None] = []
    pending: list[tuple[str, int]] = []
    expect_value = False

    def here() -> tuple[str, ...] | None:
        return stack[-1] if stack else ()

    def record_pending() -> tuple[str, ...] | None:
        """Index the pending keys (and each prefix, for block labels)."""
        base = here()
        if base is None:
            return None
        path = base
        for key, line in pending:
            path = (*path, key)
            if items:
                items[-1].setdefault(path, line)
        return path

    while (tok := lexer.token()) is not None:
        kind = tok.type
        if expect_value:
            if kind == "MINUS":
                continue
            expect_value = False
            if kind == "LEFTBRACE":
                stack.append(record_pending())
            elif kind == "LEFTBRACKET":
                stack.append(None)
            pending = []
            continue
        if kind in _KEY_TOKENS:
            if not stack and not pending:
                items.append({})
            pending.append((str(tok.value), tok.lineno))
        elif kind in ("EQUAL", "COLON"):
            record_pending()
            expect_value = True
        elif kind == "LEFTBRACE":
            stack.append(record_pending())
            pending = []
        elif kind in ("RIGHTBRACE", "RIGHTBRACKET"):
            if stack:
                stack.pop()
            pending = []
        elif kind == "COMMA":
            pending = []
    return items


_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\]:,]|[^\s{}\[\]:,"]+|\s+')


def _json_key_lines(text: str) -> list[dict[tuple[str, ...], int]]:
    """The JSON counterpart of :func:`_hcl_key_lines`; a dict inside the list
    value of a top-level key starts an item, as in :func:`parse_json`."""
    items: list[dict[tuple[str, ...], int]] = []
    # Each open container: [is_object, path of its keys or None, last key
    # (objects) or number of elements seen (arrays)].
    stack: list[list[object]] = []
    line = 1
    expect_key = False
    for match in _JSON_TOKEN.finditer(text):
        tok = match.group()
        if tok[0].isspace():
            line += tok.count("\n")
            continue
        top = stack[-1] if stack else None
        if tok in "{[":
            if top is None:
                path: tuple[str, ...] | None = ()
            elif top[0]:
                path = None if top[1] is None else top[1] + (top[2],)
            elif len(stack) == 2 and tok == "{" and top[1] is not None:
                if top[2]:
                    items.append({top[1]: line})
                top[2] = 1
                path = top[1]
            else:
                path = None
            stack.append([tok == "{", path, "" if tok == "{" else 0])
            expect_key = tok == "{"
        elif tok in "}]":
            if stack:
                stack.pop()
            expect_key = False
        elif tok == ",":
            expect_key = bool(top and top[0])
        elif tok == ":":
            expect_key = False
        elif expect_key and top is not None and tok.startswith('"'):
            key = json.loads(tok)
            top[2] = key
            expect_key = False
            if top[1] == ():
                items.append({})
            if top[1] is not None and items:
                items[-1].setdefault(top[1] + (key,), line)
    return items
