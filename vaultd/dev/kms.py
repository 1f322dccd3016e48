"""A KMS emulator for development that keeps its key across restarts.

moto's server mode is a real KMS-compatible HTTP endpoint, but it keeps keys
in memory: a new emulator could not decrypt the stored key a previous one
wrapped, and ``make run`` could never restart into an unsealed server.  So
this runs moto in-process and, on start, puts back the one key it had, with
the same id and key material, from a 0600 state file.  Development only:
the key material on disk is exactly what a real KMS never lets out.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path

REGION = "us-east-1"
ACCESS_KEY = "AKIAVAULTDDEVONLY000"
SECRET_KEY = "vaultd-dev-emulator-secret"  # noqa: S105 - moto accepts any credentials
ALIAS = "alias/vaultd-dev"


@dataclass
class DevKms:
    endpoint: str
    key_id: str
    arn: str

    def stop(self) -> None:
        server = getattr(self, "_server", None)
        if server is not None:
            server.stop()


def start(state_file: Path, host: str = "127.0.0.1", port: int = 0) -> DevKms:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.kms.models import kms_backends
    from moto.server import ThreadedMotoServer

    if port == 0:
        import socket

        with socket.socket() as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    server.start()
    backend = kms_backends[DEFAULT_ACCOUNT_ID][REGION]
    key = backend.create_key(
        policy=None, key_usage="ENCRYPT_DECRYPT", key_spec="SYMMETRIC_DEFAULT",
        description="vaultd development seal key", tags=None,
    )
    if state_file.exists():
        saved = json.loads(state_file.read_text())
        backend.keys.pop(key.id)
        key.id = saved["key_id"]
        key.arn = saved["arn"]
        key.key_material = base64.b64decode(saved["key_material"])
        backend.keys[key.id] = key
    else:
        fd = os.open(state_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(
                {"key_id": key.id, "arn": key.arn, "key_material": base64.b64encode(key.key_material).decode()}, out
            )
    if backend.alias_exists(ALIAS):
        backend.update_alias(key.id, ALIAS)
    else:
        backend.create_alias(key.id, ALIAS)
    kms = DevKms(endpoint=f"http://{host}:{port}", key_id=key.id, arn=key.arn)
    kms._server = server  # type: ignore[attr-defined]
    return kms
