"""Running wrk and reading its report.

wrk is an event-loop load generator in C: unlike a Python client it can
offer more load than a 2-core server absorbs, so the numbers are the
server's, not the client's.  Its plain-text report is parsed rather than a
Lua ``done()`` hook, so the scripts stay one-liners anyone can read.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

LUA_DIR = Path(__file__).resolve().parent / "lua"

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_TIME = r"([\d.]+)(us|ms|s|m|h)"


class WrkError(RuntimeError):
    """wrk failed or printed a report this module cannot read."""


@dataclass(frozen=True)
class WrkResult:
    """One run.  Latencies in seconds; ``errors`` are socket errors (connect,
    read, write, timeout) and ``non_2xx`` responses with status >= 400."""

    requests: int
    duration: float
    requests_per_second: float
    p50: float
    p99: float
    non_2xx: int
    errors: int

    def to_json(self) -> dict[str, float | int]:
        return asdict(self)


def _seconds(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit]


def parse(report: str) -> WrkResult:
    """Read wrk's ``--latency`` report."""

    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, report, re.MULTILINE)
        if match is None:
            raise WrkError(f"no {pattern!r} in wrk's report:\n{report}")
        return match

    totals = find(r"^\s*(\d+) requests in " + _TIME)
    p50 = find(r"^\s*50(?:\.0+)?%\s+" + _TIME)
    p99 = find(r"^\s*99(?:\.0+)?%\s+" + _TIME)
    rate = find(r"^Requests/sec:\s+([\d.]+)")
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", report)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", report)
    return WrkResult(
        requests=int(totals.group(1)),
        duration=_seconds(totals.group(2), totals.group(3)),
        requests_per_second=float(rate.group(1)),
        p50=_seconds(p50.group(1), p50.group(2)),
        p99=_seconds(p99.group(1), p99.group(2)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        errors=sum(int(n) for n in sockets.groups()) if sockets else 0,
    )


def binary() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise WrkError("wrk is not installed (apt-get install wrk; `make bench` does it)")
    return path


def version() -> str:
    """wrk prints its version with the usage text, on stdout, exit status 1."""
    out = subprocess.run([binary(), "-v"], capture_output=True, text=True, timeout=10, check=False)
    first = (out.stdout or out.stderr).splitlines()
    return first[0].split(" Copyright")[0].strip() if first else "unknown"


def run(
    url: str,
    script: str,
    *,
    connections: int,
    duration: float,
    threads: int,
    token: str,
    extra_env: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> WrkResult:
    """Load ``url`` with ``lua/<script>`` for ``duration`` seconds.

    The token travels in the environment (read by the script), never on
    the command line.  ``timeout`` is wrk's per-request timeout: responses
    slower than that count as socket errors, which the report shows.
    """
    env = dict(os.environ, BENCH_TOKEN=token, **(extra_env or {}))
    command = [
        binary(),
        f"--threads={threads}",
        f"--connections={connections}",
        f"--duration={max(1, round(duration))}s",
        f"--timeout={max(1, round(timeout))}s",
        "--latency",
        f"--script={LUA_DIR / script}",
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=duration + 60, check=False)
    if done.returncode != 0:
        raise WrkError(f"wrk exited with {done.returncode}: {done.stderr.strip() or done.stdout.strip()}")
    return parse(done.stdout)
