"""Random (version 4) UUID strings at a fraction of ``str(uuid.uuid4())``'s cost.

Every answer carries a fresh ``request_id``; ``str(uuid.uuid4())`` spends
most of its time on one small ``os.urandom`` call and on building a
``UUID`` object only to print it.  Here ids are made :data:`BATCH` at a
time: one ``os.urandom`` call, then the hex digits are copied into a
template of ``BATCH`` formatted ids with strided slice assignments (each
a single C loop over the whole batch), so no per-id Python work is left
but taking one from the pool.

The ids are exactly what ``str(uuid.uuid4())`` prints: 122 bits from the
operating system's CSPRNG, version nibble ``4``, RFC 4122 variant
(``8``, ``9``, ``a`` or ``b``), lower-case.

Each id is handed out once: ``list.pop`` and ``list.extend`` are atomic,
so threads may share the pool.  A forked child must not hand out the ids
its parent (or a sibling forked from the same parent) still holds, so the
pool is emptied in the child at fork time (:func:`os.register_at_fork`,
which gunicorn's ``os.fork`` of a worker and ``multiprocessing``'s fork
both run).
"""

from __future__ import annotations

import binascii
import os

BATCH = 256
"""Ids drawn per refill: 4 KiB of randomness, about 20 KiB of strings."""

_WIDTH = 37  # 36 characters and a newline between ids
_TEMPLATE = b"00000000-0000-4000-8000-000000000000\n" * BATCH
# Where each of the 32 hex digits of 16 random bytes goes in an id, but for
# digit 12 (the version nibble: the template's fixed "4") and digit 16 (the
# variant nibble, translated below).
_DASHES = (8, 13, 18, 23)
_COPIES = tuple(
    (target, source)
    for source, target in enumerate(position for position in range(36) if position not in _DASHES)
    if source not in (12, 16)
)
_VARIANT_AT = 19
# The variant nibble's top two bits become 10 (RFC 4122): 0-f -> 8 9 a b.
_VARIANT = bytes.maketrans(b"0123456789abcdef", b"89ab89ab89ab89ab")

_pool: list[str] = []


def _batch() -> list[str]:
    digits = binascii.hexlify(os.urandom(16 * BATCH))
    out = bytearray(_TEMPLATE)
    for target, source in _COPIES:
        out[target::_WIDTH] = digits[source::32]
    out[_VARIANT_AT::_WIDTH] = digits[16::32].translate(_VARIANT)
    return out.decode("ascii").split()


def uuid4_str() -> str:
    """A new random UUID in its 36-character text form, never handed out before."""
    try:
        return _pool.pop()
    except IndexError:
        fresh = _batch()
        mine = fresh.pop()
        _pool.extend(fresh)
        return mine


def _forget() -> None:
    """In a forked child: drop the ids the parent holds too."""
    _pool.clear()


os.register_at_fork(after_in_child=_forget)
