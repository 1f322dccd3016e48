"""Fixtures of the e2e tests: the .deb and root filesystem, built once per
session (``make deb`` costs most of a minute), a KMS emulator per test, and
the measurement printer."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.support import DebianImage, Report, prepare_image
from tests.faultproxy import FaultProxy
from tests.kms_fixtures import MotoServer, start_moto_server


@pytest.fixture(scope="session")
def debian_image(tmp_path_factory: pytest.TempPathFactory) -> DebianImage:
    return prepare_image(tmp_path_factory.mktemp("debian-image"))


@pytest.fixture
def report(capsys: pytest.CaptureFixture[str]) -> Report:
    return Report(capsys)


@pytest.fixture
def kms() -> Iterator[tuple[MotoServer, FaultProxy]]:
    """moto's KMS on the host's loopback (which the container shares), behind
    a fault proxy that can take it down."""
    server = start_moto_server()
    try:
        with FaultProxy(server.endpoint) as proxy:
            yield server, proxy
    finally:
        server.stop()
