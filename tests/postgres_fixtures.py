"""A real PostgreSQL for tests: Debian's server binaries, a throwaway cluster.

The session fixture ``postgres`` makes a cluster with ``initdb`` in a
temporary directory and runs it with ``pg_ctl`` on a free loopback port (and
a unix socket in that directory), as the ``postgres`` user when the tests
run as root (``initdb`` refuses root), and removes it at the end.  Each test
that asks for ``pg_url`` gets a database of its own (``CREATE DATABASE``).
Tests skip, saying why, when PostgreSQL is not installed or cannot start;
``make test`` installs Debian's ``postgresql`` package.

Fixtures (registered by ``tests/conftest.py``)::

    postgres   session   PostgresCluster (start/stop/restart, url(), create_database())
    pg_url     function  the connection URL of a fresh, empty database
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from vaultd.dev.ports import free_port

SUPERUSER = "postgres"
"""The database superuser initdb makes (authentication is ``trust``)."""
PG_TIMEOUT = 60


def find_bindir() -> Path | None:
    """The newest installed server's binaries (Debian keeps them off PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return Path(found[-1]).parent if found else None


@dataclass
class PostgresCluster:
    bindir: Path
    root: Path
    port: int
    os_user: str | None
    """Who runs the server (``runuser -u``), or None: the current user."""
    _names: Iterator[int] = field(default_factory=itertools.count)

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    @property
    def logfile(self) -> Path:
        return self.root / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [*args]
        if self.os_user is not None:
            command = ["runuser", "-u", self.os_user, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=PG_TIMEOUT, check=False,
                              stdin=subprocess.DEVNULL, cwd=self.root)

    def _checked(self, *args: str) -> None:
        result = self._run(*args)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({result.returncode}): "
                               f"{result.stderr.strip() or result.stdout.strip()}\n{self.log_tail()}")

    def log_tail(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")[-3000:]
        except FileNotFoundError:
            return ""

    def initdb(self) -> None:
        self._checked(str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", SUPERUSER, "--auth=trust",
                      "-E", "UTF8", "--no-locale", "--no-sync")

    def start(self) -> None:
        options = (f"-c port={self.port} -c listen_addresses=127.0.0.1 "
                   f"-c unix_socket_directories={self.socket_dir} -c max_connections=200")
        self._checked(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile), "-w",
                      "-t", str(PG_TIMEOUT), "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        self._checked(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-w", "-t", str(PG_TIMEOUT),
                      "-m", mode, "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def running(self) -> bool:
        return self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "status").returncode == 0

    def execute(self, statement: str, database: str = "postgres") -> None:
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as conn:
            conn.execute(statement)  # type: ignore[arg-type]

    def create_database(self) -> str:
        """A new, empty database; its name."""
        name = f"vaultd_test_{os.getpid()}_{next(self._names)}"
        self.execute(f'CREATE DATABASE "{name}"')
        return name


def start_cluster() -> PostgresCluster:
    """A running cluster, or ``pytest.skip`` with the reason."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin; "
                    "`make test` installs Debian's postgresql package)")
    os_user: str | None = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SUPERUSER)
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run PostgreSQL as (initdb refuses root)")
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser to start PostgreSQL as the postgres user")
        os_user = SUPERUSER
    # Not under pytest's tmp_path: that is private to the test user, and
    # the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="vaultd-pg-"))
    os.chmod(root, 0o700)
    (root / "sock").mkdir(mode=0o700)
    if os_user is not None:
        info = pwd.getpwnam(os_user)
        for path in (root, root / "sock"):
            os.chown(path, info.pw_uid, info.pw_gid)
    cluster = PostgresCluster(bindir=bindir, root=root, port=free_port(), os_user=os_user)
    try:
        cluster.initdb()
        cluster.start()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"cannot start a PostgreSQL cluster: {exc}")
    return cluster


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            if cluster.running():
                cluster.stop("immediate")
        shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture
def pg_url(postgres: PostgresCluster) -> str:
    """A fresh database's URL; the cluster is started again if a test left it down."""
    if not postgres.running():
        postgres.start()
    return postgres.url(postgres.create_database())
