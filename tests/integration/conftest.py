"""Fixtures that start real ``vaultd server`` processes (see ``support.py``)
and stop every one of them at teardown, whatever the test did to them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.support import BaoRunner, InitResult, Server, ServerFactory, free_port, write_config


@pytest.fixture
def server_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ServerFactory]:
    """Make (and by default start) servers; all are stopped at teardown:
    SIGTERM to the master, then SIGKILL to the whole process group."""
    made: list[Server] = []
    request.node.vaultd_servers = made

    def make(*, workers: int = 4, start: bool = True, name: str | None = None, **config: Any) -> Server:
        directory = tmp_path / (name or f"vaultd{len(made)}")
        directory.mkdir(mode=0o700)
        port = free_port()
        server = Server(
            directory=directory,
            port=port,
            config=write_config(directory, port, workers=workers, **config),
            log=directory / "vaultd.log",
        )
        made.append(server)
        if start:
            server.start()
        return server

    yield make
    for server in made:
        server.stop()


@pytest.fixture
def vaultd(server_factory: ServerFactory) -> Server:
    """A fresh, uninitialised server: 4 workers, file storage."""
    return server_factory()


@pytest.fixture
def unsealed(vaultd: Server) -> tuple[Server, InitResult]:
    """A server initialised with 5 shares, threshold 3, and unsealed."""
    result = vaultd.init()
    vaultd.unseal(result.keys[:3])
    return vaultd, result


@pytest.fixture
def bao(tmp_path: Path, vaultd: Server) -> BaoRunner:
    """OpenBao's CLI pointed at ``vaultd``, with ``HOME`` in ``tmp_path``."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700, exist_ok=True)
    return BaoRunner(home=home, addr=vaultd.addr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Attach the output of every server the test started to its failure report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for server in getattr(item, "vaultd_servers", []):
            report.sections.append((f"vaultd output ({server.directory.name})", server.log_tail()))
