"""``make bench``: vaultd against OpenBao, side by side, in one run.

The servers run at once on loopback (each idle while another is loaded),
set up as in production: durable storage, an auto seal, a root token:
vaultd on ``sqlite`` (the default), OpenBao on ``raft``, and, for
comparison, a second vaultd on ``file`` (``--no-file`` leaves it out).
Every scenario runs for each server in turn, round after round (A B C A B
C …), so that drift on the machine (page cache, thermal, noisy neighbours)
lands on all alike.  vaultd on ``file`` runs scenarios 1-3 and 7 only, to
keep the run short:

1. KV v2 read of one secret, 64 connections: req/s, p50, p99; and the same
   read with a non-root token whose policy holds 20 rules (1b).
2. KV v2 write, a new version of one secret each time, 16 connections.
3. KV v2 read of 10,000 pre-written secrets, one picked at random per request.
4. ``auth/token/lookup-self``.
5. Restart to unsealed: exec of a fresh daemon to its first ``sys/health``
   200, with vaultd's agent already running and OpenBao's static seal.
6. Resident memory of all of a server's processes: idle after 1-4, and the
   peak while scenario 1 runs.
7. Online snapshot of the 10,000 secrets (``GET sys/storage/raft/snapshot``
   streamed to a file), right after the prefill: seconds and size.
8. Scenario 1 again with one ``file`` audit device enabled on each server
   (vaultd's through ``sys/audit``, OpenBao's declared in its config file and
   applied by SIGHUP, as OpenBao 2.x requires), both logs in the work
   directory; run after 1-4 and the idle memory, and the devices removed
   before the restarts, so that no other number pays for the audit.
9. HA (``--no-ha`` leaves it out; skipped with a note when PostgreSQL is not
   installed): three vaultd nodes on a local PostgreSQL, after the other
   servers have stopped: scenarios 1 and 2 through the active node and sent
   to a standby (its 307 answer), beside OpenBao's raft numbers of 1 and 2;
   and failover time over ``--failovers`` kills of the active node
   (:mod:`bench.ha`).

The table goes to stdout and ``bench/results/latest.md``; every round's raw
numbers and the machine's facts to ``bench/results/latest.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bench import ha, procs, report, wrk
from bench.servers import AUDIT_PATH, OpenBao, Server, ServerError, Vaultd, private_dir

HERE = Path(__file__).resolve().parent
MANY_PREFIX = "bench/many/"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Load:
    """A wrk scenario: which script, against which path, how many connections."""

    key: str
    title: str
    path: str
    script: str
    connections: int
    env: dict[str, str] = field(default_factory=dict)
    app_token: bool = False
    """Read with a non-root token whose policy holds 20 rules, not root."""
    compare: bool = False
    """Also run on vaultd's comparison backend (``file``)."""


def loads(secrets: int) -> list[Load]:
    return [
        Load("kv_read", "KV v2 read, one secret", "secret/data/bench/one", "read.lua", 64, compare=True),
        Load("kv_read_policy", "KV v2 read, 20-rule policy", "secret/data/bench/one", "read.lua", 64,
             app_token=True),
        Load("kv_write", "KV v2 write", "secret/data/bench/write", "write.lua", 16, compare=True),
        Load(
            "kv_read_many", f"KV v2 read, {secrets:,} secrets", f"secret/data/{MANY_PREFIX}0", "random_read.lua", 64,
            env={"BENCH_PREFIX": f"/v1/secret/data/{MANY_PREFIX}", "BENCH_COUNT": str(secrets)}, compare=True,
        ),
        Load("token_lookup", "token lookup-self", "auth/token/lookup-self", "read.lua", 64),
    ]


HA_LOADS = (
    Load("ha_write", "HA KV v2 write", "secret/data/bench/write", "write.lua", 16),
    Load("ha_read", "HA KV v2 read, one secret", "secret/data/bench/one", "read.lua", 64),
)
"""Scenario 9: scenarios 2 and 1 on the HA cluster (write first: a fresh
secret's versions do not pile up under the read)."""


class Named(Protocol):
    """What results are filed under: a server, or one role in the HA cluster."""

    @property
    def key(self) -> str: ...

    @property
    def name(self) -> str: ...


@dataclass(frozen=True)
class Role:
    """An HA node measured in a role (``ha_active``, ``ha_standby``)."""

    key: str
    name: str


AUDITED = Load("kv_read_audit", "KV v2 read, file audit", "secret/data/bench/one", "read.lua", 64)
"""Scenario 8: scenario 1 while one file audit device is enabled."""


_started = time.monotonic()


def is_comparison(server: Server) -> bool:
    """vaultd on a backend other than the default: measured for the table's
    comparison column, not for the targets."""
    return isinstance(server, Vaultd) and server.storage != Vaultd.DEFAULT_STORAGE


def runs(server: Server, load: Load) -> bool:
    return load.compare or not is_comparison(server)


def say(message: str) -> None:
    """Progress on stderr, so stdout carries only the table."""
    print(f"[{time.monotonic() - _started:6.1f}s] {message}", file=sys.stderr, flush=True)


class Results:
    """Per-round values, per metric and server, plus the raw wrk runs."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, list[float]]] = {}
        self.runs: list[dict[str, Any]] = []
        self.notes: list[str] = []

    def add(self, metric: str, server: Named, value: float) -> None:
        self.values.setdefault(metric, {}).setdefault(server.key, []).append(value)


def run_load(server: Server, load: Load, args: argparse.Namespace, duration: float) -> wrk.WrkResult:
    return wrk.run(
        f"{server.url}/v1/{load.path}",
        load.script,
        connections=load.connections,
        duration=duration,
        threads=args.wrk_threads,
        token=server.app_token if load.app_token else server.token,
        extra_env=load.env,
    )


def measure_loads(servers: list[Server], args: argparse.Namespace, results: Results) -> None:
    scenarios = loads(args.secrets)
    say(f"warm-up: {args.warmup:.0f} s of each scenario on each server")
    for load in scenarios:
        for server in servers:
            if runs(server, load):
                run_load(server, load, args, args.warmup)
    for round_number in range(1, args.rounds + 1):
        for load in scenarios:
            for server in servers:
                if not runs(server, load):
                    continue
                if load.key == "kv_read":
                    with procs.PeakSampler(server.roots) as sampler:
                        result = run_load(server, load, args, args.duration)
                    results.add("memory.peak_rss", server, sampler.peak_rss / MIB)
                    results.add("memory.peak_pss", server, sampler.peak_pss / MIB)
                else:
                    result = run_load(server, load, args, args.duration)
                record(results, server, load, result, round_number)


def record(results: Results, server: Named, load: Load, result: wrk.WrkResult, round_number: int) -> None:
    """One wrk run into the results, the raw runs and, if it saw errors, the notes."""
    say(
        f"round {round_number} {load.title:<24} {server.name:<15} {result.requests_per_second:9,.0f} req/s"
        f"  p50 {result.p50 * 1e3:7.1f} ms  p99 {result.p99 * 1e3:7.1f} ms"
        + (f"  non-2xx {result.non_2xx}" if result.non_2xx else "")
        + (f"  socket errors {result.errors}" if result.errors else "")
    )
    results.add(f"{load.key}.rps", server, result.requests_per_second)
    results.add(f"{load.key}.p50", server, result.p50 * 1e3)
    results.add(f"{load.key}.p99", server, result.p99 * 1e3)
    results.runs.append({"round": round_number, "scenario": load.key, "server": server.key, **result.to_json()})
    if result.non_2xx or result.errors:
        results.notes.append(
            f"{server.name}, {load.title}, round {round_number}: {result.non_2xx} non-2xx responses "
            f"and {result.errors} socket errors out of {result.requests:,} requests "
            "(req/s counts them)"
        )


def measure_audited(servers: list[Server], args: argparse.Namespace, workdir: Path, results: Results) -> None:
    """Scenario 8 on vaultd (default backend) and OpenBao: each gets one file
    audit device in ``workdir/audit`` (one disk for both), a warm-up, then
    the rounds A B A B…; then the devices go and the logs are removed.  A
    log left empty means the device never wrote: the run fails rather than
    report an unaudited number as an audited one."""
    audit_dir = private_dir(workdir / "audit")
    files = {server.key: audit_dir / f"{server.key}.log" for server in servers}
    for server in servers:
        server.enable_file_audit(files[server.key])
        say(f"{server.name}: file audit device {AUDIT_PATH}/ writing to {files[server.key]}")
    try:
        for server in servers:
            run_load(server, AUDITED, args, args.warmup)
        for round_number in range(1, args.rounds + 1):
            for server in servers:
                result = run_load(server, AUDITED, args, args.duration)
                record(results, server, AUDITED, result, round_number)
        for server in servers:
            size = files[server.key].stat().st_size if files[server.key].exists() else 0
            if not size:
                raise ServerError(f"{server.name}: the audit device wrote nothing to {files[server.key]}")
            say(f"{server.name}: audit log {size / MIB:,.1f} MiB")
    finally:
        for server in servers:
            try:
                server.disable_audit()
            except (ServerError, OSError) as exc:
                say(f"{server.name}: removing the audit device failed: {exc}")
        shutil.rmtree(audit_dir, ignore_errors=True)


def measure_ha(args: argparse.Namespace, workdir: Path, logdir: Path, results: Results) -> None:
    """Scenario 9.  A failure here becomes a note, not the end of a run
    whose other numbers are already in."""
    cluster = ha.HaCluster(workdir, logdir)
    try:
        say("HA: starting PostgreSQL and 3 vaultd nodes (shamir, unsealed over HTTP)")
        cluster.start()
        active, standby = cluster.wait_active(), cluster.standby()
        probe = standby.session().get(f"{standby.url}/v1/secret/data/bench/one", allow_redirects=False, timeout=30)
        if probe.status_code != 307 or not probe.headers.get("Location", "").startswith(active.url):
            raise ServerError(f"the standby answered {probe.status_code}, not a 307 to the active node")
        roles = [(Role("ha_active", "HA active"), active), (Role("ha_standby", "HA standby (307)"), standby)]
        for load in HA_LOADS:
            for _, node in roles:
                run_load(node, load, args, args.warmup)
        for round_number in range(1, args.rounds + 1):
            for load in HA_LOADS:
                for role, node in roles:
                    record(results, role, load, run_load(node, load, args, args.duration), round_number)
        for number in range(1, args.failovers + 1):
            took = cluster.failover()
            results.add("ha_failover.seconds", Role("ha", "HA"), took)
            say(f"failover {number:2d}: a standby answered 200 after {took:.3f} s")
    except (ServerError, wrk.WrkError, RuntimeError, OSError) as exc:
        results.notes.append(f"HA part failed: {str(exc)[:300]}")
        say(f"HA part failed: {exc}")
    finally:
        cluster.close()
        say("HA: stopped the nodes and PostgreSQL")
    for node in cluster.nodes:
        for line in node.findings()[:5]:
            results.notes.append(f"{node.name} logged: `{line[:300]}`")


def measure_idle(servers: list[Server], args: argparse.Namespace, results: Results) -> None:
    say(f"idle memory: {args.idle_settle:.0f} s to settle, then {args.idle_samples} samples")
    time.sleep(args.idle_settle)
    for _ in range(args.idle_samples):
        for server in servers:
            sample = procs.measure(server.roots())
            results.add("memory.idle_rss", server, sample.rss / MIB)
            results.add("memory.idle_pss", server, sample.pss / MIB)
        time.sleep(0.5)
    for server in servers:
        say(f"{server.name}: {procs.measure(server.roots()).processes} processes")


def measure_snapshots(servers: list[Server], args: argparse.Namespace, results: Results) -> None:
    """Scenario 7, A B C per take.  A server whose snapshot fails gets a
    note and no cell, rather than ending a run of many minutes."""
    failed: set[str] = set()
    for number in range(1, args.snapshots + 1):
        for server in servers:
            if server.key in failed:
                continue
            try:
                seconds, size = server.snapshot()
            except (ServerError, OSError) as exc:
                failed.add(server.key)
                results.notes.append(f"{server.name}: no snapshot timed ({str(exc)[:200]})")
                say(f"snapshot {number} {server.name:<15} failed: {exc}")
                continue
            results.add("snapshot.seconds", server, seconds)
            results.add("snapshot.size", server, size / MIB)
            say(f"snapshot {number} {server.name:<15} {seconds:.2f} s, {size / MIB:.2f} MiB")


def measure_restarts(servers: list[Server], args: argparse.Namespace, results: Results) -> None:
    for number in range(1, args.restarts + 1):
        for server in servers:
            listening, unsealed = server.restart_to_unsealed()
            results.add("restart.seconds", server, unsealed)
            results.add("restart.listening", server, listening)
            say(f"restart {number:2d} {server.name:<15} listening after {listening:.3f} s, "
                f"unsealed after {unsealed:.3f} s")
            time.sleep(args.restart_pause)


def facts(servers: list[Server], args: argparse.Namespace) -> dict[str, Any]:
    from vaultd.config import DEFAULT_THREADS

    by_key = {server.key: server for server in servers}
    return {
        **report.machine_facts(),
        "vaultd_version": by_key["vaultd"].version(),
        "vaultd_storage": getattr(by_key["vaultd"], "storage", "file"),
        "vaultd_compare_storage": next(
            (server.storage for server in servers if isinstance(server, Vaultd) and is_comparison(server)), None
        ),
        "vaultd_workers": os.cpu_count(),
        "vaultd_threads": DEFAULT_THREADS,
        "openbao_version": by_key["openbao"].version(),
        "wrk_version": wrk.version(),
        "wrk_threads": args.wrk_threads,
        "rounds": args.rounds,
        "duration_seconds": args.duration,
        "warmup_seconds": args.warmup,
        "restarts": args.restarts,
        "secrets": args.secrets,
        "snapshots": args.snapshots,
        "ha_failovers": args.failovers if args.ha else 0,
    }


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextmanager
def running(servers: list[Server], workdir: Path) -> Iterator[None]:
    """Stop every process on the way out, whatever happened, and remove the
    servers' state (keys, data); the logs stay for a post-mortem."""
    try:
        yield
    finally:
        # Last started, first stopped: a vaultd sharing another's KMS emulator goes before it.
        for server in reversed(servers):
            try:
                server.close()
                say(f"stopped {server.name}")
            except Exception as exc:  # keep closing the others
                say(f"stopping {server.name} failed: {exc}")
        for server in servers:
            shutil.rmtree(server.state, ignore_errors=True)
        say("removed the servers' data and keys")
        say(f"logs kept in {workdir / 'logs'}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of scenarios 1-4 and 8 (default 3)")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per wrk run (default 6)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per scenario (default 2)")
    parser.add_argument("--restarts", type=int, default=10, help="timed restarts per server (default 10)")
    parser.add_argument("--restart-pause", type=float, default=0.5, help=argparse.SUPPRESS)
    parser.add_argument("--secrets", type=int, default=10_000, help="secrets for scenarios 3 and 7 (default 10000)")
    parser.add_argument("--snapshots", type=int, default=3, help="timed snapshots per server (default 3)")
    parser.add_argument("--no-ha", dest="ha", action="store_false",
                        help="leave out the HA part (on by default when PostgreSQL is installed)")
    parser.add_argument("--failovers", type=int, default=10, help="timed failovers of the HA part (default 10)")
    parser.add_argument("--no-file", action="store_true", help="leave out vaultd on file storage (the comparison)")
    parser.add_argument("--idle-settle", type=float, default=3.0, help=argparse.SUPPRESS)
    parser.add_argument("--idle-samples", type=int, default=5, help=argparse.SUPPRESS)
    parser.add_argument("--wrk-threads", type=int, default=os.cpu_count() or 2, help="wrk threads (default: cores)")
    parser.add_argument("--workdir", type=Path, default=HERE / ".work", help="scratch state, wiped at start")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where latest.md/json go")
    args = parser.parse_args(argv)
    if min(args.rounds, args.restarts, args.secrets, args.duration, args.snapshots, args.failovers) < 1:
        parser.error("--rounds, --restarts, --secrets, --snapshots, --failovers and --duration must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_at_start = os.getloadavg()
    wrk.binary()  # fail now, not after minutes of setup
    shutil.rmtree(args.workdir, ignore_errors=True)
    workdir = private_dir(args.workdir)
    logdir = private_dir(workdir / "logs")
    # The A B pair of the targets stays adjacent; the comparison comes third.
    vaultd = Vaultd(workdir, logdir)
    servers: list[Server] = [vaultd, OpenBao(workdir, logdir)]
    if not args.no_file:
        servers.append(Vaultd(workdir, logdir, storage="file", kms_of=vaultd))
    main_servers = [server for server in servers if not is_comparison(server)]
    results = Results()
    with running(servers, workdir):
        for server in servers:
            say(f"starting {server.name} on {server.url}")
            server.start()
        for server in servers:
            server.app_token = server.policy_token(20)
            took = server.prefill(MANY_PREFIX, args.secrets)
            say(f"{server.name}: wrote {args.secrets:,} secrets in {took:.1f} s ({args.secrets / took:,.0f}/s)")
        measure_snapshots(servers, args, results)
        measure_loads(servers, args, results)
        measure_idle(servers, args, results)
        measure_audited(main_servers, args, workdir, results)
        load_findings = {server.key: server.findings() for server in servers}
        measure_restarts(main_servers, args, results)
        machine = facts(servers, args)
    if args.ha and not ha.postgres_available():
        args.ha = False
        machine["ha_failovers"] = 0
        results.notes.append("HA part skipped: PostgreSQL is not installed (apt-get install postgresql)")
    if args.ha:
        measure_ha(args, workdir, logdir, results)
    for server in servers:
        for line in load_findings[server.key][:10]:
            results.notes.append(f"{server.name} logged during scenarios 1-4, 7 and 8: `{line[:300]}`")
        restart_only = [line for line in server.findings() if line not in load_findings[server.key]]
        for line in restart_only[:10]:
            results.notes.append(f"{server.name} logged during restarts: `{line[:300]}`")
    machine["loadavg_start"] = [round(load, 2) for load in load_at_start]
    machine["loadavg_end"] = [round(load, 2) for load in os.getloadavg()]
    if load_at_start[0] >= 1.0:
        results.notes.append(
            f"the machine was busy before the run (1-minute load average {load_at_start[0]:.1f} on "
            f"{machine['cores']} cores): absolute numbers are low and noisy; taking the servers in turn keeps the "
            "ratios fairer than the absolutes"
        )
    summary = report.summarise(results.values, args.secrets)
    machine["total_seconds"] = round(time.monotonic() - _started, 1)
    summary_ha = report.summarise_ha(results.values) if args.ha else None
    table = report.markdown(summary, machine, results.notes, summary_ha)
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / "latest.md", table)
    write_atomic(
        args.out / "latest.json",
        json.dumps(
            {"facts": machine, "summary": summary, "ha": summary_ha, "values": results.values, "wrk_runs": results.runs,
             "notes": results.notes},
            indent=2,
        ) + "\n",
    )
    print(table)
    say(f"done in {machine['total_seconds']:.0f} s; wrote {args.out / 'latest.md'} and latest.json")
    return 0


def entry() -> int:
    try:
        return main()
    except (ServerError, wrk.WrkError) as exc:
        say(f"bench failed: {exc}")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(entry())

