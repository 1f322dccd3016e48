"""The agent channel: where the daemon serves the unsealer agent, and who may
be on either end of it.

The channel carries the plaintext unseal key, so a TCP port is not good
enough: any local user can bind ``127.0.0.1:8200`` while the daemon restarts
and be handed the key.  The daemon therefore serves ``sys/vaultd/stored-key``
and ``sys/vaultd/unseal`` on a unix socket in a directory only its own user
can enter, and both ends check the other with ``SO_PEERCRED``.

Both processes read the same config file and call :func:`channel_from_config`
here, so the address they use cannot drift apart.  This module is on the
lowest floor (config, stdlib) because both the daemon (floor 5) and the agent
(floor 3) import it.

The default socket (no ``unsealer`` stanza, or no ``address`` in it) is

* ``$XDG_RUNTIME_DIR/vaultd/unseal.sock`` when ``XDG_RUNTIME_DIR`` is set: a
  login session (``make run``, a developer's shell), where ``/run/vaultd``
  is not this user's to make;
* ``/run/vaultd/unseal.sock`` otherwise: system services, which systemd
  starts without ``XDG_RUNTIME_DIR``; ``/run/vaultd`` is the daemon unit's
  ``RuntimeDirectory=vaultd``, and daemon and agent run as the same
  ``vaultd`` user.

The rule depends on nothing that differs between the daemon's and the
agent's unit, nor on whether the daemon has made its directory yet (the
agent is not ordered after it): in particular not on ``$RUNTIME_DIRECTORY``,
which systemd sets to each unit's own directory.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from vaultd.config import Config

SYSTEM_DIR = "/run/vaultd"
SOCKET_NAME = "unseal.sock"
MAX_SOCKET_PATH = 107
"""``sun_path`` holds 108 bytes, one of them the terminating NUL."""

_UCRED = struct.Struct("3i")


class ChannelError(ValueError):
    """The agent channel cannot be used as configured (a config error)."""


class UntrustedPeer(Exception):
    """The other end of the channel, or where it lives, is not who it must
    be.  Deliberately not an OSError: no transport layer may mistake it for a
    connection problem worth retrying."""


@dataclass(frozen=True)
class AgentChannel:
    """Where the agent endpoints are served and who may use them.

    ``socket_path`` is set for a unix socket, None for a TCP address (then
    ``address`` is the URL the agent dials).  ``allowed_uids``/``allowed_gids``
    are the peers the daemon accepts besides its own uid and root;
    ``daemon_uids`` the owners the agent accepts for the socket, its
    directory and the daemon process besides its own uid and root."""

    address: str
    socket_path: str | None
    explicit: bool
    allowed_uids: frozenset[int] = field(default_factory=frozenset)
    allowed_gids: frozenset[int] = field(default_factory=frozenset)
    daemon_uids: frozenset[int] = field(default_factory=frozenset)

    @property
    def is_unix(self) -> bool:
        return self.socket_path is not None

    @property
    def tcp_allowed(self) -> bool:
        """Whether the agent endpoints may be served on TCP (loopback only):
        only when the config names a TCP agent address explicitly."""
        return not self.is_unix

    def daemon_allows(self, uid: int, gid: int, *, own_uid: int | None = None) -> bool:
        """The daemon's rule for a peer on its socket."""
        own = os.geteuid() if own_uid is None else own_uid
        return uid in (own, 0) or uid in self.allowed_uids or gid in self.allowed_gids

    def agent_trusts(self, uid: int, *, own_uid: int | None = None) -> bool:
        """The agent's rule for the owner of the socket (and of its
        directory) and for the daemon process it reaches."""
        own = os.geteuid() if own_uid is None else own_uid
        return uid in (own, 0) or uid in self.daemon_uids


def default_socket_path(*, environ: Mapping[str, str] | None = None, system_dir: str = SYSTEM_DIR) -> str:
    """The socket both ends use when the config names none (see the module
    docstring for why)."""
    env = os.environ if environ is None else environ
    runtime = env.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isabs(runtime):
        return os.path.join(runtime, "vaultd", SOCKET_NAME)
    return os.path.join(system_dir, SOCKET_NAME)


def unix_socket_path(address: str) -> str | None:
    """The path of a ``unix://`` (or ``unix:``, or absolute path) address;
    None for anything else."""
    if address.startswith("/"):
        return address
    if address.startswith("unix:"):
        parts = urlsplit(address)
        path = unquote(parts.path or parts.netloc)
        if not path or not path.startswith("/"):
            raise ChannelError(f"unsealer.address: {address!r} names no absolute socket path")
        return path
    return None


def needs_channel(config: Config) -> bool:
    """The daemon binds the agent socket when there is an agent to serve:
    an auto seal, or an ``unsealer`` stanza.  A disabled auto seal counts:
    during a migration away from it the agent still unwraps with it."""
    auto = config.seal is not None and config.seal.type not in ("", "shamir")
    return auto or config.unsealer is not None


def channel_from_config(config: Config, *, environ: Mapping[str, str] | None = None) -> AgentChannel:
    """The channel as both ends read it from the same file."""
    options = dict(config.unsealer.options) if config.unsealer is not None else {}
    raw = options.get("address")
    if raw is not None and not isinstance(raw, str):
        raise ChannelError("unsealer.address: expected a string")
    explicit = bool(raw)
    if raw:
        address = raw.rstrip("/") if not raw.startswith("/") else raw
        path = unix_socket_path(address)
    else:
        path = default_socket_path(environ=environ)
        address = "unix://" + path
    if path is not None:
        path = os.path.normpath(path)
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            raise ChannelError(
                f"unsealer.address: the socket path {path!r} is longer than {MAX_SOCKET_PATH} bytes, "
                "the most a unix socket address holds"
            )
        address = "unix://" + path
    return AgentChannel(
        address=address,
        socket_path=path,
        explicit=explicit,
        allowed_uids=frozenset(_ids(options.get("allowed_uids"), "allowed_uids", _uid_of, "uid")),
        allowed_gids=frozenset(_ids(options.get("allowed_gids"), "allowed_gids", _gid_of, "gid")),
        daemon_uids=frozenset(_ids(options.get("daemon_uids"), "daemon_uids", _uid_of, "uid")),
    )


def overflow_id(kind: str) -> int:
    """The kernel's overflow uid or gid (``kind``): what a process in a user
    namespace sees for every id its namespace does not map."""
    try:
        with open(f"/proc/sys/kernel/overflow{kind}") as source:
            return int(source.read())
    except (OSError, ValueError):
        return 65534


def _ids(value: object, key: str, resolve: object, kind: str) -> Iterable[int]:
    """The ids of a list of ids or names.  The overflow id is refused: under
    ``PrivateUsers=yes`` (both units) every unmapped user, and every file
    such a user owns, shows as it, so trusting it would trust them all."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ChannelError(f"unsealer.{key}: expected a list of ids or names")
    out: list[int] = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise ChannelError(f"unsealer.{key}: {item!r} is not an id or a name")
        if isinstance(item, int) or item.isdigit():
            number = int(item)
            if not 0 <= number < 2**32 - 1:
                raise ChannelError(f"unsealer.{key}: {item!r} is not a valid id")
            out.append(number)
        else:
            out.append(resolve(item, key))  # type: ignore[operator]
        if out[-1] == overflow_id(kind):
            raise ChannelError(
                f"unsealer.{key}: {item!r} is the kernel's overflow {kind} ({out[-1]}), which every "
                f"unmapped {'user' if kind == 'uid' else 'group'} shows as in a user namespace "
                "(PrivateUsers=yes): it cannot be trusted"
            )
    return out


def _uid_of(name: str, key: str) -> int:
    import pwd

    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        raise ChannelError(f"unsealer.{key}: no user named {name!r}") from None


def _gid_of(name: str, key: str) -> int:
    import grp

    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ChannelError(f"unsealer.{key}: no group named {name!r}") from None


# --- the daemon's side -------------------------------------------------------------


def prepare_socket_dir(channel: AgentChannel, *, uid: int | None = None) -> str:
    """Make sure the socket's directory exists, belongs to the daemon's uid
    and cannot be written by anyone else; return it.

    A missing directory is made 0700 (0750 when ``allowed_gids`` names a
    group that shares it).  One that belongs to another uid, or that others
    can write to, is refused: whoever controls it could put their own socket
    where the agent looks."""
    assert channel.socket_path is not None
    uid = os.geteuid() if uid is None else uid
    directory = os.path.dirname(channel.socket_path)
    mode = 0o750 if channel.allowed_gids else 0o700
    try:
        os.mkdir(directory, mode)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ChannelError(
            f"cannot create the agent socket directory {directory}: {exc.strerror}; create it "
            f"(owned by uid {uid}, mode 0700), set unsealer.address, or run with XDG_RUNTIME_DIR set"
        ) from None
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode):
        raise ChannelError(f"the agent socket directory {directory} is not a directory")
    if info.st_uid != uid:
        raise ChannelError(
            f"the agent socket directory {directory} belongs to uid {info.st_uid}, not to this "
            f"daemon's uid {uid}: refusing to serve the unseal key there"
        )
    if info.st_mode & 0o022:
        raise ChannelError(
            f"the agent socket directory {directory} is writable by group or others "
            f"(mode {stat.S_IMODE(info.st_mode):04o}): refusing to serve the unseal key there"
        )
    if _answers(channel.socket_path):
        # gunicorn would remove the socket and bind its own: the other
        # daemon's agent would then unseal this one, and it would lose its.
        raise ChannelError(f"another process already serves {channel.socket_path}: is vaultd running twice?")
    return directory


def _answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            return False
        return True


def socket_umask(channel: AgentChannel) -> int:
    """The umask gunicorn binds the socket under: 0600, or 0660 for a
    shared group."""
    return 0o117 if channel.allowed_gids else 0o177


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a unix socket, as
    the kernel recorded them at connect time."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return pid, uid, gid


# --- the agent's side --------------------------------------------------------------


def check_socket_path(channel: AgentChannel, *, own_uid: int | None = None) -> str:
    """Before connecting: the socket, its directory and every directory
    above must be owned by a trusted uid, the socket's directory must not be
    writable by group or others, and no directory above may let others
    rename entries (writable without the sticky bit).  Returns the resolved
    path to connect to.  A missing socket or directory raises
    FileNotFoundError (the daemon is not up yet: retry); anything else
    raises :class:`UntrustedPeer`."""
    assert channel.socket_path is not None
    directory = os.path.realpath(os.path.dirname(channel.socket_path))
    path = os.path.join(directory, os.path.basename(channel.socket_path))
    parts = directory.split(os.sep)
    for depth in range(1, len(parts) + 1):
        current = os.sep + os.path.join(*parts[1:depth]) if depth > 1 else os.sep
        info = os.lstat(current)
        if not channel.agent_trusts(info.st_uid, own_uid=own_uid):
            raise UntrustedPeer(f"{current} belongs to uid {info.st_uid}, which this agent does not trust")
        writable = info.st_mode & 0o022
        if current == directory:
            if writable:
                raise UntrustedPeer(
                    f"{current} is writable by group or others (mode {stat.S_IMODE(info.st_mode):04o})"
                )
        elif writable and not info.st_mode & stat.S_ISVTX:
            raise UntrustedPeer(
                f"{current} is writable by group or others without the sticky bit "
                f"(mode {stat.S_IMODE(info.st_mode):04o})"
            )
    info = os.lstat(path)
    if not stat.S_ISSOCK(info.st_mode):
        raise UntrustedPeer(f"{path} is not a socket")
    if not channel.agent_trusts(info.st_uid, own_uid=own_uid):
        raise UntrustedPeer(f"the socket {path} belongs to uid {info.st_uid}, which this agent does not trust")
    return path


def check_peer(channel: AgentChannel, sock: socket.socket, *, own_uid: int | None = None) -> None:
    """After connecting: the process that accepted must run as a trusted uid."""
    pid, uid, _gid = peer_credentials(sock)
    if not channel.agent_trusts(uid, own_uid=own_uid):
        raise UntrustedPeer(f"the process at the other end of the socket (pid {pid}) runs as uid {uid}, "
                            "which this agent does not trust")


def is_missing(exc: OSError) -> bool:
    """A socket or directory not there (yet): the daemon is not up."""
    return exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR)
