"""``sys/metrics`` on a real multi-worker server: counts summed over every
worker (replaced ones too), Vault's JSON shape, and who may read them.

One server for the module (starting one costs seconds on a loaded box): a
token-only listener and a second one with Vault's
``telemetry { unauthenticated_metrics_access = true }``."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.support import (
    REQUEST_TIMEOUT,
    Server,
    free_port,
    request_with_worker,
    wait_for,
    write_config,
)

WORKERS = 3


class Metrics:
    def __init__(self, server: Server, open_port: int, token: str) -> None:
        self.server = server
        self.open_port = open_port
        self.token = token

    def text(self) -> str:
        response = self.server.request("GET", "sys/metrics?format=prometheus", token=self.token)
        assert response.status_code == 200, self.server.explain(response.text)
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return response.text

    def requests_counted(self, method: str, route: str, code: str) -> float:
        """``vaultd_http_requests_total`` for one label set, summed by the
        server over its workers, as parsed by prometheus_client's parser."""
        total = 0.0
        for family in text_string_to_metric_families(self.text()):
            if family.name == "vaultd_http_requests":
                for sample in family.samples:
                    wanted = {"method": method, "route": route, "code": code}
                    if sample.name == "vaultd_http_requests_total" and sample.labels == wanted:
                        total += sample.value
        return total


@pytest.fixture(scope="module")
def metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Metrics]:
    directory: Path = tmp_path_factory.mktemp("metrics")
    port, open_port = free_port(), free_port()
    extra = (
        'listener "tcp" {\n'
        f'  address = "127.0.0.1:{open_port}"\n'
        "  tls_disable = true\n"
        "  telemetry {\n    unauthenticated_metrics_access = true\n  }\n"
        "}\n"
        'telemetry {\n  prometheus_retention_time = "1h"\n  disable_hostname = true\n}\n'
    )
    server = Server(directory=directory, port=port, config=write_config(directory, port, workers=WORKERS,
                                                                        storage="sqlite", extra=extra),
                    log=directory / "vaultd.log")
    try:
        server.start()
        result = server.init(shares=1, threshold=1)
        server.unseal(result.keys)
        yield Metrics(server, open_port, result.root_token)
    finally:
        server.stop()


def _spread(metrics: Metrics, minimum: int) -> tuple[int, set[int]]:
    """Send GET sys/health on fresh connections until at least two workers
    have answered and ``minimum`` requests went out; (requests sent, pids)."""
    pids: set[int] = set()
    sent = 0
    while sent < minimum or len(pids) < 2:
        status, _, pid = request_with_worker(metrics.server, "GET", "sys/health")
        assert status == 200
        pids.add(pid)
        sent += 1
        assert sent < 300, "every request landed on one worker"
    return sent, pids


def test_request_counter_sums_every_worker(metrics: Metrics) -> None:
    before = metrics.requests_counted("GET", "sys", "200")
    sent, pids = _spread(metrics, 20)
    after = metrics.requests_counted("GET", "sys", "200")
    # The first scrape is counted once it is answered, so the second one sees it.
    assert after - before == sent + 1, f"{sent} requests over workers {sorted(pids)}"


def test_counts_of_a_replaced_worker_remain(metrics: Metrics) -> None:
    server = metrics.server
    _, _, victim = request_with_worker(server, "GET", "sys/health")
    before = metrics.requests_counted("GET", "sys", "200")
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: victim not in server.worker_pids() and len(server.worker_pids()) == WORKERS,
             "gunicorn to replace the killed worker")
    after = metrics.requests_counted("GET", "sys", "200")
    assert after == before + 1, "the killed worker's requests vanished from the sum"


def test_latency_histogram_and_gauges(metrics: Metrics) -> None:
    families = {family.name: family for family in text_string_to_metric_families(metrics.text())}
    histogram = families["vaultd_http_request_duration_seconds"]
    counts = [s for s in histogram.samples if s.name.endswith("_count") and s.labels["route"] == "sys"]
    assert counts and sum(s.value for s in counts) > 0
    assert families["vaultd_core_unsealed"].samples[0].value == 1
    assert families["vaultd_token_count"].samples[0].value >= 1  # the root token
    storage = families["vaultd_storage_operation_duration_seconds"]
    assert any(s.labels.get("operation") == "get" and s.value > 0 for s in storage.samples
               if s.name.endswith("_count"))


def test_json_shape(metrics: Metrics) -> None:
    body = metrics.server.call("GET", "sys/metrics", token=metrics.token)
    assert set(body) == {"Timestamp", "Gauges", "Points", "Counters", "Samples"}
    assert body["Timestamp"].endswith(" +0000 UTC")
    unsealed = [g for g in body["Gauges"] if g["Name"] == "vaultd.core.unsealed"]
    assert unsealed == [{"Name": "vaultd.core.unsealed", "Value": 1.0, "Labels": {}}]
    counter = next(c for c in body["Counters"] if c["Name"] == "vaultd.http.requests")
    assert set(counter) == {"Name", "Count", "Rate", "Sum", "Min", "Max", "Mean", "Stddev", "Labels"}
    assert set(counter["Labels"]) == {"method", "route", "code"}
    assert any(s["Name"] == "vaultd.http.request.duration" for s in body["Samples"])


def test_token_needed_unless_the_listener_opens_it(metrics: Metrics) -> None:
    server = metrics.server
    assert server.request("GET", "sys/metrics").status_code == 403
    assert server.request("GET", "sys/metrics", token="not-a-token").status_code == 403
    assert server.request("POST", "sys/metrics", token=metrics.token).status_code == 405
    opened = requests.get(f"http://127.0.0.1:{metrics.open_port}/v1/sys/metrics?format=prometheus",
                          timeout=REQUEST_TIMEOUT)
    assert opened.status_code == 200
    assert any(f.name == "vaultd_http_requests" for f in text_string_to_metric_families(opened.text))
    unknown = requests.get(f"http://127.0.0.1:{metrics.open_port}/v1/sys/metrics?format=xml", timeout=REQUEST_TIMEOUT)
    assert (unknown.status_code, unknown.text) == (400, 'metric response format "xml" unknown')
