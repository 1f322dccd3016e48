"""Prometheus metrics summed over every gunicorn worker.

A request lands on one worker, and gunicorn replaces workers (after a seal,
a crash, a reload), so counts kept in a worker's memory would be a random
slice of the truth that drops to zero whenever the worker goes.
prometheus_client's multiprocess mode keeps each worker's values in small
mmap'd files in one directory (``PROMETHEUS_MULTIPROC_DIR``); a scrape, in
whichever worker it lands, sums the files of every worker that ever ran,
replaced ones included.  The master makes that directory, empty and private
(0700, on a tmpfs), before it forks, and removes a dead worker's live gauges
(:func:`worker_exited`).

Without a directory (unit tests, a Flask app built outside the server) the
same instruments count in one process's memory.

Values that are a state rather than a count (sealed or not, tokens stored)
are not kept in the files at all: the scraping worker reads them when it is
scraped (:func:`scrape`), so they are never stale and cost nothing per request.

This module knows nothing of Flask or gunicorn: the request middleware is
plain WSGI, so the fast path and the Flask app are counted alike.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import shutil
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import Any

from vaultd.metrics_series import Series, series_of
from vaultd.storage.base import Op, Storage

log = logging.getLogger("vaultd.metrics")

ENV_VAR = "PROMETHEUS_MULTIPROC_DIR"
DIR_PREFIX = "vaultd-metrics-"
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""What Vault answers ``?format=prometheus`` with; the text we write is that
format whichever prometheus_client version wrote it."""

REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STORAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
REQUEST_HISTOGRAM = "vaultd_http_request_duration_seconds"
REQUEST_COUNTER = "vaultd_http_requests"
METHODS = frozenset(("GET", "PUT", "POST", "DELETE", "LIST", "PATCH", "HEAD", "OPTIONS"))
ANSWERED_LIMIT = 512

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


# -- the multiprocess directory (the master) ------------------------------------------


def runtime_base(environ: Mapping[str, str] | None = None) -> str | None:
    """Where the directory goes: a tmpfs the daemon's user owns.

    ``$RUNTIME_DIRECTORY`` (systemd's ``RuntimeDirectory=vaultd``, i.e.
    ``/run/vaultd``), else ``$XDG_RUNTIME_DIR`` (a login session), else
    ``/run/vaultd`` if this user may write it; None means "make a private
    temporary directory".  Not ``$XDG_RUNTIME_DIR/vaultd``: that is the
    agent socket's directory, whose mode :mod:`vaultd.agent_channel` sets."""
    env = os.environ if environ is None else environ
    runtime = env.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if runtime and os.path.isabs(runtime):
        return runtime
    xdg = env.get("XDG_RUNTIME_DIR", "")
    if xdg and os.path.isabs(xdg):
        return xdg
    if os.path.isdir("/run/vaultd") and os.access("/run/vaultd", os.W_OK | os.X_OK):
        return "/run/vaultd"
    return None


def prepare_directory(base: str | None = None, *, pid: int | None = None) -> str:
    """Make this master's empty, private directory and point prometheus_client
    at it (the environment, inherited by the workers, and the library's value
    class if it was imported already).  Returns the directory.

    One directory per master (``vaultd-metrics-<pid>``): two servers in one login
    session must not sum, or wipe, each other's counts.  Directories of
    masters that are gone are removed here; the master removes its own at
    exit (:func:`remove_directory`)."""
    pid = os.getpid() if pid is None else pid
    if base is None:
        base = runtime_base()
    if base is None:
        # A shared place (/dev/shm, /tmp): a fresh name nobody else can have
        # made first, with the pid in it so that a later master can prune it.
        shared = "/dev/shm" if os.access("/dev/shm", os.W_OK | os.X_OK) else None  # noqa: S108 - tmpfs, mkdtemp
        _prune_dead(shared or tempfile.gettempdir())
        directory = tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{pid}-", dir=shared)
    else:
        os.makedirs(base, mode=0o700, exist_ok=True)
        _prune_dead(base)
        directory = os.path.join(base, f"{DIR_PREFIX}{pid}")
        shutil.rmtree(directory, ignore_errors=True)
        os.mkdir(directory, 0o700)
    use_directory(directory)
    # Imported now, in the master, not in worker_exited: gunicorn calls that
    # from its SIGCHLD handler, which runs again when a second worker dies
    # during the first call, and an import under way there is seen half made
    # (ImportError out of the handler: the master exited 1 at a stop).
    from prometheus_client import multiprocess  # noqa: F401
    return directory


def _prune_dead(base: str) -> None:
    """Remove the directories of masters that died without cleaning up
    (``kill -9``): only this user's own, and never through a symlink."""
    uid = os.geteuid()
    with contextlib.suppress(OSError):
        for name in os.listdir(base):
            number = name[len(DIR_PREFIX):].split("-")[0]
            if not (name.startswith(DIR_PREFIX) and number.isdigit()) or _alive(int(number)):
                continue
            path = os.path.join(base, name)
            with contextlib.suppress(OSError):
                info = os.lstat(path)
                if stat.S_ISDIR(info.st_mode) and info.st_uid == uid:
                    shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def use_directory(directory: str | None) -> None:
    """Count in ``directory`` from now on (None: in this process's memory).
    Instruments made before this are dropped and made again on first use."""
    global _instruments
    if directory is None:
        os.environ.pop(ENV_VAR, None)
    else:
        os.environ[ENV_VAR] = directory
    values = sys.modules.get("prometheus_client.values")
    if values is not None:
        # The library picks its value class when first imported: pick again.
        values.ValueClass = values.get_value_class()  # type: ignore[attr-defined]
    with _lock:
        _instruments = None


def directory() -> str | None:
    return os.environ.get(ENV_VAR) or None


def worker_exited(pid: int) -> None:
    """gunicorn's ``child_exit``: drop the dead worker's live gauges.  Its
    counters and histograms stay in the directory and keep counting in
    every sum."""
    path = directory()
    if path is None:
        return
    from prometheus_client import multiprocess

    with contextlib.suppress(OSError):
        multiprocess.mark_process_dead(pid, path)


def remove_directory(path: str | None) -> None:
    if path:
        shutil.rmtree(path, ignore_errors=True)


# -- instruments (the workers) ------------------------------------------------------------


class Instruments:
    """The metrics every worker records into.  Made on first use, after the
    fork, so that each worker's values go to files under its own pid."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.multiprocess = directory() is not None
        # Not the library's global registry: a scrape builds its own (the
        # multiprocess collector, or this one), and tests may make several.
        self.registry = CollectorRegistry(auto_describe=True)
        # The request counter is this histogram's count (see scrape()): one
        # value fewer to write per request.
        self.request_seconds = Histogram(
            REQUEST_HISTOGRAM, "Time to answer an HTTP request, by method, route class and status code.",
            ("method", "route", "code"), buckets=REQUEST_BUCKETS, registry=self.registry,
        )
        self.storage_seconds = Histogram(
            "vaultd_storage_operation_duration_seconds",
            "Time the storage backend took per operation (reads the cross-worker cache answered are not counted).",
            ("operation",), buckets=STORAGE_BUCKETS, registry=self.registry,
        )
        self.audit_written = Counter(
            "vaultd_audit_entries", "Audit entries (requests and responses) written, by device path.",
            ("device",), registry=self.registry,
        )
        self.audit_failed = Counter(
            "vaultd_audit_entries_failed", "Audit entries a device failed to write, by device path.",
            ("device",), registry=self.registry,
        )
        self._requests: dict[tuple[str, str, str], Series] = {}
        self.answered: dict[tuple[str, str, str], Series] = {}
        """The request series by method, route class and whole status line,
        for :class:`RequestMetrics` (see :meth:`answer_series`)."""
        self._storage: dict[str, Series] = {}
        self._audit: dict[tuple[str, bool], Any] = {}

    def audit_entry(self, device: str, *, written: bool) -> None:
        """One audit entry (request or response) that ``device`` (its path,
        e.g. ``file/``) wrote or failed to write."""
        key = (device, written)
        inc = self._audit.get(key)
        if inc is None:
            child = (self.audit_written if written else self.audit_failed).labels(device)
            inc = self._audit[key] = getattr(getattr(child, "_value", None), "inc", None) or child.inc
        inc(1)

    def request_done(self, method: str, route: str, code: str, seconds: float) -> None:
        self._request_series(method, route, code).observe(seconds)

    def _request_series(self, method: str, route: str, code: str) -> Series:
        key = (method, route, code)
        series = self._requests.get(key)
        if series is None:
            series = self._requests[key] = series_of(self.request_seconds.labels(method, route, code))
        return series

    def answer_series(self, method: str, route: str, status: str) -> Series:
        """The series of an answer with the status line ``status``, kept in
        :attr:`answered` under the whole line so that the middleware need
        not cut the code out of it.  An app's status lines are few; the bound
        keeps odd reason phrases from growing the dict."""
        series = self._request_series(method, route, status[:3])
        if len(self.answered) < ANSWERED_LIMIT:
            self.answered[(method, route, status)] = series
        return series

    def storage_done(self, operation: str, seconds: float) -> None:
        series = self._storage.get(operation)
        if series is None:
            series = self._storage[operation] = series_of(self.storage_seconds.labels(operation))
        series.observe(seconds)


_lock = threading.Lock()
_instruments: Instruments | None = None


def _forget_after_fork() -> None:
    """In a forked child: the parent's instruments write into the parent's
    files (:func:`vaultd.metrics_series.series_of`), so the child makes its
    own.  The lock is made anew: another thread of the parent may have held
    it at the fork."""
    global _instruments, _lock
    _instruments = None
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


def instruments() -> Instruments:
    global _instruments
    current = _instruments
    if current is None:
        with _lock:
            if _instruments is None:
                _instruments = Instruments()
            current = _instruments
    return current


def route_class(path: str) -> str:
    """A bounded label for a request path: never the path itself, which any
    client can vary without end."""
    if path[:4] != "/v1/":
        return "other"
    if path[4:8] == "sys/":
        return "sys"
    if path[4:9] == "auth/":
        return "auth"
    return "secret"


class RequestMetrics:
    """WSGI middleware counting every answer: outermost, so the fast path's
    answers count as much as Flask's.  Every request pays for it, so it does
    little: the status line is kept in a closure cell, and the histogram
    child is found by one dict lookup on (method, route class, status line)
    (:meth:`Instruments.answer_series`)."""

    def __init__(self, app: WsgiApp) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        started = perf_counter()
        status = "500"

        def recording(line: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            nonlocal status
            status = line
            return start_response(line, headers, exc_info)

        try:
            return self.app(environ, recording)
        finally:
            seconds = perf_counter() - started
            method = environ.get("REQUEST_METHOD", "")
            if method not in METHODS:
                method = "other"
            route = route_class(environ.get("PATH_INFO", ""))
            current = _instruments or instruments()
            series = current.answered.get((method, route, status))
            if series is None:
                series = current.answer_series(method, route, status)
            series.observe(seconds)


class TimedStorage(Storage):
    """The storage backend with each operation's time recorded.  Sits under
    the cross-worker cache, so it measures the backend itself; anything a
    backend adds beyond :class:`Storage` (``backup_to``, ``clear``) passes
    through untouched."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def get(self, key: str) -> bytes | None:
        started = time.perf_counter()
        try:
            return self.inner.get(key)
        finally:
            instruments().storage_done("get", time.perf_counter() - started)

    def put(self, key: str, value: bytes) -> None:
        started = time.perf_counter()
        try:
            self.inner.put(key, value)
        finally:
            instruments().storage_done("put", time.perf_counter() - started)

    def delete(self, key: str) -> None:
        started = time.perf_counter()
        try:
            self.inner.delete(key)
        finally:
            instruments().storage_done("delete", time.perf_counter() - started)

    def list(self, prefix: str) -> list[str]:
        started = time.perf_counter()
        try:
            return self.inner.list(prefix)
        finally:
            instruments().storage_done("list", time.perf_counter() - started)

    def transaction(self, ops: Sequence[Op]) -> None:
        started = time.perf_counter()
        try:
            self.inner.transaction(ops)
        finally:
            instruments().storage_done("transaction", time.perf_counter() - started)

    def keys(self, prefix: str = "") -> Iterator[str]:
        return self.inner.keys(prefix)

    def lock(self, name: str = "") -> contextlib.AbstractContextManager[None]:
        return self.inner.lock(name)


# -- scraping -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gauge:
    """A value read at scrape time.  ``counter`` for a count kept elsewhere
    (the HA thread's, in the shared seal state) that only grows: it is
    exposed as a counter (``<name>_total``)."""

    name: str
    documentation: str
    value: float
    labels: tuple[tuple[str, str], ...] = ()
    counter: bool = False


HA_ROLES = ("active", "standby", "sealed")


def ha_gauges(role: str, *, renewals: int, lost: int) -> list[Gauge]:
    """The HA series of a node whose storage has ``ha_enabled``: ``role`` is
    one of :data:`HA_ROLES` (``sealed``: no role).  The counts are the
    master's HA thread's since the master started; the role is the one the
    node answers with now (an active node past its lease deadline is not
    active)."""
    out = [Gauge("vaultd_ha_active", "1 while this node is the active HA node, 0 otherwise.",
                 float(role == "active"))]
    out.extend(Gauge("vaultd_ha_role", "1 for this node's HA role (active, standby, sealed), 0 for the others.",
                     float(role == name), (("role", name),)) for name in HA_ROLES)
    out.append(Gauge("vaultd_ha_lock_renewals", "Renewals of the active lease by this node.", float(renewals),
                     counter=True))
    out.append(Gauge("vaultd_ha_lock_lost", "Times this node lost the active lease (could not renew it in time, "
                     "or found it taken).", float(lost), counter=True))
    return out


class _Gauges:
    def __init__(self, read: Callable[[], list[Gauge]]) -> None:
        self.read = read

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        families: dict[str, Any] = {}
        for gauge in self.read():
            family = families.get(gauge.name)
            if family is None:
                kind = CounterMetricFamily if gauge.counter else GaugeMetricFamily
                family = families[gauge.name] = kind(
                    gauge.name, gauge.documentation, labels=[k for k, _ in gauge.labels])
            family.add_metric([v for _, v in gauge.labels], gauge.value)
        yield from families.values()


def scrape(gauges: Callable[[], list[Gauge]] = list) -> list[Any]:
    """Every metric family: the counts of every worker (or of this process)
    and the gauges read now."""
    from prometheus_client import CollectorRegistry

    path = directory()
    current = instruments()
    if path is not None and current.multiprocess:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path)
        families = list(registry.collect())
    else:
        families = list(current.registry.collect())
    families.extend(_request_counter(families))
    families.extend(_Gauges(gauges).collect())
    return sorted(families, key=lambda family: family.name)


def _request_counter(families: list[Any]) -> list[Any]:
    """``vaultd_http_requests_total{method,route,code}``, from the request
    histogram's counts."""
    from prometheus_client.core import CounterMetricFamily

    counter = CounterMetricFamily(REQUEST_COUNTER, "HTTP requests answered, by method, route class and status code.",
                                  labels=["method", "route", "code"])
    for family in families:
        if family.name == REQUEST_HISTOGRAM:
            for sample in family.samples:
                if sample.name == REQUEST_HISTOGRAM + "_count":
                    labels = sample.labels
                    counter.add_metric([labels["method"], labels["route"], labels["code"]], sample.value)
    return [counter]


def prometheus_text(families: list[Any]) -> bytes:
    from prometheus_client import CollectorRegistry, generate_latest

    class _Fixed:
        def collect(self) -> list[Any]:
            return families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed())  # type: ignore[arg-type]
    return bytes(generate_latest(registry))


def _dotted(name: str) -> str:
    for suffix in ("_seconds", "_total"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name.replace("_", ".")


def _sampled(name: str, count: float, total: float, labels: Mapping[str, str]) -> dict[str, Any]:
    return {
        "Name": name, "Count": int(count), "Rate": 0.0, "Sum": total, "Min": 0.0, "Max": 0.0,
        "Mean": total / count if count else 0.0, "Stddev": 0.0, "Labels": dict(labels),
    }


def json_summary(families: list[Any], now: float | None = None) -> dict[str, Any]:
    """Vault's ``sys/metrics`` JSON (go-metrics' in-memory summary): gauges
    with their value; counters with ``Count`` and ``Sum`` the total since
    the directory was made; histograms as ``Samples`` in milliseconds, as
    Vault's timers are.  ``Timestamp`` is the start of the 10-second
    interval, in Go's format."""
    when = datetime.datetime.fromtimestamp(time.time() if now is None else now, datetime.UTC)
    when = when.replace(second=when.second - when.second % 10, microsecond=0)
    gauges: list[dict[str, Any]] = []
    counters: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    for family in families:
        name = _dotted(family.name)
        if family.type == "gauge":
            for sample in family.samples:
                gauges.append({"Name": name, "Value": sample.value, "Labels": dict(sample.labels)})
        elif family.type == "counter":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    counters.append(_sampled(name, sample.value, sample.value, sample.labels))
        elif family.type == "histogram":
            sums: dict[tuple[tuple[str, str], ...], list[float]] = {}
            for sample in family.samples:
                labels = tuple(sorted(sample.labels.items()))
                if sample.name.endswith("_count"):
                    sums.setdefault(labels, [0.0, 0.0])[0] = sample.value
                elif sample.name.endswith("_sum"):
                    sums.setdefault(labels, [0.0, 0.0])[1] = sample.value * 1000.0
            for labels, (count, total) in sums.items():
                samples.append(_sampled(name, count, total, dict(labels)))
    return {
        "Timestamp": f"{when:%Y-%m-%d %H:%M:%S} +0000 UTC",
        "Gauges": gauges,
        "Points": [],
        "Counters": counters,
        "Samples": samples,
    }
