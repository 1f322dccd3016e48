"""A real KMS for tests: moto's server mode on a loopback port, plus keys.

boto3 reaches it over HTTP exactly as it reaches AWS (``endpoint`` set,
static dummy credentials), so the seal and the agent run their production
code paths.  Error paths moto does not emulate go through
:class:`tests.faultproxy.FaultProxy` (fixture ``kms_proxy``).

Importable helpers (for integration tests, ``make run`` and scripts) and
pytest fixtures (registered by ``tests/conftest.py``)::

    moto_kms     session   MotoServer(endpoint=...)
    kms_key      function  a fresh symmetric key: KmsKey(key_id, arn, alias, ...)
    kms_proxy    function  FaultProxy in front of moto (point the seal at .url)
    aws_env      function  AWS_* variables cleared, no shared files, no IMDS

Run ``python -m tests.kms_fixtures`` to start an emulator with a key by hand;
it prints the endpoint and key id and runs until interrupted.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.faultproxy import FaultProxy
from vaultd.dev.ports import free_port as free_port  # one port picker for every test server

REGION = "us-east-1"
ACCESS_KEY = "AKIAVAULTDTESTING000"
SECRET_KEY = "vaultd-test-secret-key-not-a-real-one"
"""Dummy credentials: moto accepts any, but boto3 must have some to sign."""

AWS_ENV_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_KMS_ENDPOINT",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_KMS",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_MAX_ATTEMPTS",
    "AWS_RETRY_MODE",
    "VAULT_AWSKMS_SEAL_KEY_ID",
    "AWSKMS_WRAPPER_KEY_ID",
)




def isolated_aws_env(base: dict[str, str] | None = None, home: Path | None = None) -> dict[str, str]:
    """An environment for a child process with no AWS settings leaking in
    from the developer's machine (profiles, real credentials, IMDS)."""
    env = dict(os.environ if base is None else base)
    for name in AWS_ENV_VARS:
        env.pop(name, None)
    missing = str((home or Path("/nonexistent")) / "aws-none")
    env["AWS_CONFIG_FILE"] = missing
    env["AWS_SHARED_CREDENTIALS_FILE"] = missing
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    return env


@dataclass
class MotoServer:
    endpoint: str
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_moto_server(
    host: str = "127.0.0.1", port: int | None = None, *, log_path: Path | None = None,
    timeout: float = 60.0,
) -> MotoServer:
    """Start ``python -m moto.server`` and wait until it answers."""
    port = port or free_port(host)
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=isolated_aws_env(),
        )
    finally:
        if log_path:
            log.close()  # type: ignore[union-attr]
    server = MotoServer(endpoint=f"http://{host}:{port}", process=process)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"moto server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{server.endpoint}/moto-api/", timeout=2):
                return server
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError("moto server did not answer in time") from None
            time.sleep(0.1)


@dataclass
class KmsKey:
    key_id: str
    arn: str
    alias: str
    endpoint: str
    region: str = REGION

    def seal_options(self, endpoint: str | None = None, kms_key_id: str | None = None) -> dict[str, str]:
        """The ``seal "awskms"`` options that reach this key (through
        ``endpoint`` if given, e.g. a FaultProxy's url)."""
        return {
            "region": self.region,
            "access_key": ACCESS_KEY,
            "secret_key": SECRET_KEY,
            "kms_key_id": kms_key_id or self.key_id,
            "endpoint": endpoint or self.endpoint,
        }

    def seal_hcl(self, endpoint: str | None = None, kms_key_id: str | None = None) -> str:
        """The same as a config file stanza."""
        body = "".join(
            f'  {name} = "{value}"\n'
            for name, value in self.seal_options(endpoint, kms_key_id).items()
        )
        return f'seal "awskms" {{\n{body}}}\n'


@functools.lru_cache(maxsize=8)
def kms_client(endpoint: str, region: str = REGION) -> Any:
    """A plain boto3 KMS client for setting the emulator up (kept: making
    one costs a model load)."""
    return boto3.session.Session().client(
        "kms",
        region_name=region,
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )


def create_kms_key(endpoint: str, region: str = REGION, alias: str | None = None) -> KmsKey:
    """A new symmetric ENCRYPT_DECRYPT key, with an alias (``alias/vaultd-<id>``)."""
    client = kms_client(endpoint, region)
    meta = client.create_key(Description="vaultd test key")["KeyMetadata"]
    alias = alias or f"alias/vaultd-{meta['KeyId'][:8]}"
    client.create_alias(AliasName=alias, TargetKeyId=meta["KeyId"])
    return KmsKey(key_id=meta["KeyId"], arn=meta["Arn"], alias=alias, endpoint=endpoint, region=region)


@pytest.fixture(scope="session")
def moto_kms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = start_moto_server(log_path=tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def kms_key(moto_kms: MotoServer) -> KmsKey:
    return create_kms_key(moto_kms.endpoint)


@pytest.fixture
def kms_proxy(moto_kms: MotoServer) -> Iterator[FaultProxy]:
    with FaultProxy(moto_kms.endpoint) as proxy:
        yield proxy


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """This process's environment without AWS settings; returns the changes."""
    for name in AWS_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    missing = str(tmp_path / "aws-none")
    changes = {
        "AWS_CONFIG_FILE": missing,
        "AWS_SHARED_CREDENTIALS_FILE": missing,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    for name, value in changes.items():
        monkeypatch.setenv(name, value)
    return changes


def main() -> int:
    """Run an emulator with one key until interrupted (for manual runs)."""
    port = int(sys.argv[1]) if len(sys.argv) > 1 else None
    # As a background job SIGINT may be ignored; SIGTERM must stop moto too.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = start_moto_server(port=port)
    try:
        key = create_kms_key(server.endpoint, alias="alias/vaultd")
        print(f"KMS endpoint: {server.endpoint}", flush=True)
        print(f"key id: {key.key_id}\nkey arn: {key.arn}\nalias: {key.alias}", flush=True)
        print(key.seal_hcl(), flush=True)
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
