"""The agent channel's rules (vaultd/agent_channel.py): the default socket
both ends compute, the daemon's directory checks, and the agent's checks of
the socket's owner and of the peer's uid (SO_PEERCRED, with a real process
running as another user where the test runs as root)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from vaultd.agent_channel import (
    AgentChannel,
    ChannelError,
    UntrustedPeer,
    channel_from_config,
    check_peer,
    check_socket_path,
    default_socket_path,
    needs_channel,
    peer_credentials,
    prepare_socket_dir,
    socket_umask,
)
from vaultd.config import parse_config

NOBODY = 65534
OTHER = 4242
"""Another uid, with no user: not the overflow uid (65534), which the channel
refuses to trust (under PrivateUsers=yes every unmapped user shows as it)."""
BASE = 'storage "inmem" {}\nlistener "tcp" {\n  address = "127.0.0.1:8200"\n  tls_disable = true\n}\n'
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another uid")


def _channel(text: str = "", **env: str) -> AgentChannel:
    return channel_from_config(parse_config(BASE + text, "vaultd.hcl"), environ=env)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a path short enough for a socket (108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="vdch-"))
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


# --- the default, computed the same way by both ends --------------------------------


def test_default_is_the_login_session_dir_when_there_is_one(tmp_path: Path) -> None:
    env = {"XDG_RUNTIME_DIR": "/run/user/1000"}
    assert default_socket_path(environ=env) == "/run/user/1000/vaultd/unseal.sock"


def test_default_without_a_session_is_the_system_dir_even_before_it_exists(tmp_path: Path) -> None:
    """The agent may start before the daemon has its RuntimeDirectory: it
    must still compute the daemon's path, not something of its own."""
    missing = tmp_path / "run-vaultd"
    assert default_socket_path(environ={}, system_dir=str(missing)) == f"{missing}/unseal.sock"
    assert default_socket_path(environ={"XDG_RUNTIME_DIR": "relative"}, system_dir=str(missing)) == (
        f"{missing}/unseal.sock"
    )
    assert default_socket_path(environ={}) == "/run/vaultd/unseal.sock"


def test_runtime_directory_of_a_unit_does_not_move_the_default() -> None:
    a = _channel(RUNTIME_DIRECTORY="/run/vaultd-unsealer", XDG_RUNTIME_DIR="/run/user/7")
    b = _channel(RUNTIME_DIRECTORY="/run/vaultd", XDG_RUNTIME_DIR="/run/user/7")
    assert a == b


def test_no_stanza_and_a_stanza_without_address_use_the_default() -> None:
    env = {"XDG_RUNTIME_DIR": "/run/user/7"}
    for text in ("", 'unsealer {\n  max_backoff = "2s"\n}\n'):
        channel = _channel(text, **env)
        assert channel.socket_path == "/run/user/7/vaultd/unseal.sock"
        assert channel.address == "unix:///run/user/7/vaultd/unseal.sock"
        assert not channel.explicit and not channel.tcp_allowed


@pytest.mark.parametrize("address", ["unix:///run/vaultd/unseal.sock", "unix:/run/vaultd/unseal.sock",
                                     "/run/vaultd/unseal.sock", "unix:///run/vaultd//unseal.sock"])
def test_unix_address_forms(address: str) -> None:
    channel = _channel(f'unsealer {{\n  address = "{address}"\n}}\n')
    assert channel.socket_path == "/run/vaultd/unseal.sock" and channel.explicit


def test_an_explicit_tcp_address_allows_tcp() -> None:
    channel = _channel('unsealer {\n  address = "http://127.0.0.1:8200"\n}\n')
    assert channel.socket_path is None and channel.tcp_allowed


def test_ids_and_names() -> None:
    channel = _channel('unsealer {\n  allowed_uids = [1001, "root"]\n  allowed_gids = ["0"]\n'
                       '  daemon_uids = [4242]\n}\n')
    assert channel.allowed_uids == {1001, 0} and channel.allowed_gids == {0} and channel.daemon_uids == {4242}
    assert channel.daemon_allows(1001, 5, own_uid=7) and channel.daemon_allows(9, 0, own_uid=7)
    assert channel.daemon_allows(7, 9, own_uid=7) and channel.daemon_allows(0, 9, own_uid=7)
    assert not channel.daemon_allows(NOBODY, NOBODY, own_uid=7)
    assert channel.agent_trusts(4242, own_uid=7) and not channel.agent_trusts(1001, own_uid=7)
    assert socket_umask(channel) == 0o117
    assert socket_umask(_channel()) == 0o177


@pytest.mark.parametrize("value", ['"1000"', '["no-such-user-here"]', "[-1]", "[1.5]"])
def test_bad_ids_are_config_errors(value: str) -> None:
    with pytest.raises(ChannelError):
        _channel(f"unsealer {{\n  allowed_uids = {value}\n}}\n")


def test_the_daemon_needs_a_channel_for_an_auto_seal_or_a_stanza() -> None:
    assert not needs_channel(parse_config(BASE, "vaultd.hcl"))
    assert needs_channel(parse_config(BASE + "unsealer {}\n", "vaultd.hcl"))
    assert needs_channel(parse_config(BASE + 'seal "awskms" {\n  kms_key_id = "k"\n}\n', "vaultd.hcl"))


# --- the daemon's directory ------------------------------------------------------------


def test_a_missing_directory_is_made_private(short_dir: Path) -> None:
    channel = _channel(f'unsealer {{\n  address = "unix://{short_dir}/run/unseal.sock"\n}}\n')
    assert prepare_socket_dir(channel) == f"{short_dir}/run"
    assert (os.stat(short_dir / "run").st_mode & 0o777) == 0o700


def test_a_group_or_world_writable_directory_is_refused(short_dir: Path) -> None:
    (short_dir / "run").mkdir()
    os.chmod(short_dir / "run", 0o770)  # noqa: S103 - deliberately loosened for the test
    channel = _channel(f'unsealer {{\n  address = "unix://{short_dir}/run/unseal.sock"\n}}\n')
    with pytest.raises(ChannelError, match="writable by group or others"):
        prepare_socket_dir(channel)


def test_a_directory_of_another_uid_is_refused(short_dir: Path) -> None:
    (short_dir / "run").mkdir(mode=0o700)
    channel = _channel(f'unsealer {{\n  address = "unix://{short_dir}/run/unseal.sock"\n}}\n')
    with pytest.raises(ChannelError, match="belongs to uid"):
        prepare_socket_dir(channel, uid=os.geteuid() + 1)


def test_a_socket_someone_serves_is_not_taken_over(short_dir: Path) -> None:
    (short_dir / "run").mkdir(mode=0o700)
    path = short_dir / "run" / "unseal.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        server.listen()
        channel = _channel(f'unsealer {{\n  address = "unix://{path}"\n}}\n')
        with pytest.raises(ChannelError, match="already serves"):
            prepare_socket_dir(channel)


# --- the agent's checks ----------------------------------------------------------------


def _serve(path: Path) -> socket.socket:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()
    return server


def test_a_private_socket_of_this_uid_passes(short_dir: Path) -> None:
    (short_dir / "run").mkdir(mode=0o700)
    path = short_dir / "run" / "unseal.sock"
    with _serve(path):
        channel = _channel(f'unsealer {{\n  address = "unix://{path}"\n}}\n')
        assert check_socket_path(channel) == str(path)
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))
            check_peer(channel, client)
            assert peer_credentials(client)[1] == os.geteuid()


def test_a_writable_directory_is_refused_by_the_agent(short_dir: Path) -> None:
    (short_dir / "run").mkdir()
    os.chmod(short_dir / "run", 0o777)  # noqa: S103 - deliberately loosened for the test
    path = short_dir / "run" / "unseal.sock"
    with _serve(path):
        channel = _channel(f'unsealer {{\n  address = "unix://{path}"\n}}\n')
        with pytest.raises(UntrustedPeer, match="writable"):
            check_socket_path(channel)


def test_a_missing_socket_is_not_there_yet_rather_than_untrusted(short_dir: Path) -> None:
    channel = _channel(f'unsealer {{\n  address = "unix://{short_dir}/run/unseal.sock"\n}}\n')
    with pytest.raises(FileNotFoundError):
        check_socket_path(channel)


@as_root
def test_a_socket_or_directory_of_another_uid_is_refused(short_dir: Path) -> None:
    run = short_dir / "run"
    run.mkdir(mode=0o700)
    path = run / "unseal.sock"
    with _serve(path):
        channel = _channel(f'unsealer {{\n  address = "unix://{path}"\n}}\n')
        os.chown(path, OTHER, OTHER)
        with pytest.raises(UntrustedPeer, match=f"uid {OTHER}"):
            check_socket_path(channel)
        os.chown(path, 0, 0)
        os.chown(run, OTHER, OTHER)
        with pytest.raises(UntrustedPeer, match=f"uid {OTHER}"):
            check_socket_path(channel)
        trusting = _channel(f'unsealer {{\n  address = "unix://{path}"\n  daemon_uids = [{OTHER}]\n}}\n')
        assert check_socket_path(trusting) == str(path)


PEER = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1]); s.listen()
print("ready", flush=True)
conn, _ = s.accept()
conn.recv(1)
"""


@as_root
def test_a_peer_running_as_another_uid_is_refused(short_dir: Path) -> None:
    """SO_PEERCRED itself: the socket is served by a process running as
    nobody, whatever the file's owner says."""
    os.chmod(short_dir, 0o755)  # noqa: S103 - deliberately loosened for the test
    run = short_dir / "run"
    run.mkdir()
    os.chmod(run, 0o777)  # noqa: S103 - deliberately loosened for the test
    path = run / "unseal.sock"
    peer = subprocess.Popen(
        ["setpriv", f"--reuid={OTHER}", f"--regid={OTHER}", "--clear-groups", sys.executable, "-c", PEER,
         str(path)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert peer.stdout is not None and peer.stdout.readline().strip() == "ready"
        channel = _channel(f'unsealer {{\n  address = "unix://{path}"\n}}\n')
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))
            with pytest.raises(UntrustedPeer, match=f"runs as uid {OTHER}"):
                check_peer(channel, client)
            trusting = _channel(f'unsealer {{\n  address = "unix://{path}"\n  daemon_uids = [{OTHER}]\n}}\n')
            check_peer(trusting, client)
    finally:
        peer.kill()
        peer.wait()
