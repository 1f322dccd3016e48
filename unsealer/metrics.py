"""The agent's metrics, as a node_exporter textfile.

The agent serves nothing (it is a client of the daemon and of KMS), and a
listener only for metrics would be one more port to secure and to keep
unique on every machine.  node_exporter's textfile collector reads
``*.prom`` files from a directory (Debian's prometheus-node-exporter:
``/var/lib/prometheus/node-exporter``); the agent rewrites its file there,
atomically (a temporary file renamed over it), after each event: a KMS call,
an error, a retry, an unseal.  Those are rare (one unseal per daemon start,
retries at most every ``initial_backoff``), so the writes cost nothing.

The file is world-readable (0644, whatever the unit's ``UMask``): it holds
counts and error codes, never a key or a ciphertext.  A directory that does
not exist, or that the agent may not write, is reported once and skipped:
metrics are never a reason for the agent to stop unsealing.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from typing import Any

log = logging.getLogger("vaultd.unsealer.metrics")

DEFAULT_TEXTFILE = "/var/lib/prometheus/node-exporter/vaultd-unsealer.prom"
FILE_MODE = 0o644


class AgentMetrics:
    """Counts kept in memory and written out whole on every change."""

    def __init__(self, path: str | None, *, clock: Any = time.time) -> None:
        self.path = path or None
        self._clock = clock
        self._lock = threading.Lock()
        self._warned = False
        self.kms_calls = 0
        self.kms_errors: Counter[str] = Counter()
        self.retries: Counter[str] = Counter()
        self.unseals = 0
        self.failing = False
        self.last_unseal_seconds: float | None = None
        self.last_unseal_time: float | None = None
        self.permanent_failure: str | None = None
        self.started = clock()

    # -- events ----------------------------------------------------------------

    def kms_call(self) -> None:
        self._change(lambda: setattr(self, "kms_calls", self.kms_calls + 1))

    def kms_error(self, code: str) -> None:
        self._change(lambda: self.kms_errors.update([code or "unknown"]))

    def retry(self, cause: str) -> None:
        def apply() -> None:
            self.retries.update([cause])
            self.failing = True

        self._change(apply)

    def unsealed(self, seconds: float) -> None:
        def apply() -> None:
            self.unseals += 1
            self.failing = False
            self.last_unseal_seconds = seconds
            self.last_unseal_time = self._clock()

        self._change(apply)

    def healthy(self) -> None:
        """An attempt got through (the daemon was reached and needed nothing
        or was unsealed): no longer failing."""
        if self.failing:
            self._change(lambda: setattr(self, "failing", False))

    def exiting(self, exit_name: str) -> None:
        """A permanent error: the agent exits and systemd will not restart it."""
        def apply() -> None:
            self.permanent_failure = exit_name
            self.failing = True

        self._change(apply)

    # -- the file --------------------------------------------------------------

    def _change(self, apply: Any) -> None:
        with self._lock:
            apply()
            if self.path is not None:
                self._write()

    def families(self) -> list[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        calls = CounterMetricFamily("vaultd_unsealer_kms_calls", "KMS Decrypt calls made by the unsealer agent.")
        calls.add_metric([], self.kms_calls)
        errors = CounterMetricFamily("vaultd_unsealer_kms_errors", "KMS errors, by AWS error code.", labels=["code"])
        for code, count in sorted(self.kms_errors.items()):
            errors.add_metric([code], count)
        retries = CounterMetricFamily("vaultd_unsealer_retries", "Attempts retried, by what failed (kms, daemon).",
                                      labels=["cause"])
        for cause in ("kms", "daemon"):
            retries.add_metric([cause], self.retries.get(cause, 0))
        unseals = CounterMetricFamily("vaultd_unsealer_unseals", "Times the agent unsealed the daemon.")
        unseals.add_metric([], self.unseals)
        failing = GaugeMetricFamily("vaultd_unsealer_failing",
                                    "1 while the agent's attempts fail (retrying, or exited for good).")
        failing.add_metric([], float(self.failing))
        started = GaugeMetricFamily("vaultd_unsealer_start_time_seconds", "When the agent started (Unix time).")
        started.add_metric([], self.started)
        out = [calls, errors, retries, unseals, failing, started]
        if self.last_unseal_seconds is not None and self.last_unseal_time is not None:
            took = GaugeMetricFamily("vaultd_unsealer_unseal_duration_seconds",
                                     "Seconds from first seeing the daemon sealed to its unseal, last time.")
            took.add_metric([], self.last_unseal_seconds)
            when = GaugeMetricFamily("vaultd_unsealer_last_unseal_timestamp_seconds",
                                     "When the agent last unsealed the daemon (Unix time).")
            when.add_metric([], self.last_unseal_time)
            out += [took, when]
        permanent = GaugeMetricFamily("vaultd_unsealer_permanent_failure",
                                      "1 when the agent exited on an error a restart cannot fix, by exit name.",
                                      labels=["exit_name"])
        if self.permanent_failure is not None:
            permanent.add_metric([self.permanent_failure], 1.0)
        out.append(permanent)
        return out

    def text(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest

        families = self.families()

        class _Now:
            def collect(self) -> list[Any]:
                return families

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Now())  # type: ignore[arg-type]
        return bytes(generate_latest(registry))

    def _write(self) -> None:
        assert self.path is not None
        temporary = f"{self.path}.{os.getpid()}.tmp"  # not *.prom: node_exporter must not read it half-written
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
            try:
                os.fchmod(fd, FILE_MODE)
                os.write(fd, self.text())
            finally:
                os.close(fd)
            os.replace(temporary, self.path)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("cannot write the metrics textfile %s (%s); going on without it", self.path,
                            exc.strerror or type(exc).__name__)
            try:
                os.unlink(temporary)
            except OSError:
                pass
