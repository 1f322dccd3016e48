"""The benchmark harness's own arithmetic: reading wrk's report, the ratio
column, and finding a server's processes.  A wrong parse would put a wrong
number in the table without any error, so it is pinned here."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench import procs, report, wrk

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


def test_summary_and_markdown_carry_both_servers() -> None:
    values = {"kv_read.rps": {"vaultd": [900.0, 1000.0, 1100.0], "openbao": [1000.0, 1000.0, 1000.0]}}
    summary = report.summarise(values)
    assert summary["kv_read.rps"]["vaultd"] == {"median": 1000.0, "min": 900.0, "max": 1100.0}
    facts = {
        "date": "d", "cores": 2, "cpu_model": "cpu", "kernel": "k", "vaultd_version": "v", "vaultd_workers": 2,
        "vaultd_threads": 8, "python": "3", "flask": "f", "gunicorn": "g", "openbao_version": "o",
        "wrk_version": "w", "wrk_threads": 2, "duration_seconds": 6, "rounds": 3, "restarts": 10,
    }
    text = report.markdown(summary, facts, ["a note"])
    assert "| 1. KV v2 read, one secret, 64 conn: req/s | 1,000 (900-1,100) | 1,000 (1,000-1,000) | 1.00" in text
    assert "- a note" in text


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
