"""The agent's HTTP client to the daemon: the one place that speaks HTTP.

It knows vaultd's own endpoints for the agent (``sys/vaultd/state``,
``sys/vaultd/stored-key``, ``sys/vaultd/unseal``) and turns every transport
problem into :class:`DaemonUnavailable`, which the agent retries, and every
refusal into :class:`DaemonRefused`, which it reasons about.

The plaintext key leaves this process only here, so the client is strict
about where it goes: proxies and ``.netrc`` from the environment are ignored,
redirects are not followed, plain HTTP is allowed to loopback only, and the
request body is built in a ``bytearray`` that is wiped after the call.

It speaks urllib3 directly, not requests: the agent runs for the machine's
lifetime and requests (with what it imports) costs it about 4 MiB resident
for a session layer it has no use for.  urllib3 never reads ``HTTP(S)_PROXY``,
``NO_PROXY``, ``.netrc`` or ``REQUESTS_CA_BUNDLE``, and the system's CAs are
named by path (not ``SSL_CERT_FILE``), so the environment has no say;
``https`` is checked against ``ca_file`` or else the system's CAs.  Each
request is made once: no redirect is followed and urllib3 retries nothing
(the agent's own backoff is the only retry loop).

Over a unix socket every new connection is checked before and after it is
made (:func:`vaultd.agent_channel.check_socket_path` and ``check_peer``):
the socket and its directory must belong to a uid the agent trusts and the
process that accepts must run as one.  A failure raises
:class:`~vaultd.agent_channel.UntrustedPeer`, which no layer here turns into
a retryable error: the agent ends with its own exit code.
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
from dataclasses import dataclass
from typing import Any

import urllib3
import urllib3.connection
import urllib3.connectionpool
import urllib3.exceptions

from unsealer.settings import SettingsError, check_address
from vaultd.agent_channel import AgentChannel, ChannelError, check_peer, check_socket_path, unix_socket_path
from vaultd.seal.base import StoredKey

# What requests' HTTPAdapter gave every request: made once, a read error
# not retried either, and redirects handed back rather than followed.
_NO_RETRIES = urllib3.Retry(0, read=False)


class DaemonUnavailable(Exception):
    """The daemon could not be reached or answered like a daemon in trouble
    (connection refused, timeout, 5xx, not JSON): worth retrying."""


class DaemonRefused(Exception):
    """The daemon answered with a 4xx; ``errors`` is its ``{"errors": [...]}``."""

    def __init__(self, method: str, path: str, status: int, errors: list[str]) -> None:
        detail = "; ".join(errors) if errors else "no detail"
        super().__init__(f"{method} {path}: HTTP {status}: {detail}")
        self.status = status
        self.errors = errors


@dataclass(frozen=True)
class DaemonState:
    """``GET /v1/sys/vaultd/state``: which run of the daemon, and its seal."""

    boot_id: str
    initialized: bool
    sealed: bool
    seal_type: str
    sealed_by_operator: bool
    migration: bool = False
    """A seal migration is under way (see :mod:`vaultd.core.seal_migration`)."""
    migration_from: str = ""
    migration_to: str = ""
    migration_key_held: bool = False
    """awskms -> shamir: the daemon already holds the old seal's key."""

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> DaemonState:
        try:
            return cls(
                boot_id=str(raw["boot_id"]),
                initialized=bool(raw["initialized"]),
                sealed=bool(raw["sealed"]),
                seal_type=str(raw.get("seal_type") or ""),
                sealed_by_operator=bool(raw.get("sealed_by_operator", False)),
                migration=bool(raw.get("migration", False)),
                migration_from=str(raw.get("migration_from") or ""),
                migration_to=str(raw.get("migration_to") or ""),
                migration_key_held=bool(raw.get("migration_key_held", False)),
            )
        except (KeyError, TypeError) as exc:
            raise DaemonUnavailable(f"unexpected state answer: missing {exc}") from None


class DaemonClient:
    def __init__(
        self,
        address: str,
        *,
        ca_file: str | None = None,
        timeout: float = 10.0,
        channel: AgentChannel | None = None,
        tls: bool = False,
    ) -> None:
        """``channel`` says whom to trust on a unix socket (by default: this
        uid and root); ``tls`` speaks TLS over the socket, as gunicorn does
        on every socket when the daemon's listeners use TLS."""
        check_address(address)
        if ca_file and not os.path.exists(ca_file):
            # Waiting would not make it appear: a config error, at start.
            raise SettingsError(f"unsealer.ca_file {ca_file!r} does not exist")
        self.address = address
        self.timeout = timeout
        try:
            socket_path = unix_socket_path(address)
        except ChannelError as exc:
            raise SettingsError(str(exc)) from None
        self._unix: _UnixPool | None = None
        self._manager: urllib3.PoolManager | None = None
        if socket_path is not None:
            if channel is None or channel.socket_path is None:
                channel = AgentChannel(address=address, socket_path=socket_path, explicit=True)
            context = _unix_tls_context(ca_file) if tls else None
            self._unix = _UnixPool("localhost", channel=channel, socket_timeout=timeout, tls=context)
            self._base = ""  # the pool knows where: a request names only its path
        else:
            # https: the host name and chain are checked, against ca_file
            # (a directory of hashed certificates too) or the system's CAs.
            # The pool manager drops these for plain http.
            verify: dict[str, Any] = {"cert_reqs": "CERT_REQUIRED"}
            if ca_file:
                verify["ca_cert_dir" if os.path.isdir(ca_file) else "ca_certs"] = ca_file
            else:
                verify.update(_system_cas())
            self._manager = urllib3.PoolManager(num_pools=10, maxsize=10, block=False, **verify)
            self._base = address.rstrip("/")

    def close(self) -> None:
        """Close the kept-alive connections.  Over TCP a later request opens
        a new one; over the socket the client is done (DaemonUnavailable)."""
        if self._unix is not None:
            self._unix.close()
        elif self._manager is not None:
            self._manager.clear()

    def __repr__(self) -> str:
        return f"DaemonClient(address={self.address!r})"

    def idle_socket(self) -> socket.socket | None:
        """The socket of the keep-alive connection the last request left in
        the pool, for the agent to watch: the daemon closes it when it stops.
        None when there is none (the daemon closed it, or never answered).

        This reads urllib3's pools, whose layout (``PoolManager.pools``, each
        pool's ``pool.queue`` of connections with ``sock``) is the same in
        1.26 and 2.x; if that ever changes, the answer is None and the agent
        falls back to its poll interval, which is slower but still correct."""
        try:
            if self._unix is not None:
                pools: list[Any] = [self._unix]
            elif self._manager is not None:
                # The manager only ever talks to the daemon: any pool is its.
                manager = self._manager
                pools = [manager.pools[key] for key in manager.pools.keys()]
            else:
                return None
            for pool in pools:
                for connection in list(pool.pool.queue):
                    sock = getattr(connection, "sock", None)
                    if isinstance(sock, socket.socket):
                        return sock
        except (AttributeError, TypeError, ValueError, KeyError):
            return None
        return None

    def state(self) -> DaemonState:
        return DaemonState.from_json(self._request("GET", "/v1/sys/vaultd/state"))

    def seal_status(self) -> dict[str, Any]:
        return self._request("GET", "/v1/sys/seal-status")

    def stored_key(self) -> StoredKey:
        raw = self._request("GET", "/v1/sys/vaultd/stored-key")
        try:
            return StoredKey.from_dict(raw)
        except (KeyError, ValueError, TypeError) as exc:
            raise DaemonUnavailable(f"unreadable stored key from the daemon: {type(exc).__name__}") from None

    def unseal(self, key: bytes | bytearray, boot_id: str) -> dict[str, Any]:
        """Submit the unwrapped key for the boot it was read for.

        The JSON body holds the key in base64; it is assembled in a bytearray
        that is zeroed afterwards, so no immutable copy of it is left for the
        garbage collector to leave lying in memory."""
        body = bytearray(b'{"boot_id": ')
        body += json.dumps(boot_id).encode()
        body += b', "key": "'
        encoded = b64encode_into(key)
        try:
            body += encoded
            body += b'"}'
            return self._request("PUT", "/v1/sys/vaultd/unseal", body=body)
        finally:
            wipe(encoded)
            wipe(body)

    def _request(self, method: str, path: str, *, body: bytearray | None = None) -> dict[str, Any]:
        # requests' keep-alive header, said out loud; HTTP/1.1 means it anyway.
        headers = {"Accept": "application/json", "Connection": "keep-alive"}
        if body is not None:
            headers["Content-Type"] = "application/json"
            headers["Content-Length"] = str(len(body))
        opener: urllib3.PoolManager | _UnixPool | None = self._unix if self._unix is not None else self._manager
        assert opener is not None
        try:
            response = opener.urlopen(
                method,
                self._base + path,
                # A bytearray is sent as is (buffer protocol) by both urllib3 1.26 and 2.x.
                body=body,
                headers=headers,
                retries=_NO_RETRIES,
                redirect=False,
                assert_same_host=False,
                timeout=urllib3.Timeout(connect=self.timeout, read=self.timeout),
                preload_content=True,
            )
            data = response.data
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            # Every transport failure; UntrustedPeer is neither and goes up as it is.
            raise DaemonUnavailable(f"{method} {path}: {_describe(exc)}") from None
        try:
            payload = json.loads(data) if data else {}
        except ValueError:
            payload = None
        if response.status >= 500 or response.status == 429:
            raise DaemonUnavailable(f"{method} {path}: HTTP {response.status}{_errors_suffix(payload)}")
        if response.status >= 300:
            errors = payload.get("errors") if isinstance(payload, dict) else None
            raise DaemonRefused(method, path, response.status, [str(e) for e in errors or []])
        if not isinstance(payload, dict):
            raise DaemonUnavailable(f"{method} {path}: the answer is not a JSON object")
        return payload


def _system_cas() -> dict[str, str]:
    """The system's CAs where OpenSSL was built to find them.  Named here
    rather than left to urllib3, whose default (``load_default_certs``) also
    reads ``SSL_CERT_FILE`` and ``SSL_CERT_DIR``: the environment does not
    choose whom the key is sent to.  Empty when neither path exists, and
    then urllib3's default it is."""
    paths = ssl.get_default_verify_paths()
    found: dict[str, str] = {}
    if paths.openssl_cafile and os.path.isfile(paths.openssl_cafile):
        found["ca_certs"] = paths.openssl_cafile
    if paths.openssl_capath and os.path.isdir(paths.openssl_capath):
        found["ca_cert_dir"] = paths.openssl_capath
    return found


def _errors_suffix(payload: object) -> str:
    if isinstance(payload, dict) and payload.get("errors"):
        return ": " + "; ".join(str(e) for e in payload["errors"])
    return ""


_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-f]+>: ")


def _describe(exc: Exception) -> str:
    """A short cause: the innermost reason urllib3 gives (refused, timed out,
    certificate mismatch), which is what an operator needs."""
    cause: BaseException = exc
    if isinstance(cause, urllib3.exceptions.MaxRetryError) and cause.reason is not None:
        cause = cause.reason
    text = _OBJECT_REPR.sub("", str(cause)) or type(cause).__name__
    return f"{type(cause).__name__}: {text}"


_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def b64encode_into(data: bytes | bytearray) -> bytearray:
    """Standard base64 into a fresh bytearray (the stdlib returns immutable
    bytes, which could not be wiped)."""
    out = bytearray(((len(data) + 2) // 3) * 4)
    j = 0
    size = len(data)
    for i in range(0, size, 3):
        # Indexing, not slicing: a slice of bytes would be another copy.
        n = min(3, size - i)
        value = (data[i] << 16) | ((data[i + 1] << 8) if n > 1 else 0) | (data[i + 2] if n > 2 else 0)
        out[j] = _B64[(value >> 18) & 63]
        out[j + 1] = _B64[(value >> 12) & 63]
        out[j + 2] = _B64[(value >> 6) & 63] if n > 1 else 0x3D
        out[j + 3] = _B64[value & 63] if n > 2 else 0x3D
        j += 4
    return out


def wipe(buffer: bytearray) -> None:
    """Overwrite a secret in place."""
    buffer[:] = bytes(len(buffer))


# --- unix sockets -------------------------------------------------------------------


def _unix_tls_context(ca_file: str | None) -> ssl.SSLContext:
    """TLS over the socket.  The peer is identified by the kernel
    (``SO_PEERCRED``), not by a host name, so none is checked; the chain is
    checked when ``ca_file`` names the CA."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    if ca_file:
        context.load_verify_locations(ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


class _UnixConnection(urllib3.connection.HTTPConnection):
    def __init__(
        self,
        *args: Any,
        channel: AgentChannel,
        socket_timeout: float,
        tls: ssl.SSLContext | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._channel = channel
        self._socket_timeout = socket_timeout
        self._tls = tls

    def connect(self) -> None:
        assert self._channel.socket_path is not None
        try:
            path = check_socket_path(self._channel)
        except OSError as exc:  # not there yet: the daemon is starting
            raise urllib3.exceptions.NewConnectionError(self, f"{self._channel.socket_path}: {exc}") from None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self._socket_timeout)
        try:
            sock.connect(path)
            check_peer(self._channel, sock)
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock)
        except OSError as exc:
            sock.close()
            raise urllib3.exceptions.NewConnectionError(self, f"{path}: {exc}") from None
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class _UnixPool(urllib3.connectionpool.HTTPConnectionPool):
    """Every connection of the pool goes to the one unix socket, checked."""

    ConnectionCls = _UnixConnection  # type: ignore[assignment]
