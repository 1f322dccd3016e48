"""A gunicorn worker that reads each whole request before a thread serves it.

gunicorn's ``gthread`` worker hands a connection to a pool thread as soon
as it becomes readable, and the thread then blocks reading the rest of the
head and body.  128 connections that sent half a request (no token needed)
held every thread, and ``sys/health`` went unanswered.  Here the worker's
event loop reads the head and the body (by ``Content-Length``, or chunk by
chunk) into a buffer, non-blocking, TLS handshake included; only a complete
request goes to a pool thread, which parses it with gunicorn's own parser
from that buffer and runs the WSGI app.  A stalled client costs a socket
and a bounded buffer, never a thread.

The defences around the buffering:

- deadlines (the listener's ``http_read_header_timeout``, default 10 s, and
  ``http_read_timeout``, default 30 s, as Vault names them): the head must
  be in within the first, the whole request within the second, counted from
  the request's first byte (from the accept for a new connection); idle
  keep-alive connections close after gunicorn's ``keepalive`` seconds;
- ``max_request_size``: a ``Content-Length`` over it is answered 413 at
  once, and a chunked body is cut (413) when it passes it;
- memory: a connection buffers up to :data:`HEAD_LIMIT` on its own; a
  larger request first reserves its size from a per-worker budget and waits
  (unread, under its deadline) when the budget is spent;
- a per-client-address share of ``worker_connections``, so that one address
  cannot hold every slot of a worker;
- a fair share of the connections for each worker (:mod:`vaultd.httpbalance`):
  a worker that holds more than its siblings leaves new ones to them, and it
  takes one connection per wake-up, not a whole burst.  Loopback probes share 127.0.0.1 with
  local attackers, which is why the cap is generous and the buffering, not
  the cap, is what keeps the threads free.

Written against the parts of gunicorn that are the same in Debian
bookworm's 20.1 and in 27: ``workers.base.Worker``, ``http.RequestParser``
over an iterable, ``http.wsgi.create`` and its ``Response``.
"""

from __future__ import annotations

import collections
import errno
import os
import selectors
import socket
import ssl
import time
from typing import Any

from gunicorn import util
from gunicorn.workers import base

from vaultd.httpbalance import ConnectionShares
from vaultd.httpframe import HEAD_LIMIT, FrameError, RequestFrame, error_response
from vaultd.httprequest import PoolRequests, ServePool

DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 30.0
WRITE_TIMEOUT = 60.0
"""Longest a pool thread waits to send one response to a client that does
not read it."""
MIN_BUDGET = 64 * 1024 * 1024
"""Per worker: bytes of large requests being received at once (at least one
request of ``max_request_size``)."""
CHUNK_RESERVE = 1024 * 1024
RECV_SIZE = 256 * 1024
LINGER = 2.0
STOP_LINGER = 2.0
"""Seconds to drain a client's upload after an early 413, so that it reads
the answer instead of a reset."""


# Connection states
HANDSHAKE, READING, PAUSED, BUSY, LINGERING, CLOSED = range(6)


class Connection:
    """One client socket and what has been read of its next request."""

    __slots__ = (
        "address",
        "buf",
        "client",
        "continued",
        "deadline",
        "events",
        "fd",
        "frame",
        "inflight",
        "reserved",
        "server",
        "sock",
        "started",
        "state",
    )

    def __init__(self, sock: socket.socket, client: Any, server: Any, max_body: int | None) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.client = client
        self.server = server
        self.address: str | None = client[0] if isinstance(client, tuple) else None
        self.buf = bytearray()
        self.frame = RequestFrame(HEAD_LIMIT, max_body)
        self.state = READING
        self.events = 0
        self.started: float | None = None
        self.deadline = 0.0
        self.reserved = 0
        self.inflight = 0
        self.continued = False


class BufferingWorker(PoolRequests, base.Worker):
    """gunicorn worker: an event loop that buffers requests, a thread pool
    (``threads``) that serves complete ones.  See the module docstring."""

    header_timeout = DEFAULT_HEADER_TIMEOUT
    read_timeout = DEFAULT_READ_TIMEOUT
    write_timeout = WRITE_TIMEOUT
    max_body: int | None = 32 * 1024 * 1024
    budget_floor = MIN_BUDGET
    shares: ConnectionShares | None = None
    retire_after_sdk = False
    """Replace this worker once it has loaded the AWS SDK (see
    :func:`vaultd.seal.awskms.sdk_loaded`)."""
    """Every worker's connection count, made by the master (:meth:`check_config`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._conns: dict[int, Connection] = {}
        self._per_address: collections.Counter[str] = collections.Counter()
        self._waiting: collections.deque[Connection] = collections.deque()
        self._done: collections.deque[tuple[Connection, bool]] = collections.deque()
        self._reserved_total = 0
        self._accepting = True
        self._declined = False
        """Listeners unwatched because a sibling holds fewer connections."""
        self._ssl: ssl.SSLContext | None = None
        self._servers: dict[int, Any] = {}

    # -- setup -----------------------------------------------------------------

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        """Called by the arbiter in the master before it forks (gunicorn 20.1
        and later): the one place to make memory every worker shares."""
        if cls.shares is None:
            cls.shares = ConnectionShares.create()

    def init_process(self) -> None:
        self.configure_from(getattr(self.app, "vaultd_config", None))
        super().init_process()

    def configure_from(self, config: Any) -> None:
        """Limits from vaultd's config (its first listener, as the Flask app
        takes ``max_request_size`` from it); gunicorn's defaults without one."""
        storage = getattr(config, "storage", None)
        # A replacement worker starts from the master's copy of inmem
        # storage: a dev server's only worker is never replaced.
        self.retire_after_sdk = getattr(storage, "type", "inmem") != "inmem"
        listeners = getattr(config, "listeners", None)
        if listeners:
            first = listeners[0]
            self.max_body = first.max_request_size
            self.header_timeout = float(getattr(first, "http_read_header_timeout", 0) or DEFAULT_HEADER_TIMEOUT)
            self.read_timeout = float(getattr(first, "http_read_timeout", 0) or DEFAULT_READ_TIMEOUT)

    @property
    def budget(self) -> int:
        return max(self.budget_floor, (self.max_body or 0) + HEAD_LIMIT)

    @property
    def address_cap(self) -> int:
        return max(16, int(self.cfg.worker_connections) // 4)

    def ssl_context(self) -> ssl.SSLContext:
        """Made once per worker (gunicorn 27 would load the certificate for
        every connection), from gunicorn's TLS settings."""
        cfg = self.cfg
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=cfg.ca_certs)
        context.load_cert_chain(certfile=cfg.certfile, keyfile=cfg.keyfile)
        context.verify_mode = cfg.cert_reqs
        if cfg.ciphers:
            context.set_ciphers(cfg.ciphers)
        return context

    def prepare(self) -> None:
        """Everything :meth:`run` needs before its loop; separate so that
        tests can drive the loop in a thread of their own."""
        self._selector = selectors.DefaultSelector()
        self._pool = ServePool(max(1, int(self.cfg.threads)), "vaultd-http")
        self._wake_r, self._wake_w = os.pipe()
        self._wake_sent = False
        # gunicorn's Config looks each setting up through two Python calls:
        # read the ones used per request once.
        self._keepalive = float(self.cfg.keepalive)
        self._max_conns = int(self.cfg.worker_connections)
        self._threads = int(self.cfg.threads)
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        if self.PIPE:  # gunicorn's signal wake-up pipe, after init_process
            self._selector.register(self.PIPE[0], selectors.EVENT_READ, "wake")
        if self.cfg.is_ssl:
            self._ssl = self.ssl_context()
        for listener in self.sockets:
            listener.setblocking(False)
            self._servers[listener.fileno()] = listener.getsockname()
            self._selector.register(listener, selectors.EVENT_READ, listener)
        self._last_notify = 0.0
        self._next_sweep = 0.0
        self.prepare_plain()

    # -- the loop --------------------------------------------------------------

    def run(self) -> None:
        self.prepare()
        try:
            while self.alive:
                self.loop_once()
                if self.ppid != os.getppid():
                    self.log.info("Parent changed, shutting down: %s", self)
                    break
        finally:
            self.shutdown()

    def loop_once(self, timeout: float = 0.25) -> None:
        now = time.monotonic()
        if now - self._last_notify >= 1.0:
            self.notify()
            self._last_notify = now
        if self._declined:
            # Until it takes connections again, this worker looks often:
            # the sibling that took them may itself decline the next one.
            if self._fair_share():
                self._declined = False
                self._rewatch_listeners()
            else:
                timeout = min(timeout, 0.02)
        for key, _mask in self._selector.select(timeout):
            data = key.data
            if isinstance(data, Connection):
                self._on_event(data)
            elif data == "wake":
                try:
                    while os.read(key.fd, 4096):
                        pass
                except (BlockingIOError, InterruptedError):
                    pass
            else:
                self._accept(data)
        # Pool threads write to the wake pipe only while this is False (one
        # byte wakes the loop for every answer finished before it looks).
        self._wake_sent = False
        while self._done:
            conn, keepalive = self._done.popleft()
            self._finished(conn, keepalive)
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + 0.25
            self._sweep(now)

    def shutdown(self) -> None:
        """Graceful stop, as gunicorn 27's gthread does it: no new
        connections; idle ones stay open :data:`STOP_LINGER` seconds at
        most, so that a request a client is already sending on one is
        answered (with ``Connection: close``) instead of reset; a request
        being received or served gets up to ``graceful_timeout``."""
        self.alive = False
        self._accepting = False
        if self.shares is not None:
            self.shares.withdraw(self.age)
        for listener in self.sockets:
            self._unwatch_listener(listener)
            util.close(listener)
        now = time.monotonic()
        for conn in self._conns.values():
            if conn.state in (READING, HANDSHAKE) and not conn.buf:
                conn.deadline = min(conn.deadline, now + STOP_LINGER)
        deadline = now + float(self.cfg.graceful_timeout)
        while self._conns and time.monotonic() < deadline:
            self.loop_once(0.05)
        self._pool.shutdown()
        for conn in list(self._conns.values()):
            if conn.state != BUSY:  # a thread still uses those: the exit closes them
                self._close(conn)
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    # -- accepting -------------------------------------------------------------

    def _fair_share(self) -> bool:
        return self.shares is None or self.shares.should_take(self.age, len(self._conns))

    def _publish(self) -> None:
        if self.shares is not None and self.alive:  # a stopping worker has withdrawn
            self.shares.publish(self.age, len(self._conns))

    def _accept(self, listener: Any) -> None:
        """One connection per wake-up, then back to the loop: a burst is
        shared with the siblings that wake meanwhile."""
        if not self.alive:  # SIGTERM came with this batch of events
            return
        if not self._fair_share():
            self._declined = True
            self._unwatch_listeners()
            return
        if len(self._conns) >= self._max_conns and not self._evict_idle():
            self._unwatch_listeners()
            return
        try:
            sock, client = listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                self.log.warning("cannot accept a connection: %s", exc.strerror)
                return
            raise
        sock.setblocking(False)
        util.close_on_exec(sock)
        conn = Connection(sock, client, self._servers[listener.fileno()], self.max_body)
        if conn.address is not None:
            if self._per_address[conn.address] >= self.address_cap:
                self.log.info("refused a connection from %s: over %d open connections", conn.address, self.address_cap)
                sock.close()
                return
            self._per_address[conn.address] += 1
        self._conns[conn.fd] = conn
        self._publish()
        now = time.monotonic()
        conn.started = now
        conn.deadline = now + self.header_timeout
        if self._ssl is not None:
            try:
                conn.sock = self._ssl.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            except (OSError, ValueError):
                self._close(conn)
                return
            conn.state = HANDSHAKE
            self._handshake(conn)
        else:
            self._watch(conn, selectors.EVENT_READ)

    def _evict_idle(self) -> bool:
        """At ``worker_connections``: make room by closing the connection
        idle the longest (no request under way), if there is one."""
        idle = [c for c in self._conns.values() if c.state == READING and c.started is None]
        if not idle:
            return False
        self._close(min(idle, key=lambda c: c.deadline))
        return True

    def _unwatch_listeners(self) -> None:
        if self._accepting:
            self._accepting = False
            for listener in self.sockets:
                self._unwatch_listener(listener)

    def _unwatch_listener(self, listener: Any) -> None:
        try:
            self._selector.unregister(listener)
        except (KeyError, ValueError, OSError):
            pass

    # -- reading ---------------------------------------------------------------

    def _watch(self, conn: Connection, events: int) -> None:
        if conn.events == events:
            return
        if conn.events:
            self._selector.modify(conn.sock, events, conn)
        else:
            self._selector.register(conn.sock, events, conn)
        conn.events = events

    def _unwatch(self, conn: Connection) -> None:
        if conn.events:
            try:
                self._selector.unregister(conn.sock)
            except (KeyError, ValueError, OSError):
                pass
            conn.events = 0

    def _on_event(self, conn: Connection) -> None:
        if conn.state == BUSY:
            # Still watched from before the dispatch (see _dispatch): the
            # client sent more or hung up while a thread serves it; the
            # thread finds out, and the loop looks again afterwards.
            self._unwatch(conn)
        elif conn.state == HANDSHAKE:
            self._handshake(conn)
        elif conn.state == READING:
            self._read(conn)
        elif conn.state == LINGERING:
            try:
                if conn.sock.recv(RECV_SIZE):
                    return
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return
            except OSError:
                pass
            self._close(conn)

    def _handshake(self, conn: Connection) -> None:
        try:
            conn.sock.do_handshake()  # type: ignore[attr-defined]
        except ssl.SSLWantReadError:
            self._watch(conn, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self._watch(conn, selectors.EVENT_WRITE)
            return
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            self.log.debug("TLS handshake failed: %s", type(exc).__name__)
            self._close(conn)
            return
        conn.state = READING
        self._watch(conn, selectors.EVENT_READ)
        self._read(conn)  # the request may already be in the TLS buffer

    def _read(self, conn: Connection) -> None:
        while True:
            room = max(HEAD_LIMIT, conn.reserved) - len(conn.buf)
            if room <= 0:
                if not self._reserve(conn, len(conn.buf) + CHUNK_RESERVE):
                    return
                continue
            try:
                data = conn.sock.recv(min(room, RECV_SIZE))
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
                self._watch(conn, selectors.EVENT_READ)
                return
            except ssl.SSLWantWriteError:
                self._watch(conn, selectors.EVENT_WRITE)
                return
            except OSError:
                self._close(conn)
                return
            if not data:
                self._close(conn)
                return
            conn.buf += data
            if not self._advance(conn) or not (self._ssl and conn.sock.pending()):  # type: ignore[attr-defined]
                return

    def _advance(self, conn: Connection) -> bool:
        """Frame what the buffer holds: dispatch a complete request, answer a
        bad one, reserve for a large one.  True while the loop should go on
        reading this connection."""
        frame = conn.frame
        if not frame.head_done:
            while conn.buf[:2] == b"\r\n":  # RFC 9112 2.2: empty lines before a request
                del conn.buf[:2]
            if not conn.buf:
                return True
        if conn.started is None:
            conn.started = time.monotonic()
            conn.deadline = conn.started + self.header_timeout
        try:
            total = frame.feed(conn.buf)
        except FrameError as exc:
            self._reject(conn, exc.status, exc.message)
            return False
        if total is not None:
            self._dispatch(conn, total)
            return False
        if frame.head_done:
            conn.deadline = conn.started + self.read_timeout
            if frame.expect_continue and not conn.continued:
                conn.continued = True
                self._send_quietly(conn, b"HTTP/1.1 100 Continue\r\n\r\n")
            if frame.length is not None and frame.length > max(HEAD_LIMIT, conn.reserved):
                return self._reserve(conn, frame.length)
        return True

    def _reserve(self, conn: Connection, size: int) -> bool:
        """Let ``conn`` buffer up to ``size`` bytes, from the worker's budget;
        when that is spent, the connection waits, unread, for its turn."""
        if size > self.budget:
            self._reject(conn, 413, "request body too large")
            return False
        if self._reserved_total - conn.reserved + size <= self.budget and (
            not self._waiting or self._waiting[0] is conn
        ):
            self._reserved_total += size - conn.reserved
            conn.reserved = size
            if self._waiting and self._waiting[0] is conn:
                self._waiting.popleft()
            return True
        if conn.state != PAUSED:
            conn.state = PAUSED
            self._unwatch(conn)
            self._waiting.append(conn)
        return False

    def _release(self, conn: Connection) -> None:
        self._reserved_total -= conn.reserved + conn.inflight
        conn.reserved = conn.inflight = 0
        while self._waiting:
            head = self._waiting[0]
            if head.state != PAUSED:
                self._waiting.popleft()
                continue
            want = head.frame.length if head.frame.length is not None else len(head.buf) + CHUNK_RESERVE
            if self._reserved_total + want - head.reserved > self.budget:
                return
            head.state = READING
            self._reserve(head, want)
            self._watch(head, selectors.EVENT_READ)
            self._read(head)

    def _dispatch(self, conn: Connection, total: int) -> None:
        data = bytes(conn.buf[:total])
        del conn.buf[:total]
        conn.frame.reset()
        conn.inflight, conn.reserved = conn.reserved, 0
        conn.started = None
        conn.continued = False
        conn.state = BUSY
        # The socket stays registered while a thread serves the request: a
        # client that waits for its answer makes no event, and keeping it
        # saves two epoll_ctl calls per request (_on_event unwatches it if
        # one comes).
        self._pool.submit(self._serve, conn, data)

    def _finished(self, conn: Connection, keepalive: bool) -> None:
        """Back from a pool thread: next request, or idle until keep-alive
        ends.  A stop that came while the thread served keeps the connection
        its answer promised for :data:`STOP_LINGER` seconds at most."""
        self._release(conn)
        if not keepalive:
            self._close(conn)
            return
        conn.state = READING
        idle = self._keepalive if self.alive else min(self._keepalive, STOP_LINGER)
        conn.deadline = time.monotonic() + idle
        if not conn.buf or self._advance(conn):
            if conn.state == READING:
                self._watch(conn, selectors.EVENT_READ)
                if self._ssl is not None and conn.sock.pending():  # type: ignore[attr-defined]
                    self._read(conn)

    def _sweep(self, now: float) -> None:
        self._publish()  # also the heartbeat that keeps the entry fresh
        for conn in [c for c in self._conns.values() if c.state != BUSY and c.deadline <= now]:
            if conn.state in (READING, PAUSED) and conn.started is not None and conn.buf:
                self.log.info("closed a connection from %s: request not received in time", conn.address or "unix")
                self._send_quietly(conn, error_response(408, "request not received in time"))
            self._close(conn)

    # -- answers from the loop ---------------------------------------------------

    def _send_quietly(self, conn: Connection, data: bytes) -> None:
        try:
            conn.sock.send(data)
        except (OSError, ValueError):  # full buffer, reset, TLS wants I/O: best effort only
            pass

    def _reject(self, conn: Connection, status: int, message: str) -> None:
        """Answer a request that cannot be taken, then drain the client's
        upload briefly so that it sees the answer, not a reset."""
        self.log.info("refused a request from %s: %d %s", conn.address or "unix", status, message)
        self._send_quietly(conn, error_response(status, message))
        self._release_waiting(conn)
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        conn.state = LINGERING
        conn.buf = bytearray()
        conn.deadline = time.monotonic() + LINGER
        self._watch(conn, selectors.EVENT_READ)

    def _release_waiting(self, conn: Connection) -> None:
        if conn.state == PAUSED:
            conn.state = READING
            try:
                self._waiting.remove(conn)
            except ValueError:
                pass
        self._release(conn)

    def _close(self, conn: Connection) -> None:
        if conn.state == CLOSED:
            return
        self._unwatch(conn)
        previous, conn.state = conn.state, CLOSED
        if previous == PAUSED:
            try:
                self._waiting.remove(conn)
            except ValueError:
                pass
        self._release(conn)
        if self._conns.get(conn.fd) is conn:
            del self._conns[conn.fd]
        if conn.address is not None:
            self._per_address[conn.address] -= 1
            if self._per_address[conn.address] <= 0:
                del self._per_address[conn.address]
        util.close(conn.sock)
        self._publish()
        if not self._declined:
            self._rewatch_listeners()

    def _rewatch_listeners(self) -> None:
        if not self._accepting and self.alive and len(self._conns) < self._max_conns:
            self._accepting = True
            for listener in self.sockets:
                self._selector.register(listener, selectors.EVENT_READ, listener)
