"""``vaultctl operator snapshot save FILE`` and ``restore FILE``.

The same endpoints as ``bao operator raft snapshot save|restore``
(``sys/storage/raft/snapshot``).  A snapshot is barrier ciphertext, useless
without the unseal keys, but it is still the whole store: ``save`` writes it
to a temporary file that is 0600 from birth in the target's directory and
renames it into place only once the server has sent all of it, so a broken
download never leaves a file that looks like a snapshot.

``save -renew-token`` (vaultd's own flag) renews the token first, so the
periodic token of the daily backup timer lives as long as backups run.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

import requests

from vaultd.cli.base import Command, Context, Failure
from vaultd.cli.client import ApiError
from vaultd.cli.flags import EXIT_USAGE, Flag, expect_args
from vaultd.cli.output import out

PATH = "sys/storage/raft/snapshot"
FORCE_PATH = "sys/storage/raft/snapshot-force"
_TIMEOUT = (10, 600)
"""Connect and read timeouts: a large store takes a while to copy."""


def _headers(ctx: Context) -> dict[str, str]:
    token = ctx.client.token
    return {"X-Vault-Token": token} if token else {}


def _api_error(method: str, url: str, resp: requests.Response) -> ApiError:
    try:
        parsed = resp.json()
    except ValueError:
        parsed = None
    errors = parsed.get("errors") if isinstance(parsed, dict) else None
    return ApiError(method, url, resp.status_code, errors if isinstance(errors, list) else None, resp.text)


def run_save(ctx: Context) -> int:
    expect_args(ctx.args, 1, 1)
    target = ctx.args[0]
    directory = os.path.dirname(os.path.abspath(target))
    client = ctx.client
    url = client.url(PATH)
    if ctx.flag("renew-token"):
        ctx.call("renewing the token", "PUT", "auth/token/renew-self", body={})
    try:
        fd, partial = tempfile.mkstemp(prefix=".vaultd-snapshot-", dir=directory)  # 0600
    except OSError as exc:
        raise Failure(f"Error creating the snapshot file: {exc.strerror}", EXIT_USAGE) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            try:
                with client.session.get(url, headers=_headers(ctx), stream=True, timeout=_TIMEOUT,
                                        allow_redirects=False, verify=client.verify) as resp:
                    if resp.status_code != 200:
                        raise Failure(f"Error taking the snapshot: {_api_error('GET', url, resp)}")
                    for block in resp.iter_content(chunk_size=1024 * 1024):
                        handle.write(block)
                    expected = resp.headers.get("Content-Length")
            except requests.RequestException as exc:
                raise Failure(f"Error taking the snapshot: {type(exc).__name__}") from None
            handle.flush()
            os.fsync(handle.fileno())
            if expected is not None and handle.tell() != int(expected):
                raise Failure("Error taking the snapshot: the download was cut short")
        os.replace(partial, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise
    return 0


def run_restore(ctx: Context) -> int:
    expect_args(ctx.args, 1, 1)
    source = ctx.args[0]
    try:
        with open(source, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise Failure(f"Error opening the snapshot file: {exc.strerror}", EXIT_USAGE) from None
    client = ctx.client
    url = client.url(FORCE_PATH if ctx.flag("force") else PATH)
    headers = {**_headers(ctx), "Content-Type": "application/octet-stream"}
    try:
        resp = client.session.post(url, data=data, headers=headers, timeout=_TIMEOUT, allow_redirects=False,
                                   verify=client.verify)
    except requests.RequestException as exc:
        raise Failure(f"Error installing the snapshot: {type(exc).__name__}") from None
    if resp.status_code >= 300:
        raise Failure(f"Error installing the snapshot: {_api_error('POST', url, resp)}")
    out("Success! The snapshot is installed; the server is sealed until it is unsealed again.")
    return 0


COMMANDS = [
    Command(
        ("operator", "snapshot", "save"),
        "Save an online snapshot of the server's storage into FILE (written 0600).",
        "[options] FILE",
        (
            Flag("renew-token", bool, False,
                 "Renew the token first (auth/token/renew-self): keeps a periodic backup token alive."),
        ),
        run_save,
    ),
    Command(
        ("operator", "snapshot", "restore"),
        "Replace the server's storage with the snapshot in FILE; the server then seals.",
        "[options] FILE",
        (Flag("force", bool, False, "Install a snapshot taken under other unseal keys (snapshot-force)."),),
        run_restore,
    ),
]
