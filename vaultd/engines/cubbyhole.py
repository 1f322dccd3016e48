"""``cubbyhole/``: a private key/value space for every token.

Mounted on every server and not movable.  Each token sees only its own
space: the engine is handed the token's storage hash with the request (set
by the core after authentication, never taken from the client), and the
space lives under the token store (``sys/token/cubbyhole/<hash>/``), so
revoking a token destroys its cubbyhole in the same place that deletes the
token.  Response wrapping keeps the wrapped response in the wrapping token's
cubbyhole, at ``response``.
"""

from __future__ import annotations

import json
from typing import Any

from vaultd.engines.base import Engine, MountSettings, check_segments
from vaultd.errors import BadRequest, MethodNotAllowed, NotFound
from vaultd.logical import Operation, Request, Response
from vaultd.storage.base import Storage
from vaultd.storage.view import StorageView

CUBBYHOLE_PREFIX = "cubbyhole/"
"""Inside the token store's view: ``cubbyhole/<token hash>/<path>``."""


class Cubbyhole(Engine):
    def __init__(self, token_storage: Storage, mount: MountSettings) -> None:
        """``token_storage`` is the token store's view (``sys/token/``)."""
        super().__init__(token_storage, mount)

    def space(self, token_hash: str) -> Storage:
        if not token_hash or "/" in token_hash:
            raise BadRequest("cubbyhole: no token")
        return StorageView(self.storage, f"{CUBBYHOLE_PREFIX}{token_hash}/")

    def exists(self, request: Request) -> bool:
        key = request.path.strip("/")
        return bool(key) and self.space(request.client_token_hash).get(key) is not None

    def handle(self, request: Request) -> Response:
        space = self.space(request.client_token_hash)
        path = request.path
        check_segments(path)
        op = request.operation
        if op is Operation.LIST:
            prefix = path.strip("/")
            keys = space.list(prefix + "/" if prefix else "")
            if not keys:
                raise NotFound()
            return Response(data={"keys": keys})
        key = path.strip("/")
        if not key:
            raise BadRequest("missing path")
        if op is Operation.READ:
            raw = space.get(key)
            if raw is None:
                raise NotFound()
            return Response(data=json.loads(raw))
        if op in (Operation.CREATE, Operation.UPDATE):
            if not request.data:
                raise BadRequest("missing data fields")
            space.put(key, json.dumps(request.data).encode())
            return Response()
        if op is Operation.DELETE:
            space.delete(key)
            return Response()
        raise MethodNotAllowed("unsupported operation")


def put_response(space: Storage, body: dict[str, Any]) -> None:
    """Where a wrapped response is kept (Vault's ``cubbyhole/response``)."""
    space.put("response", json.dumps(body).encode())


def take_response(space: Storage) -> dict[str, Any] | None:
    raw = space.get("response")
    return None if raw is None else json.loads(raw)
