"""``~/.vault-token``: the token ``login`` leaves for later commands.

Same file as Vault's built-in token helper, so vaultctl and ``vault`` share a
login.  The file holds a live credential: it is written to a temporary file
that is created with mode 0600 (``mkstemp`` uses ``O_EXCL`` and that mode),
then renamed over the old one, so no other user can ever read it, not even
for the moment between create and chmod, and a crash never leaves half a
token behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

TOKEN_FILE = ".vault-token"  # noqa: S105 - a file name, not a secret


def token_path() -> Path:
    """``$HOME/.vault-token``."""
    return Path(os.path.expanduser("~")) / TOKEN_FILE


def read_token() -> str | None:
    """The stored token, or None when there is none."""
    try:
        text = token_path().read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return text or None


def store_token(token: str) -> Path:
    """Replace the stored token atomically; the file is 0600 from birth."""
    path = token_path()
    fd, tmp = tempfile.mkstemp(prefix=f"{TOKEN_FILE}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(token)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def erase_token() -> None:
    with contextlib.suppress(FileNotFoundError):
        token_path().unlink()

