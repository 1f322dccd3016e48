"""vaultd.metrics and sys/metrics in one process: what is counted, the
multiprocess sums, Vault's JSON and format rules, the telemetry config."""

from __future__ import annotations

import multiprocessing
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from vaultd import metrics
from vaultd.api.app import create_app
from vaultd.api.sys_metrics import ACCESS_CONFIG_KEY, MetricsAccess
from vaultd.config import PROMETHEUS_DEFAULT_RETENTION, ConfigError, parse_config
from vaultd.core.core import Core, CoreSettings
from vaultd.core.seal_state import SharedSealState
from vaultd.server import dev_bootstrap
from vaultd.storage.base import Put
from vaultd.storage.file import FileStorage
from vaultd.storage.sqlite import SqliteStorage


def _value(families: list[Any], sample_name: str, **labels: str) -> float:
    return sum(s.value for f in families for s in f.samples if s.name == sample_name and s.labels == labels)


@pytest.fixture
def single_process() -> Iterator[None]:
    """Count in memory, whatever an earlier test pointed the module at."""
    metrics.use_directory(None)
    yield
    metrics.use_directory(None)


class App:
    def __init__(self, tmp_path: Path) -> None:
        self.core = Core(metrics.TimedStorage(FileStorage(str(tmp_path))), SharedSealState.create(lock_memory=False),
                         CoreSettings(storage_type="file"))
        _, self.root = dev_bootstrap(self.core)
        self.app = create_app(self.core)
        self.client = self.app.test_client()

    def prometheus(self) -> list[Any]:
        self.app.config[ACCESS_CONFIG_KEY] = MetricsAccess(prometheus=True)
        response = self.client.get("/v1/sys/metrics?format=prometheus", headers={"X-Vault-Token": self.root})
        assert response.status_code == 200, response.get_data(as_text=True)
        assert response.content_type == metrics.PROMETHEUS_CONTENT_TYPE
        return list(text_string_to_metric_families(response.get_data(as_text=True)))


@pytest.fixture
def app(tmp_path: Path, single_process: None) -> App:
    return App(tmp_path)


def test_route_classes_are_bounded() -> None:
    assert metrics.route_class("/v1/sys/health") == "sys"
    assert metrics.route_class("/v1/auth/token/lookup-self") == "auth"
    assert metrics.route_class("/v1/secret/data/anything/at/all") == "secret"
    assert metrics.route_class("/favicon.ico") == "other"


def test_fast_path_and_flask_answers_are_both_counted(app: App) -> None:
    before = app.prometheus()
    token = {"X-Vault-Token": app.root}
    assert app.client.get("/v1/secret/data/missing", headers=token).status_code == 404  # fast path
    assert app.client.get("/v1/secret/data/missing?version=1", headers=token).status_code == 404  # Flask
    assert app.client.open("/v1/secret/metadata", method="LIST", headers=token).status_code == 404
    assert app.client.open("/v1/sys/health", method="BREW").status_code == 405
    after = app.prometheus()
    for method, route, code, grew in (("GET", "secret", "404", 2), ("LIST", "secret", "404", 1),
                                      ("other", "sys", "405", 1), ("GET", "sys", "200", 1)):
        name = "vaultd_http_requests_total"
        delta = _value(after, name, method=method, route=route, code=code) - _value(
            before, name, method=method, route=route, code=code)
        assert delta == grew, (method, route, code)
    histogram = "vaultd_http_request_duration_seconds_count"
    assert _value(after, histogram, method="GET", route="secret", code="404") - _value(
        before, histogram, method="GET", route="secret", code="404") == 2


def test_storage_operations_are_timed_and_extras_pass_through(tmp_path: Path, single_process: None) -> None:
    backend = SqliteStorage(str(tmp_path / "db"))
    timed = metrics.TimedStorage(backend)
    timed.transaction([Put("a", b"1"), Put("b", b"2")])
    assert timed.get("a") == b"1"
    assert timed.list("") == ["a", "b"]
    timed.delete("a")
    assert list(timed.keys()) == ["b"]
    assert timed.backup_to == backend.backup_to  # snapshots reach the backend through the wrapper
    families = metrics.scrape()
    for operation in ("transaction", "get", "list", "delete"):
        assert _value(families, "vaultd_storage_operation_duration_seconds_count", operation=operation) >= 1


def test_metrics_need_a_token_with_read_on_sys_metrics(app: App) -> None:
    assert app.client.get("/v1/sys/metrics").status_code == 403
    reader = app.core.tokens.create(app.core.authenticate(app.root), {"policies": ["default"]})[0]
    assert app.client.get("/v1/sys/metrics", headers={"X-Vault-Token": reader}).status_code == 403
    assert app.client.get("/v1/sys/metrics", headers={"X-Vault-Token": app.root}).status_code == 200
    assert app.client.post("/v1/sys/metrics", headers={"X-Vault-Token": app.root}).status_code == 405


def test_sealed_server_answers_503(app: App) -> None:
    app.core.seal(app.root)
    response = app.client.get("/v1/sys/metrics", headers={"X-Vault-Token": app.root})
    assert response.status_code == 503


def test_formats_as_vault_answers_them(app: App) -> None:
    token = {"X-Vault-Token": app.root}
    disabled = app.client.get("/v1/sys/metrics?format=prometheus", headers=token)
    assert (disabled.status_code, disabled.content_type, disabled.get_data(as_text=True)) == (
        400, "text/plain", "prometheus is not enabled")
    unknown = app.client.get("/v1/sys/metrics?format=xml", headers=token)
    assert (unknown.status_code, unknown.get_data(as_text=True)) == (400, 'metric response format "xml" unknown')
    app.app.config[ACCESS_CONFIG_KEY] = MetricsAccess(prometheus=True)
    by_accept = app.client.get("/v1/sys/metrics", headers={**token, "Accept": "application/openmetrics-text"})
    assert by_accept.content_type == metrics.PROMETHEUS_CONTENT_TYPE
    body = app.client.get("/v1/sys/metrics", headers=token).get_json()
    assert set(body) == {"Timestamp", "Gauges", "Points", "Counters", "Samples"}
    gauges = {g["Name"]: g["Value"] for g in body["Gauges"]}
    assert gauges["vaultd.core.unsealed"] == 1.0
    assert gauges["vaultd.token.count"] >= 1
    assert gauges["vaultd.core.unsealed.duration"] >= 0


def test_json_summary_of_a_histogram_is_in_milliseconds(single_process: None) -> None:
    metrics.instruments().request_done("GET", "sys", "200", 0.25)
    metrics.instruments().request_done("GET", "sys", "200", 0.75)
    summary = metrics.json_summary(metrics.scrape(), now=1_700_000_007.5)
    assert summary["Timestamp"] == "2023-11-14 22:13:20 +0000 UTC"
    sample = next(s for s in summary["Samples"] if s["Name"] == "vaultd.http.request.duration"
                  and s["Labels"] == {"method": "GET", "route": "sys", "code": "200"})
    assert (sample["Count"], sample["Sum"], sample["Mean"]) == (2, 1000.0, 500.0)


def _count_in_child(n: int) -> None:
    for _ in range(n):
        metrics.instruments().request_done("GET", "secret", "200", 0.001)


def test_counts_sum_over_processes_and_outlive_them(tmp_path: Path, single_process: None) -> None:
    directory = metrics.prepare_directory(str(tmp_path))
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    assert os.listdir(directory) == []
    context = multiprocessing.get_context("fork")
    children = [context.Process(target=_count_in_child, args=(n,)) for n in (3, 4)]
    for child in children:
        child.start()
    for child in children:
        child.join(30)
        assert child.exitcode == 0
        metrics.worker_exited(child.pid or 0)
    _count_in_child(5)
    families = metrics.scrape()
    assert _value(families, "vaultd_http_requests_total", method="GET", route="secret", code="200") == 12
    parsed = list(text_string_to_metric_families(metrics.prometheus_text(families).decode()))
    assert _value(parsed, "vaultd_http_requests_total", method="GET", route="secret", code="200") == 12
    assert _value(parsed, "vaultd_http_request_duration_seconds_bucket", method="GET", route="secret", code="200",
                  le="0.001") == 12


def test_a_new_master_empties_its_directory_and_prunes_dead_ones(tmp_path: Path, single_process: None) -> None:
    dead = tmp_path / f"{metrics.DIR_PREFIX}999999999"
    dead.mkdir()
    mine = tmp_path / f"{metrics.DIR_PREFIX}{os.getpid()}"
    mine.mkdir()
    (mine / "counter_1.db").write_bytes(b"stale")
    assert metrics.prepare_directory(str(tmp_path)) == str(mine)
    assert not dead.exists() and os.listdir(mine) == []


def test_runtime_base_follows_systemd_then_the_login_session() -> None:
    assert metrics.runtime_base({"RUNTIME_DIRECTORY": "/run/vaultd", "XDG_RUNTIME_DIR": "/run/user/1"}) == "/run/vaultd"
    assert metrics.runtime_base({"XDG_RUNTIME_DIR": "/run/user/1"}) == "/run/user/1"


def test_telemetry_config_as_vault_reads_it() -> None:
    base = 'storage "inmem" {}\nlistener "tcp" {\n address = "127.0.0.1:8200"\n tls_disable = 1\n%s}\n%s'
    none = parse_config(base % ("", ""))
    assert none.telemetry.prometheus_retention_time == 0  # no block: Vault serves no Prometheus text
    assert MetricsAccess.from_config(none) == MetricsAccess(prometheus=False)
    block = parse_config(base % ("", 'telemetry {\n disable_hostname = true\n}\n'))
    assert block.telemetry.prometheus_retention_time == PROMETHEUS_DEFAULT_RETENTION
    assert block.telemetry.disable_hostname is True
    off = parse_config(base % ("", 'telemetry {\n prometheus_retention_time = "0s"\n}\n'))
    assert off.telemetry.prometheus_retention_time == 0
    opened = parse_config(base % (" telemetry {\n unauthenticated_metrics_access = \"true\"\n }\n",
                                  'telemetry {\n prometheus_retention_time = "12h"\n}\n'))
    assert MetricsAccess.from_config(opened) == MetricsAccess(True, (("127.0.0.1", 8200),))
    with pytest.raises(ConfigError, match="unauthenticated_metrics_access"):
        parse_config(base % (" telemetry {\n unauthenticated_metrics_access = \"maybe\"\n }\n", ""))


def test_open_listener_judged_by_the_arrival_socket() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)), listener.accept()[0] as accepted:
            assert MetricsAccess(True, (("127.0.0.1", port),)).is_open({"gunicorn.socket": accepted})
            assert MetricsAccess(True, (("0.0.0.0", port),)).is_open({"gunicorn.socket": accepted})
            assert not MetricsAccess(True, (("127.0.0.1", port + 1),)).is_open({"gunicorn.socket": accepted})
    assert not MetricsAccess(True, (("127.0.0.1", 8200),)).is_open({"HTTP_HOST": "127.0.0.1:8200"})


def test_audit_entries_are_counted_per_device(single_process: None) -> None:
    current = metrics.instruments()
    for written in (True, True, False):
        current.audit_entry("file/", written=written)
    current.audit_entry("syslog/", written=True)
    families = metrics.scrape()
    assert _value(families, "vaultd_audit_entries_total", device="file/") == 2
    assert _value(families, "vaultd_audit_entries_failed_total", device="file/") == 1
    assert _value(families, "vaultd_audit_entries_total", device="syslog/") == 1
