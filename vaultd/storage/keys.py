"""What a storage key may look like.

Physical backends map keys onto something with its own rules (a directory
tree, later SQL rows), and a view must not let an engine reach outside its
prefix.  Checking key shape once, here, gives every backend the same answer
to "is this a key?" instead of each backend failing in its own way.
"""

from __future__ import annotations


def split_key(key: str) -> list[str]:
    """The ``/``-separated segments of ``key``, or ``ValueError``.

    Rejected: empty keys, empty segments (leading, trailing or doubled
    ``/``), ``..`` segments, and strings that are not valid Unicode.  The
    messages do not repeat the key: keys can embed identifiers that belong in
    the audit log rather than in an error returned to a client.
    """
    if not isinstance(key, str):
        raise TypeError("storage key must be a string")
    if not key:
        raise ValueError("storage key is empty")
    return _segments(key, "storage key")


def check_key(key: str) -> None:
    """:func:`split_key`'s verdict without building the segments: what a
    backend that stores whole keys (SQLite) needs on every read.  The common
    key, plain ASCII with no ``..``, is settled by four string scans."""
    if (
        isinstance(key, str)
        and key
        and key[0] != "/"
        and key[-1] != "/"
        and "//" not in key
        and ".." not in key
        and key.isascii()
    ):
        return
    split_key(key)


def split_prefix(prefix: str) -> list[str]:
    """Segments of a ``list`` prefix: ``""`` or a valid key followed by ``/``."""
    if not isinstance(prefix, str):
        raise TypeError("storage prefix must be a string")
    if not prefix:
        return []
    if not prefix.endswith("/"):
        raise ValueError("storage prefix must be empty or end with '/'")
    return _segments(prefix[:-1], "storage prefix")


def _segments(path: str, what: str) -> list[str]:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid Unicode") from None
    segments = path.split("/")
    if any(segment == "" for segment in segments):
        raise ValueError(f"{what} has an empty path segment")
    if any(segment == ".." for segment in segments):
        raise ValueError(f"{what} must not contain '..' segments")
    return segments
