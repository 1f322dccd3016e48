"""The per-request recording of vaultd.metrics in multiprocess mode: what the
request middleware and the histogram writer (vaultd.metrics_series) put in
the files is what prometheus_client itself would have, across threads, a
grown file, a second set of instruments and a fork.  Run against bookworm's
prometheus_client 0.16 as well as the current one."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vaultd import metrics, metrics_series

BUCKET = "vaultd_http_request_duration_seconds_bucket"
SUM = "vaultd_http_request_duration_seconds_sum"
COUNT = "vaultd_http_requests_total"


def _value(families: list[Any], sample_name: str, **labels: str) -> float:
    return sum(s.value for f in families for s in f.samples if s.name == sample_name and s.labels == labels)


@pytest.fixture
def directory(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "metrics")
    os.mkdir(path, 0o700)
    metrics.use_directory(path)
    yield path
    metrics.use_directory(None)


def _count(method: str, route: str, code: str) -> float:
    return _value(metrics.scrape(), COUNT, method=method, route=route, code=code)


def _answering(status: str | None, *, fail: bool = False) -> Callable[..., Any]:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if status is not None:
            start_response(status, [("Content-Type", "text/plain")])
        if fail:
            raise RuntimeError("boom")
        return [b"ok"]

    return app


def test_the_middleware_counts_by_method_route_class_and_status(directory: str) -> None:
    started: list[str] = []

    def start_response(line: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        started.append(line)

    cases = [
        (_answering("200 OK"), "GET", "/v1/secret/data/a"),
        (_answering("200 OK"), "GET", "/v1/secret/data/b"),
        (_answering("404 Not Found"), "LIST", "/v1/secret/metadata/"),
        (_answering("405 Method Not Allowed"), "BREW", "/v1/sys/health"),
        (_answering("204 No Content"), "PUT", "/v1/auth/token/revoke-self"),
        (_answering("200 OK"), "GET", "/v1/authority"),
        (_answering("200 OK"), "GET", "/ui/"),
        (_answering(None), "GET", "/v1/sys/seal-status"),  # never started: counted as a 500
    ]
    for app, method, path in cases:
        body = metrics.RequestMetrics(app)({"REQUEST_METHOD": method, "PATH_INFO": path}, start_response)
        assert list(body) == [b"ok"]
    with pytest.raises(RuntimeError):
        metrics.RequestMetrics(_answering(None, fail=True))({"REQUEST_METHOD": "POST", "PATH_INFO": "/v1/sys/x"},
                                                            start_response)
    assert started == ["200 OK", "200 OK", "404 Not Found", "405 Method Not Allowed", "204 No Content",
                       "200 OK", "200 OK"]
    expected = {("GET", "secret", "200"): 3, ("LIST", "secret", "404"): 1, ("other", "sys", "405"): 1,
                ("PUT", "auth", "204"): 1, ("GET", "other", "200"): 1, ("GET", "sys", "500"): 1,
                ("POST", "sys", "500"): 1}
    families = metrics.scrape()
    seen = {(s.labels["method"], s.labels["route"], s.labels["code"]): s.value
            for f in families if f.name == "vaultd_http_requests" for s in f.samples if s.name == COUNT}
    assert seen == expected


def test_odd_status_lines_are_counted_by_code_in_a_bounded_cache(directory: str) -> None:
    lines = [f"418 Teapot number {n}" for n in range(metrics.ANSWERED_LIMIT + 50)]

    def start_response(line: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        pass

    for line in lines:
        metrics.RequestMetrics(_answering(line))({"REQUEST_METHOD": "GET", "PATH_INFO": "/v1/x"}, start_response)
    assert len(metrics.instruments().answered) <= metrics.ANSWERED_LIMIT
    assert _count("GET", "secret", "418") == len(lines)


def test_the_histogram_is_written_where_the_library_reads_it(directory: str) -> None:
    current = metrics.instruments()
    # Below the first bound, on a bound (le is inclusive), between, on the
    # last finite bound, beyond it (+Inf).
    for seconds in (0.0001, 0.0005, 0.003, 10.0, 11.5):
        current.request_done("GET", "sys", "200", seconds)
    series = current._requests[("GET", "sys", "200")]
    # The direct writer, not the fallback: this prometheus_client's internals
    # are the ones it knows.
    assert isinstance(series, metrics_series._Mapped)
    families = metrics.scrape()
    labels = {"method": "GET", "route": "sys", "code": "200"}
    cumulative = {"0.0005": 2, "0.001": 2, "0.0025": 2, "0.005": 3, "5.0": 3, "10.0": 4, "+Inf": 5}
    for bound, count in cumulative.items():
        assert _value(families, BUCKET, le=bound, **labels) == count, bound
    assert _value(families, SUM, **labels) == pytest.approx(21.5036)
    assert _value(families, COUNT, **labels) == 5
    # The library's own view of the child agrees with its files.
    child = current.request_seconds.labels("GET", "sys", "200")
    assert child._sum.get() == pytest.approx(21.5036)


def test_threads_lose_no_count(directory: str) -> None:
    current = metrics.instruments()
    start = threading.Barrier(4)

    def count() -> None:
        start.wait()
        for _ in range(500):
            current.request_done("GET", "secret", "200", 0.5)

    threads = [threading.Thread(target=count) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    families = metrics.scrape()
    assert _value(families, COUNT, method="GET", route="secret", code="200") == 2000
    assert _value(families, SUM, method="GET", route="secret", code="200") == 1000.0


def test_counts_kept_when_the_file_grows(directory: str) -> None:
    current = metrics.instruments()
    current.request_done("GET", "secret", "200", 0.001)
    # Enough new series that the library grows the worker's file (64 KiB
    # at first) and maps it again under the writer made before.
    for code in range(100, 200):
        current.request_done("GET", "secret", str(code), 0.001)
    files = [name for name in os.listdir(directory) if name.startswith("histogram_")]
    assert len(files) == 1 and os.path.getsize(os.path.join(directory, files[0])) > 1 << 16
    for _ in range(3):
        current.request_done("GET", "secret", "200", 0.001)
    assert _count("GET", "secret", "200") == 4
    assert _count("GET", "secret", "150") == 1


def test_new_instruments_go_on_from_the_file(directory: str) -> None:
    for _ in range(3):
        metrics.instruments().request_done("DELETE", "secret", "204", 0.01)
    metrics.use_directory(directory)  # new instruments, same worker, same file
    for _ in range(2):
        metrics.instruments().request_done("DELETE", "secret", "204", 0.01)
    assert _count("DELETE", "secret", "204") == 5


def test_a_forked_child_counts_in_its_own_file(directory: str) -> None:
    for _ in range(3):  # the parent's writer exists before the fork
        metrics.instruments().request_done("GET", "secret", "200", 0.001)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            for _ in range(4):
                metrics.instruments().request_done("GET", "secret", "200", 0.001)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    for _ in range(5):
        metrics.instruments().request_done("GET", "secret", "200", 0.001)
    assert f"histogram_{pid}.db" in os.listdir(directory)
    assert _count("GET", "secret", "200") == 12
