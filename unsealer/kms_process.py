"""The AWS SDK in a child process that lives only while the agent unwraps.

The agent stays resident for as long as vaultd runs, yet it needs KMS for a
second or so each time the daemon starts.  boto3 and botocore cost a Python
process about 20 MiB that it never gives back once they are imported, and
their buffers hold the plaintext KEK where nothing can wipe it.  So the
agent itself never imports them: :class:`KmsProcess` starts
``python -m unsealer.kms_process`` when an unwrap is likely soon, has it
decrypt the stored key, reads the plaintext back into a ``bytearray`` the
agent wipes, and ends the child once the episode is over.  The agent warms
the child as soon as the daemon stops answering (it is restarting), so the
import overlaps the daemon's own start instead of adding to it.

The two talk over the child's stdin and stdout, private pipes:

- first, parent to child, one JSON line ``{"options": {...}}``: the seal
  stanza, which may hold an access key, hence a pipe and not the command line;
  the child answers ``{"ready": true}`` once it has imported boto3 and read
  the AWS profile, or ``{"config_error": "..."}`` and exits;
- then, for each unwrap, ``{"stored": <StoredKey.to_dict()>}``, answered by
  ``{"length": n}`` and a newline followed by the n bytes of plaintext, or by
  ``{"error": "...", "code": "...", "permanent": bool}``, the
  :class:`~vaultd.seal.base.SealError` the call raised in the child;
- the end of the child's stdin ends it, so a dead agent leaves no child.

A child that dies, or does not answer within :data:`CALL_TIMEOUT`, is a
retryable :class:`~vaultd.seal.base.SealError`: the agent's KMS backoff
paces the next attempt, which starts a new child.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import IO, Any

from vaultd.hardening import disable_core_dumps
from vaultd.logging import setup_logging
from vaultd.seal.awskms import AwsKmsConfigError, AwsKmsSeal
from vaultd.seal.base import SealError, StoredKey

log = logging.getLogger("vaultd.unsealer")

READY_TIMEOUT = 60.0
"""Seconds a new child may take to import boto3 and read the AWS profile
(about half a second on an idle machine; a booting one can be far slower)."""
CALL_TIMEOUT = 60.0
"""Seconds one unwrap may take in the child.  botocore already gives up on
KMS after 5 s connecting and 10 s reading; this covers credential providers
and a child that hangs for any other reason."""
STOP_TIMEOUT = 2.0
"""Seconds a child is given to exit at the end of its stdin before it is killed."""
MAX_LINE = 64 * 1024
"""The longest header line the child may send (its error messages are short)."""


class KmsProcess:
    """One ``seal "awskms"`` stanza whose KMS calls run in a child process.

    It offers what the agent needs of a seal (:class:`unsealer.agent.Unwrapper`):
    ``type``, ``kms_key_id``, :meth:`unwrap`, and :meth:`warm` and
    :meth:`rest` around each episode.  The stanza is checked here without
    boto3 (:class:`~vaultd.seal.awskms.AwsKmsSeal` imports it lazily), so a
    missing key id is still a config error before any child runs."""

    type = "awskms"

    def __init__(self, options: Mapping[str, object], *, log_level: str = "info") -> None:
        self.kms_key_id = AwsKmsSeal(options).kms_key_id
        self._options = {str(name): value for name, value in options.items()}
        self._log_level = log_level
        self._lock = threading.Lock()
        self._child: subprocess.Popen[bytes] | None = None
        self._ready = False
        self._pending = bytearray()

    def __repr__(self) -> str:
        running = self._child is not None and self._child.poll() is None
        return f"KmsProcess(kms_key_id={self.kms_key_id!r}, child={'running' if running else 'none'})"

    @property
    def pid(self) -> int | None:
        """The child's pid while one was started and not yet ended by :meth:`rest`."""
        return None if self._child is None else self._child.pid

    # --- the agent's side -------------------------------------------------------

    def warm(self) -> None:
        """Start a child if none was started, without waiting for it: an
        unwrap is likely within the next second.  A child that has since
        died is left for :meth:`unwrap` to notice, so that a child failing
        at every start is restarted at the KMS backoff's pace, not at the
        pace of the agent's looks at a daemon that is down."""
        with self._lock:
            if self._child is None:
                try:
                    self._start()
                except SealError as exc:  # unwrap() starts one again, and says why if it cannot
                    log.warning("%s", exc)

    def check(self) -> None:
        """Start a child and wait until it has read the AWS profile.  The
        agent calls this at its start, so that a profile that does not exist
        is a config error then (:class:`AwsKmsConfigError`), as it was when
        the agent imported boto3 itself; the child is then kept for the
        first episode."""
        with self._lock:
            try:
                if self._child is None:
                    self._start()
                self._await_ready(time.monotonic() + READY_TIMEOUT)
            except SealError as exc:
                self._end()
                if exc.code == "InvalidConfiguration":
                    raise AwsKmsConfigError(str(exc)) from None
                # Not the config's fault (a fork that failed, a child that
                # was killed): the first unwrap tries again, with backoff.
                log.warning("%s", exc)

    def unwrap(self, stored: StoredKey) -> bytearray:
        """The plaintext KEK, in a buffer the caller wipes."""
        request = json.dumps({"stored": stored.to_dict()}).encode() + b"\n"
        with self._lock:
            if self._child is None:
                self._start()
            try:
                self._await_ready(time.monotonic() + READY_TIMEOUT)
                self._send(request)
                header = self._read_header(time.monotonic() + CALL_TIMEOUT)
                if "error" in header:
                    raise SealError(
                        str(header["error"]), code=str(header.get("code", "")), permanent=bool(header.get("permanent"))
                    )
                length = header.get("length")
                if not isinstance(length, int) or not 0 < length <= 4096:
                    raise self._broken(f"answered with an unexpected header {sorted(header)}")
                return self._read_exact(length, time.monotonic() + CALL_TIMEOUT)
            except SealError as exc:
                if exc.code.startswith("KmsHelper") or exc.code == "InvalidConfiguration":
                    self._end()
                raise

    def rest(self) -> None:
        """End the child, if any: nothing to unwrap until the daemon's next start."""
        with self._lock:
            self._end()

    # --- the child's lifetime ---------------------------------------------------

    def _start(self) -> None:
        try:
            child = subprocess.Popen(
                [sys.executable, "-m", "unsealer.kms_process", "--log-level", self._log_level],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                close_fds=True,
                # Not the agent's working directory: `-m` puts it on sys.path.
                cwd="/",
            )
        except OSError as exc:  # fork or exec failed: out of processes or memory, say
            raise SealError(
                f"cannot start the KMS helper process: {exc.strerror or exc}", code="KmsHelperStart", permanent=False
            ) from None
        self._child, self._ready = child, False
        self._pending.clear()
        log.debug("started the KMS helper process (pid %d)", child.pid)
        # The pipe holds far more than one stanza: this does not block.
        self._send(json.dumps({"options": self._options}, default=str).encode() + b"\n")

    def _end(self) -> None:
        child, self._child, self._ready = self._child, None, False
        self._wipe_pending()
        if child is None:
            return
        for stream in (child.stdin, child.stdout):
            if stream is not None:
                stream.close()
        try:
            child.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        log.debug("the KMS helper process (pid %d) ended (%s)", child.pid, child.returncode)

    def _await_ready(self, deadline: float) -> None:
        if self._ready:
            return
        header = self._read_header(deadline)
        if "config_error" in header:
            raise SealError(str(header["config_error"]), code="InvalidConfiguration", permanent=True)
        if header.get("ready") is not True:
            raise self._broken(f"started with an unexpected header {sorted(header)}")
        self._ready = True

    def _send(self, data: bytes) -> None:
        child = self._child
        assert child is not None and child.stdin is not None
        try:
            child.stdin.write(data)
            child.stdin.flush()
        except (BrokenPipeError, ValueError):
            raise self._exited() from None

    def _read_header(self, deadline: float) -> dict[str, Any]:
        end = self._fill(lambda: self._pending.find(b"\n"), deadline)
        line = bytes(self._pending[:end])
        del self._pending[: end + 1]
        try:
            header = json.loads(line)
        except ValueError:
            header = None
        if not isinstance(header, dict):
            raise self._broken("sent a header that is not a JSON object")
        return header

    def _read_exact(self, length: int, deadline: float) -> bytearray:
        self._fill(lambda: length if len(self._pending) >= length else -1, deadline)
        plaintext = bytearray(self._pending[:length])
        self._wipe_pending()
        return plaintext

    def _fill(self, found: Callable[[], int], deadline: float) -> int:
        """Read from the child until ``found()`` is not -1, into a buffer that
        is wiped (the plaintext passes through it; ``os.readv`` reads into
        a ``bytearray``, where ``os.read`` would leave an immutable copy)."""
        child = self._child
        assert child is not None and child.stdout is not None
        fd = child.stdout.fileno()
        chunk = bytearray(4096)
        try:
            while (at := found()) == -1:
                if len(self._pending) > MAX_LINE:
                    raise self._broken("sent a header line that never ends")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise SealError(
                        f"the KMS helper process (pid {child.pid}) did not answer within "
                        f"{CALL_TIMEOUT:.0f} s; it is ended and the next attempt starts another",
                        code="KmsHelperTimeout",
                        permanent=False,
                    )
                ready = select.poll()
                ready.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
                if not ready.poll(min(remaining, 1.0) * 1000):
                    continue
                count = os.readv(fd, [chunk])
                if count == 0:
                    raise self._exited()
                self._pending += memoryview(chunk)[:count]
            return at
        finally:
            chunk[:] = bytes(len(chunk))

    def _wipe_pending(self) -> None:
        self._pending[:] = bytes(len(self._pending))
        self._pending.clear()

    def _exited(self) -> SealError:
        child = self._child
        code: int | None = None
        if child is not None:
            try:
                code = child.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                code = None
        return SealError(
            f"the KMS helper process ended (exit status {code}) before it answered; the next attempt starts another",
            code="KmsHelperExited",
            permanent=False,
        )

    def _broken(self, what: str) -> SealError:
        return SealError(f"the KMS helper process {what}", code="KmsHelperProtocol", permanent=False)


# --- the child ----------------------------------------------------------------------


def _reply(out: IO[bytes], header: Mapping[str, object], payload: bytes = b"") -> None:
    out.write(json.dumps(header).encode() + b"\n" + payload)
    out.flush()


def serve(requests: IO[bytes], out: IO[bytes]) -> int:
    """The child's loop: one stanza, then unwraps until the end of ``requests``."""
    first = requests.readline()
    try:
        options = json.loads(first)["options"]
        seal = AwsKmsSeal(options)
        seal.prepare()
    except AwsKmsConfigError as exc:
        _reply(out, {"config_error": str(exc)})
        return 2
    except (ValueError, KeyError, TypeError):
        _reply(out, {"config_error": "the agent sent no seal stanza"})
        return 2
    _reply(out, {"ready": True})
    seal.warm()
    for line in requests:
        try:
            stored = StoredKey.from_dict(json.loads(line)["stored"])
            plaintext = seal.unwrap(stored)
        except SealError as exc:
            _reply(out, {"error": str(exc), "code": exc.code, "permanent": exc.permanent})
            continue
        except (ValueError, KeyError, TypeError) as exc:
            # The agent built the request: this is a bug, not bad input.
            _reply(out, {"error": f"malformed request ({type(exc).__name__})", "code": "KmsHelperProtocol",
                         "permanent": False})
            continue
        _reply(out, {"length": len(plaintext)}, plaintext)
    return 0


def main(argv: list[str] | None = None) -> int:
    disable_core_dumps()
    parser = argparse.ArgumentParser(prog="python -m unsealer.kms_process",
                                     description="vaultd-unsealer's KMS helper; started by the agent, not by hand")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    setup_logging(args.log_level, identifier="vaultd-unsealer")
    # The answers get a descriptor of their own and fd 1 becomes stderr, so
    # nothing a library prints can land in the middle of one.
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    try:
        return serve(sys.stdin.buffer, answers)
    except BrokenPipeError:  # the agent went away mid-answer
        return 0


if __name__ == "__main__":
    sys.exit(main())
