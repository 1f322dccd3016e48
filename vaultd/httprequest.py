"""What a pool thread of :class:`vaultd.httpworker.BufferingWorker` does
with a request the event loop has read whole: parse it (a plain request with
:mod:`vaultd.httpplain`, any other with gunicorn's own parser, from the
buffer), run the WSGI app, write the answer, and hand the connection back to
the loop.

Split from the worker, whose module is the event loop (buffering, deadlines,
the memory budget); this one is what gunicorn's threaded worker does per
request, on the parts of gunicorn that are the same in 20.1 and 27.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import ssl
import threading
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from gunicorn import http as ghttp
from gunicorn.http import errors as gerrors
from gunicorn.http import wsgi as gwsgi

from vaultd import httpplain
from vaultd.httpframe import error_response
from vaultd.seal import awskms

if TYPE_CHECKING:
    from vaultd.httpworker import Connection

log = logging.getLogger("vaultd.http")


class ServePool:
    """The worker's request threads: a fixed set taking work from one queue.

    ``concurrent.futures.ThreadPoolExecutor`` made a future, a work item, a
    lock round and a semaphore probe for every request, and set the
    future's result under a condition variable that nobody waits on: about
    a tenth of a worker's time on a KV read (py-spy).  The worker needs
    none of it: :meth:`PoolRequests._serve` handles its own errors and
    reports back through the worker's ``_done`` queue.  The threads are not
    daemons, so that a request being served when the process exits is
    finished, as with the executor."""

    def __init__(self, threads: int, name: str) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]] | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._run, name=f"{name}_{n}") for n in range(threads)]
        for thread in self._threads:
            thread.start()

    def submit(self, function: Callable[..., None], *args: Any) -> None:
        self._queue.put((function, args))

    def shutdown(self) -> None:
        """Threads stop once the work already queued is done."""
        for _ in self._threads:
            self._queue.put(None)

    def _run(self) -> None:
        while (work := self._queue.get()) is not None:
            function, args = work
            try:
                function(*args)
            except Exception:
                log.exception("request thread failed")
            del work, function, args  # nothing of a request outlives it here


_PARSE_STATUS = {
    "LimitRequestLine": 414,
    "LimitRequestHeaders": 431,
    "ExpectationFailed": 417,
    "UnsupportedTransferCoding": 501,
}


class PoolRequests:
    """Mixed into the worker; runs in its pool threads.  Uses the worker's
    ``cfg``, ``log``, ``wsgi``, ``alive``, ``nr``/``max_requests``,
    ``write_timeout``, ``_conns``, ``_done``, ``_wake_w`` and the settings
    :meth:`~vaultd.httpworker.BufferingWorker.prepare` reads once."""

    cfg: Any
    log: Any
    wsgi: Any
    alive: bool
    nr: int
    max_requests: int
    write_timeout: float
    _conns: Any
    _done: Any
    _wake_w: int
    _wake_sent: bool
    retire_after_sdk: bool
    _keepalive: float
    _max_conns: int
    _threads: int
    _plain: tuple[httpplain.Limits, httpplain.EnvironMaker, Any, Any] | None = None
    """Set by :meth:`prepare_plain`: the limits, the environ template and
    gunicorn's two request hooks, read once rather than per request."""

    def prepare_plain(self) -> None:
        if httpplain.EnvironMaker.usable():
            cfg = self.cfg
            self._plain = (
                httpplain.Limits.from_config(cfg), httpplain.EnvironMaker(cfg), cfg.pre_request, cfg.post_request
            )

    def _serve(self, conn: Connection, data: bytes) -> None:
        keepalive = False
        req = None
        try:
            conn.sock.settimeout(self.write_timeout)
            plain = self._plain
            req = httpplain.parse(data, plain[0]) if plain is not None else None
            if req is not None:
                keepalive = self._handle_plain(req, conn)
            else:
                parser = ghttp.RequestParser(self.cfg, [data], conn.client)
                req = next(parser)
                keepalive = self._handle_request(req, conn)
        except StopIteration:
            pass
        except gerrors.ParseException as exc:
            # gunicorn's messages quote the offending line, which may hold a
            # token: neither the log nor the answer repeats it.
            name = type(exc).__name__
            self.log.info("bad request from %s: %s", conn.address or "unix", name)
            self._send_error(conn, _PARSE_STATUS.get(name, 400), f"malformed request: {name}")
        except (gerrors.NoMoreData, gerrors.InvalidChunkSize, gerrors.ChunkMissingTerminator) as exc:
            # IOErrors in gunicorn 20.1: a body gunicorn reads otherwise than the frame.
            self.log.info("bad request from %s: %s", conn.address or "unix", type(exc).__name__)
            self._send_error(conn, 400, f"malformed request: {type(exc).__name__}")
        except ssl.SSLError as exc:
            self.log.debug("TLS error while serving a request: %s", type(exc).__name__)
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN) and not isinstance(exc, TimeoutError):
                self.log.exception("Socket error processing request.")
        except Exception:
            self.log.exception("Error handling request")
            self._send_error(conn, 500, "internal error")
        finally:
            if self.retire_after_sdk and self.alive and awskms.sdk_loaded():
                # Its answer is out; the loop stops taking work and the
                # master forks a replacement without the SDK.
                log.info("replacing this worker: it loaded the AWS SDK for a KMS call")
                self.alive = False
                keepalive = False
            if keepalive:
                try:
                    conn.sock.setblocking(False)
                except OSError:
                    keepalive = False
            self._done.append((conn, keepalive))
            if not self._wake_sent:
                self._wake_sent = True
                try:
                    os.write(self._wake_w, b"x")
                except (BlockingIOError, OSError):
                    pass  # a full pipe wakes the loop as well

    def _send_error(self, conn: Connection, status: int, message: str) -> None:
        try:
            conn.sock.sendall(error_response(status, message))
        except (OSError, ValueError):
            pass

    def _count_request(self, resp: Any) -> None:
        """gunicorn's per-request bookkeeping: ``max_requests``, and when the
        answer must close the connection."""
        self.nr += 1
        if self.nr >= self.max_requests:
            if self.alive:
                self.log.info("Autorestarting worker after current request.")
                self.alive = False
            resp.force_close()
        if not self.alive or not self._keepalive:
            resp.force_close()
        elif len(self._conns) >= self._max_conns - self._threads:
            resp.force_close()

    def _handle_plain(self, req: httpplain.PlainRequest, conn: Connection) -> bool:
        """:meth:`_handle_request` for a plain request: the same hooks and
        bookkeeping, with :mod:`vaultd.httpplain`'s environ and response."""
        assert self._plain is not None
        _limits, environ_maker, pre_request, post_request = self._plain
        environ: dict[str, Any] = {}
        resp = httpplain.PlainResponse(req, conn.sock)
        try:
            pre_request(self, req)
            environ = environ_maker.make(req, conn.sock, conn.client, conn.server)
            self._count_request(resp)
            respiter = self.wsgi(environ, resp.start_response)
            try:
                for item in respiter:
                    resp.write(item)
                resp.close()
            finally:
                if hasattr(respiter, "close"):
                    respiter.close()
            return not resp.should_close()
        except OSError:
            raise
        except Exception:
            if resp.headers_sent:
                self.log.exception("Error handling request")
                raise StopIteration() from None
            raise
        finally:
            try:
                post_request(self, req, environ, resp)
            except Exception:
                self.log.exception("Exception in post_request hook")

    def _handle_request(self, req: Any, conn: Connection) -> bool:
        """gunicorn's request handling, as its threaded worker does it; True
        to keep the connection open."""
        environ: dict[str, Any] = {}
        resp = None
        # The whole body is already here: an "HTTP/1.1 100 Continue" from
        # wsgi.create would come after it (the loop sent one if needed).
        req.headers = [(name, value) for name, value in req.headers if name != "EXPECT"]
        if getattr(req, "_expected_100_continue", False):
            req._expected_100_continue = False
        try:
            self.cfg.pre_request(self, req)
            request_start = datetime.now()
            resp, environ = gwsgi.create(req, conn.sock, conn.client, conn.server, self.cfg)
            environ["wsgi.multithread"] = True
            self._count_request(resp)
            respiter = self.wsgi(environ, resp.start_response)
            try:
                if isinstance(respiter, environ["wsgi.file_wrapper"]):
                    resp.write_file(respiter)
                else:
                    for item in respiter:
                        resp.write(item)
                resp.close()
            finally:
                self.log.access(resp, req, environ, datetime.now() - request_start)
                if hasattr(respiter, "close"):
                    respiter.close()
            return not resp.should_close()
        except OSError:
            raise
        except Exception:
            if resp is not None and resp.headers_sent:
                self.log.exception("Error handling request")
                raise StopIteration() from None
            raise
        finally:
            try:
                self.cfg.post_request(self, req, environ, resp)
            except Exception:
                self.log.exception("Exception in post_request hook")
