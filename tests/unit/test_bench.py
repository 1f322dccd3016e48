"""The benchmark harness's own arithmetic: reading wrk's report, the ratio
column, the table's shape, streaming a snapshot, and finding a server's
processes.  A wrong parse would put a wrong number in the table without any
error, so it is pinned here."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from bench import procs, report, run, servers, wrk

# A real report of wrk 4.1.0 (Debian bookworm) against a server answering 404.
REPORT_404 = """\
Running 1s test @ http://127.0.0.1:18555/nonexistent
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.56ms    2.36ms  22.13ms   89.48%
    Req/Sec     0.87k   188.43     1.15k    70.00%
  Latency Distribution
     50%    1.77ms
     75%    2.92ms
     90%    5.04ms
     99%   12.86ms
  864 requests in 1.00s, 438.93KB read
  Non-2xx or 3xx responses: 864
Requests/sec:    863.35
Transfer/sec:    438.60KB
"""

REPORT_SLOW = """\
Running 6s test @ http://127.0.0.1:8200/v1/secret/data/bench/write
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   812.40us    1.20s    4.99s    91.00%
    Req/Sec    40.10     12.00    70.00     66.00%
  Latency Distribution
     50%  812.00us
     75%  300.00ms
     90%    1.10s
     99%    2.50m
  480 requests in 6.01s, 200.00KB read
  Socket errors: connect 0, read 2, write 0, timeout 7
Requests/sec:     79.87
Transfer/sec:     33.28KB
"""


def test_parse_reads_counts_rate_and_percentiles() -> None:
    result = wrk.parse(REPORT_404)
    assert result.requests == 864
    assert result.duration == pytest.approx(1.0)
    assert result.requests_per_second == pytest.approx(863.35)
    assert result.p50 == pytest.approx(1.77e-3)
    assert result.p99 == pytest.approx(12.86e-3)
    assert result.non_2xx == 864
    assert result.errors == 0


def test_parse_converts_every_time_unit_and_sums_socket_errors() -> None:
    result = wrk.parse(REPORT_SLOW)
    assert result.p50 == pytest.approx(812e-6)
    assert result.p99 == pytest.approx(150.0)
    assert result.duration == pytest.approx(6.01)
    assert result.errors == 9
    assert result.non_2xx == 0


def test_parse_refuses_a_report_without_latency_distribution() -> None:
    without = "\n".join(line for line in REPORT_404.splitlines() if "%" not in line or "Stdev" in line)
    with pytest.raises(wrk.WrkError):
        wrk.parse(without)


def test_ratio_is_of_medians_and_spread_is_per_round() -> None:
    ratio, spread = report.ratios([100.0, 300.0, 200.0], [200.0, 200.0, 100.0])
    assert ratio == pytest.approx(1.0)
    assert (spread.low, spread.median, spread.high) == pytest.approx((0.5, 1.5, 2.0))


def test_targets_depend_on_direction() -> None:
    rps = next(m for m in report.METRICS if m.key == "kv_read.rps")
    p99 = next(m for m in report.METRICS if m.key == "kv_read.p99")
    assert report.target_text(rps, 1.1).endswith(" met")
    assert "NOT" in report.target_text(rps, 0.9)
    assert report.target_text(p99, 0.9).endswith(" met")
    assert "NOT" in report.target_text(p99, 1.1)


FACTS = {
    "date": "d", "cores": 2, "cpu_model": "cpu", "kernel": "k", "vaultd_version": "v", "vaultd_workers": 2,
    "vaultd_threads": 8, "python": "3", "flask": "f", "gunicorn": "g", "openbao_version": "o",
    "wrk_version": "w", "wrk_threads": 2, "duration_seconds": 6, "rounds": 3, "restarts": 10,
}


def test_summary_and_markdown_carry_both_servers() -> None:
    values = {"kv_read.rps": {"vaultd": [900.0, 1000.0, 1100.0], "openbao": [1000.0, 1000.0, 1000.0]}}
    summary = report.summarise(values)
    assert summary["kv_read.rps"]["vaultd"] == {"median": 1000.0, "min": 900.0, "max": 1100.0}
    text = report.markdown(summary, FACTS, ["a note"])
    assert "| 1. KV v2 read, one secret, 64 conn: req/s | 1,000 (900-1,100) | 1,000 (1,000-1,000) | 1.00" in text
    assert "- a note" in text


def _table(text: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("|")]


def test_header_names_each_vaultd_backend_without_the_comparison() -> None:
    summary = report.summarise({"kv_read.rps": {"vaultd": [1.0], "openbao": [1.0]}})
    header = _table(report.markdown(summary, {**FACTS, "vaultd_storage": "sqlite"}, []))[0]
    assert header == ["scenario", "vaultd (sqlite)", "OpenBao (raft)", "sqlite / OpenBao", "target"]


def test_file_comparison_gets_its_own_columns_and_ratio() -> None:
    values = {
        "kv_write.rps": {"vaultd": [400.0, 500.0, 450.0], "openbao": [500.0, 500.0, 500.0],
                         "vaultd_file": [200.0, 250.0, 300.0]},
        # 1b is not run on file: its file cells are empty, not zero.
        "kv_read_policy.rps": {"vaultd": [3000.0], "openbao": [1500.0]},
        "snapshot.seconds": {"vaultd": [0.2, 0.3, 0.25], "openbao": [0.5, 0.5, 0.5], "vaultd_file": [1.0, 1.5, 2.0]},
        "snapshot.size": {"vaultd": [4.5, 4.5, 4.5], "openbao": [2.25, 2.25, 2.25], "vaultd_file": [4.5, 4.5, 4.5]},
        # Only the comparison measured: no row (the targets need vaultd and OpenBao).
        "token_lookup.rps": {"vaultd_file": [1.0], "openbao": [1.0]},
    }
    summary = report.summarise(values, secrets=10_000)
    write = summary["kv_write.rps"]
    assert write["vaultd_file"] == {"median": 250.0, "min": 200.0, "max": 300.0}
    assert write["compare_ratio"] == pytest.approx(0.5)
    assert (write["compare_ratio_rounds"]["min"], write["compare_ratio_rounds"]["max"]) == pytest.approx((0.4, 0.6))
    assert write["ratio"] == pytest.approx(0.9)  # the default backend's ratio is untouched by the comparison
    assert "NOT met" in write["target"]
    assert "vaultd_file" not in summary["kv_read_policy.rps"]
    assert "token_lookup.rps" not in summary

    text = report.markdown(summary, {**FACTS, "vaultd_storage": "sqlite", "vaultd_compare_storage": "file",
                                     "snapshots": 3}, [])
    rows = {row[0]: row for row in _table(text)}
    assert rows["scenario"] == ["scenario", "vaultd (sqlite)", "vaultd (file)", "OpenBao (raft)", "sqlite / OpenBao",
                                "file / OpenBao", "target (sqlite)"]
    assert rows["2. KV v2 write, new version, 16 conn: req/s"][1:] == [
        "450 (400-500)", "250 (200-300)", "500 (500-500)", "0.90 (0.80-1.00)", "0.50 (0.40-0.60)", "≥ 1.0 NOT met"]
    assert rows["1b. the same with a non-root token, 20 policy rules: req/s"][2] == report.MISSING
    assert rows["1b. the same with a non-root token, 20 policy rules: req/s"][5] == report.MISSING
    snapshot = rows["7. online snapshot of 10,000 secrets, streamed to a file (s)"]
    assert snapshot[1:6] == ["0.25 (0.20-0.30)", "1.50 (1.00-2.00)", "0.50 (0.50-0.50)", "0.50 (0.40-0.60)",
                             "3.00 (2.00-4.00)"]
    assert rows["its size (MiB)"][1:4] == ["4.50 (4.50-4.50)", "4.50 (4.50-4.50)", "2.25 (2.25-2.25)"]
    assert "vaultd v on sqlite, and on file for comparison" in text
    assert "snapshots: 3 each" in text


def test_audited_read_is_the_last_row_and_has_a_target() -> None:
    values = {
        "kv_read.rps": {"vaultd": [1000.0], "openbao": [1000.0]},
        "kv_read_audit.rps": {"vaultd": [450.0, 500.0, 550.0], "openbao": [400.0, 500.0, 500.0]},
        "kv_read_audit.p99": {"vaultd": [30.0], "openbao": [20.0]},
    }
    summary = report.summarise(values)
    assert summary["kv_read_audit.rps"]["target"] == "≥ 1.0 met"
    assert summary["kv_read_audit.p99"]["target"] is None
    rows = _table(report.markdown(summary, FACTS, []))
    assert rows[-2][0] == "8. KV v2 read, one secret, one file audit device, 64 conn: req/s"
    assert rows[-2][1:] == ["500 (450-550)", "500 (400-500)", "1.00 (1.00-1.12)", "≥ 1.0 met"]
    assert rows[-1][0] == "8. KV v2 read, one secret, one file audit device, 64 conn: p99 (ms)"


def test_audited_read_reads_what_scenario_one_reads() -> None:
    plain = next(load for load in run.loads(10) if load.key == "kv_read")
    assert (run.AUDITED.path, run.AUDITED.script, run.AUDITED.connections, run.AUDITED.app_token) == (
        plain.path, plain.script, plain.connections, plain.app_token)
    assert run.AUDITED.key not in {load.key for load in run.loads(10)}


def test_openbao_declares_its_audit_device_only_while_enabled(tmp_path: Path) -> None:
    bao = servers.OpenBao(tmp_path, tmp_path / "logs")
    assert "audit" not in bao.config_text()
    bao.audit_file = tmp_path / "audit" / "openbao.log"
    text = bao.config_text()
    assert f'audit "file" "{servers.AUDIT_PATH}" {{' in text
    assert f'file_path = "{bao.audit_file}"' in text
    assert text.startswith(servers.OPENBAO_CONFIG.split("{", 1)[0])


@pytest.fixture()
def openbao(tmp_path: Path) -> Iterator[servers.OpenBao]:
    logs = servers.private_dir(tmp_path / "logs")
    bao = servers.OpenBao(tmp_path, logs)
    try:
        bao.start()
        yield bao
    finally:
        bao.close()


def test_openbao_audit_device_comes_and_goes_with_its_config_on_sighup(
    openbao: servers.OpenBao, tmp_path: Path
) -> None:
    """The real OpenBao 2.x: the declared device is enabled by SIGHUP and
    writes a request and a response entry per read; removed, it writes no more."""
    log = tmp_path / "audit" / "openbao.log"
    servers.private_dir(log.parent)
    openbao.enable_file_audit(log)
    openbao.call("GET", "secret/data/bench/one")
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    reads = [e for e in entries if e.get("request", {}).get("path") == "secret/data/bench/one"]
    assert [e["type"] for e in reads] == ["request", "response"]
    openbao.disable_audit()
    size = log.stat().st_size
    openbao.call("GET", "secret/data/bench/one")
    assert log.stat().st_size == size


def test_labels_name_the_secrets_actually_written() -> None:
    summary = report.summarise({"kv_read_many.rps": {"vaultd": [1.0], "openbao": [1.0]}}, secrets=500)
    assert summary["kv_read_many.rps"]["label"] == "3. KV v2 read, 500 secrets at random, 64 conn: req/s"


def test_memory_keeps_whole_mib_and_small_snapshots_keep_digits() -> None:
    assert report._number(149.4, "MiB") == "149"
    assert report._number(12.34, "MiB") == "12.3"
    assert report._number(0.123, "MiB") == "0.12"


def test_file_vaultd_runs_beside_the_default_with_its_own_state_and_logs(tmp_path: Path) -> None:
    default = servers.Vaultd(tmp_path, tmp_path / "logs")
    other = servers.Vaultd(tmp_path, tmp_path / "logs", storage="file")
    assert (default.key, default.name) == ("vaultd", "vaultd (sqlite)")
    assert (other.key, other.name) == (report.COMPARE, "vaultd (file)")
    assert default.state != other.state and default.port != other.port
    assert not set(default.log_files()) & set(other.log_files())
    assert not run.is_comparison(default) and run.is_comparison(other)
    only_default = [load.key for load in run.loads(10) if not run.runs(other, load)]
    assert only_default == ["kv_read_policy", "token_lookup"]
    assert all(run.runs(default, load) for load in run.loads(10))


def test_a_vaultd_sharing_a_kms_needs_the_owner_started_first(tmp_path: Path) -> None:
    owner = servers.Vaultd(tmp_path, tmp_path / "logs")
    sharer = servers.Vaultd(tmp_path, tmp_path / "logs", storage="file", kms_of=owner)
    with pytest.raises(servers.ServerError, match="start that one first"):
        sharer.start()
    assert sharer.daemon is None and sharer.kms is None


def test_no_file_flag_and_snapshot_takes() -> None:
    assert run.parse_args([]).no_file is False
    assert run.parse_args(["--no-file"]).no_file is True
    assert run.parse_args([]).snapshots == 3
    with pytest.raises(SystemExit):
        run.parse_args(["--snapshots", "0"])


class _SnapshotHandler(http.server.BaseHTTPRequestHandler):
    body = os.urandom(3 * 1024 * 1024 + 17)

    def do_GET(self) -> None:
        if self.headers.get("X-Vault-Token") != "root":
            self.send_response(403)
            self.send_header("Content-Length", "26")
            self.end_headers()
            self.wfile.write(b'{"errors":["denied"]}     ')
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        for start in range(0, len(self.body), 65536):
            self.wfile.write(self.body[start:start + 65536])

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture()
def snapshot_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SnapshotHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/{servers.SNAPSHOT_PATH}"
    finally:
        server.shutdown()
        server.server_close()


def test_snapshot_is_streamed_to_a_private_file_byte_for_byte(snapshot_server: str, tmp_path: Path) -> None:
    session = requests.Session()
    session.headers["X-Vault-Token"] = "root"
    target = tmp_path / "bench.snap"
    assert servers.stream_to_file(session, snapshot_server, target, chunk=100_000) == len(_SnapshotHandler.body)
    assert target.read_bytes() == _SnapshotHandler.body
    assert target.stat().st_mode & 0o777 == 0o600


def test_a_refused_snapshot_is_an_error_not_a_tiny_snapshot(snapshot_server: str, tmp_path: Path) -> None:
    with pytest.raises(servers.ServerError, match="403"):
        servers.stream_to_file(requests.Session(), snapshot_server, tmp_path / "bench.snap")


def test_memory_covers_children_of_a_root() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time; "
         "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); "
         "print(p.pid, flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None
        grandchild = int(child.stdout.readline())
        assert procs.descendants([child.pid]) == sorted([child.pid, grandchild])
        both = procs.measure([child.pid])
        alone = procs.measure([grandchild])
        assert both.processes == 2 and alone.processes == 1
        assert both.rss > alone.rss > 0
    finally:
        for pid in procs.descendants([child.pid])[::-1]:
            os.kill(pid, 9)
        child.wait(timeout=10)


def test_descendants_ignores_dead_roots() -> None:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    assert procs.descendants([int(done.stdout)]) == []


# --- scenario 9: HA on PostgreSQL ------------------------------------------------------------


def test_ha_rows_sit_beside_openbaos_scenarios_one_and_two() -> None:
    values = {
        "ha_write.rps": {"ha_active": [300.0, 400.0], "ha_standby": [2000.0, 2200.0]},
        "ha_read.rps": {"ha_active": [3000.0]},  # the standby's cell may be missing
        "kv_write.rps": {"vaultd": [1.0], "openbao": [500.0, 700.0]},
        "kv_read.rps": {"vaultd": [1.0], "openbao": [9000.0]},
    }
    summary = report.summarise_ha(values)
    assert summary["rows"]["ha_write.rps"]["ha_active"] == {"median": 350.0, "min": 300.0, "max": 400.0}
    assert summary["rows"]["ha_read.rps"]["ha_standby"] is None
    assert summary["failover"] is None
    rows = _table("\n".join(report.ha_markdown(summary)))
    assert rows[0] == ["scenario", "through the active node", "sent to a standby: its 307 answer",
                       "OpenBao (raft, 1 node)"]
    assert ["KV v2 write, new version, 16 conn: req/s", "350 (300-400)", "2,100 (2,000-2,200)",
            "600 (500-700)"] in rows
    assert ["KV v2 read, one secret, 64 conn: req/s", "3,000 (3,000-3,000)", report.MISSING,
            "9,000 (9,000-9,000)"] in rows


def test_failover_target_is_judged_on_every_takeover() -> None:
    assert report.failover_target([1.0, 4.9, 2.0]) == "< 5 s met"
    assert report.failover_target([1.0, 2.0, 6.0]) == "< 5 s met by the median, NOT by the slowest"
    assert report.failover_target([5.0, 6.0, 1.0]) == "< 5 s NOT met"
    summary = report.summarise_ha({"ha_failover.seconds": {"ha": [4.1, 4.3, 3.9, 4.2]}})
    assert summary["failover"]["count"] == 4
    assert summary["failover"]["median"] == pytest.approx(4.15)
    text = report.markdown(report.summarise({}), FACTS, [], summary)
    assert "## HA: 3 vaultd nodes on one local PostgreSQL" in text
    assert "| 4.15 (3.90-4.30) | 4 | < 5 s met |" in text
    assert "Shamir seals" in text and "307 answer" in text


def test_no_ha_section_without_ha_numbers() -> None:
    empty = report.summarise_ha({})
    assert empty == {"rows": {}, "failover": None}
    assert "## HA" not in report.markdown(report.summarise({}), FACTS, [], empty)
    assert "## HA" not in report.markdown(report.summarise({}), FACTS, [])


def test_no_ha_flag_and_failover_count() -> None:
    assert run.parse_args([]).ha is True
    assert run.parse_args(["--no-ha"]).ha is False
    assert run.parse_args([]).failovers == 10
    with pytest.raises(SystemExit):
        run.parse_args(["--failovers", "0"])


def test_ha_node_config_is_an_ha_postgresql_node_for_vaultd(tmp_path: Path) -> None:
    from bench import ha
    from vaultd.config import parse_config

    node = ha.HaNode(tmp_path, tmp_path, 2, "postgresql://postgres@127.0.0.1:5999/bench")
    assert node.key == "ha_node2" and node.state == tmp_path / "ha_node2"
    assert oct(node.state.stat().st_mode & 0o777) == "0o700"
    config = parse_config(node.config_text())
    assert config.ha_enabled
    assert config.storage.options["connection_url"] == node.pg_url
    assert config.api_addr == node.url  # where its standbys' 307s point
    assert node.daemon_command()[-2:] == ["--config", str(node.config)]


def test_ha_loads_are_scenarios_one_and_two() -> None:
    by_key = {load.key: load for load in run.loads(10)}
    pairs = {"ha_write": by_key["kv_write"], "ha_read": by_key["kv_read"]}
    for load in run.HA_LOADS:
        same = pairs[load.key]
        assert (load.path, load.script, load.connections) == (same.path, same.script, same.connections)
