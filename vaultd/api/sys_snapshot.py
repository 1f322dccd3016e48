"""``sys/storage/raft/snapshot`` and ``snapshot-force``: online backups.

Vault's paths and shapes, so ``bao operator raft snapshot save|restore``
work as well as ``vaultctl operator snapshot``: GET streams the snapshot as
``application/octet-stream``; POST (or PUT) takes one as the raw body and
answers 204.  Both need ``sudo`` on ``sys/storage/raft/snapshot``
(``snapshot-force`` is authorised on its own path, as Vault does).  The
work is in :mod:`vaultd.core.snapshot`; this module moves bytes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from flask import Blueprint, Response
from flask.typing import ResponseReturnValue

from vaultd.api.http import body_bytes, client_token, core, no_content
from vaultd.core import snapshot
from vaultd.logical import Operation

bp = Blueprint("sys_snapshot", __name__)

PATH = "sys/storage/raft/snapshot"
FORCE_PATH = "sys/storage/raft/snapshot-force"


@bp.get(f"/v1/{PATH}")
def save() -> ResponseReturnValue:
    the_core = core()
    the_core.check(client_token(), PATH, Operation.READ, sudo=True)
    directory = snapshot.private_tempdir()
    target = os.path.join(directory, "snapshot.db")
    try:
        snapshot.save(the_core.physical, target)
        size = os.path.getsize(target)
        # Opened (and unlinked) before the response starts: nothing is left
        # behind however the client's download ends.
        chunks = snapshot.iter_file(target)
        first = next(chunks, b"")
    finally:
        snapshot.remove_tree(directory)

    def stream() -> Iterator[bytes]:
        yield first
        yield from chunks

    response = Response(stream(), status=200, mimetype="application/octet-stream")
    response.headers["Content-Length"] = str(size)
    response.headers["Content-Disposition"] = 'attachment; filename="vaultd.snap"'
    return response


def _restore(path: str, force: bool) -> ResponseReturnValue:
    the_core = core()
    the_core.check(client_token(), path, Operation.UPDATE, sudo=True)
    body = body_bytes()
    directory = snapshot.private_tempdir()
    try:
        upload = os.path.join(directory, "upload.db")
        fd = os.open(upload, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(body)
        del body
        snapshot.restore(the_core, upload, force=force)
    finally:
        snapshot.remove_tree(directory)
    return no_content()


@bp.route(f"/v1/{PATH}", methods=["POST", "PUT"])
def restore() -> ResponseReturnValue:
    return _restore(PATH, force=False)


@bp.route(f"/v1/{FORCE_PATH}", methods=["POST", "PUT"])
def restore_force() -> ResponseReturnValue:
    return _restore(FORCE_PATH, force=True)
