"""HMAC-SHA256 of audited values with a device's salt, as Vault writes them.

Vault keeps, per audit device, a random salt in the barrier and writes every
string of a request's and a response's data (and the tokens) as
``hmac-sha256:<hex>`` of it.  An operator who holds a token or a value can
ask ``sys/audit-hash`` for the same HMAC and grep the log for it; someone who
reads the log alone learns nothing but equality.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid
from collections.abc import Callable
from typing import Any

PREFIX = "hmac-sha256:"

_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})",
    re.ASCII,
)
"""Vault leaves strings that parse as RFC 3339 times in clear (a KV v2
``created_time`` stays readable); only that exact shape is left out."""


def new_salt() -> str:
    """A fresh salt, in Vault's form (a UUID's text)."""
    return str(uuid.uuid4())


class Hasher:
    """One device's salt and its HMAC."""

    __slots__ = ("_empty", "_keyed")

    def __init__(self, salt: str) -> None:
        # Keyed once; each value copies the keyed state, which costs about
        # two thirds of a one-shot HMAC (with OpenSSL 3 that also looks the
        # digest up by name every time).  A request hashes a dozen strings.
        self._keyed = hmac.new(salt.encode(), digestmod=hashlib.sha256)
        self._empty = self._digest("")
        """Empty strings are common in data (a KV v2 ``deletion_time``)."""

    def _digest(self, value: str) -> str:
        mac = self._keyed.copy()
        mac.update(value.encode("utf-8", "surrogatepass"))
        return PREFIX + mac.hexdigest()

    def __call__(self, value: str) -> str:
        return self._digest(value) if value else self._empty

    def __repr__(self) -> str:  # never the salt
        return "Hasher(<salt>)"


def hash_structure(value: Any, fn: Callable[[str], str]) -> Any:
    """A copy of a JSON value with every string (but map keys and RFC 3339
    times) replaced by ``fn`` of it.  Walked with a stack, not recursion:
    request bodies may nest as deep as the API accepts.  Every response
    entry walks its data, so the loop tests exact types first (what JSON
    decodes to) and leaves the rest (subclasses) to :func:`_copy`."""
    if isinstance(value, str):
        return _leaf(value, fn)
    if not isinstance(value, (dict, list)):
        return value
    root: Any = {} if isinstance(value, dict) else []
    pending: list[tuple[Any, Any]] = [(value, root)]
    time_shape = _RFC3339.fullmatch
    while pending:
        source, target = pending.pop()
        if isinstance(source, dict):
            for key, item in source.items():
                cls = type(item)
                if cls is str:
                    # _leaf, inlined: a time is 20 to 35 characters with a T at 10.
                    target[key] = (item if 20 <= len(item) <= 35 and item[10] == "T" and time_shape(item)
                                   else fn(item))
                elif cls is int or cls is bool or item is None:
                    target[key] = item
                else:
                    target[key] = _copy(item, fn, pending)
        else:
            append = target.append
            for item in source:
                cls = type(item)
                if cls is str:
                    append(item if 20 <= len(item) <= 35 and item[10] == "T" and time_shape(item) else fn(item))
                elif cls is int or cls is bool or item is None:
                    append(item)
                else:
                    append(_copy(item, fn, pending))
    return root


def _copy(item: Any, fn: Callable[[str], str], pending: list[tuple[Any, Any]]) -> Any:
    """One item of :func:`hash_structure`: a container is copied empty and
    queued, a string hashed, anything else kept."""
    if isinstance(item, dict):
        copied: Any = {}
    elif isinstance(item, list):
        copied = []
    elif isinstance(item, str):
        return _leaf(item, fn)
    else:
        return item
    pending.append((item, copied))
    return copied


def _leaf(value: str, fn: Callable[[str], str]) -> str:
    if 20 <= len(value) <= 35 and value[10] == "T" and _RFC3339.fullmatch(value):
        return value
    return fn(value)
