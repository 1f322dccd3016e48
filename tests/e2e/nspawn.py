"""A Debian bookworm container booted under systemd-nspawn, for the e2e test.

The root filesystem comes from ``debootstrap --variant=minbase`` and is cached
under ``/var/cache/vaultd-e2e`` (``VAULTD_E2E_CACHE``), keyed by the suite,
the mirror and the package list, because debootstrap costs minutes and the
result is the same every time.  Each run boots an overlay on top of the
cache (the cache itself is never written to), so every run starts from the
same pristine system and leaves nothing behind but the cache.

On this kind of machine the host's PID 1 is not systemd, hence
``--register=no --keep-unit``; the container shares the host's network, so a
KMS emulator on the host's loopback is reachable from inside, and commands
run inside through ``nsenter -t <container's PID 1> -a``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus")
# debootstrap does not resolve virtual packages: python3-cryptography needs
# python3-cffi-backend-api-*, which only python3-cffi-backend provides.
RESOLVE_BY_HAND = ("python3-cffi-backend",)
CACHE_ROOT = Path(os.environ.get("VAULTD_E2E_CACHE", "/var/cache/vaultd-e2e"))
INSIDE_ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
    "TERM": "dumb",
    "SYSTEMD_COLORS": "0",
    "SYSTEMD_PAGER": "",
    "DEBIAN_FRONTEND": "noninteractive",
}


class ContainerError(RuntimeError):
    pass


def host_mirror() -> str:
    """The Debian mirror the host itself uses (its apt sources), so the
    container's packages come from where the host's come from."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        uris = re.findall(r"^\s*URIs:\s*(\S+)", text, re.M)
        uris += re.findall(r"^\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)", text, re.M)
        for uri in uris:
            if "debian" in uri and "security" not in uri and "/debian" in uri:
                return uri.rstrip("/")
    return DEFAULT_MIRROR


def mirror_reachable(mirror: str) -> bool:
    try:
        with urllib.request.urlopen(f"{mirror}/dists/{SUITE}/Release", timeout=15) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def control_depends(control: Path) -> list[str]:
    """The binary package's Depends from debian/control, first alternatives,
    without substitution variables: what the .deb will need inside."""
    text = control.read_text()
    match = re.search(r"^Depends:(.*?)(?=^\S|\Z)", text.split("\nPackage:", 1)[1], re.M | re.S)
    if match is None:
        return []
    names = []
    for item in match.group(1).replace("\n", " ").split(","):
        first = item.split("|")[0].strip()
        name = first.split("(")[0].strip()
        if name and not name.startswith("${"):
            names.append(name)
    return names


def rootfs(packages: Sequence[str], mirror: str, log: Path) -> tuple[Path, bool]:
    """The cached root filesystem for these packages, made if missing.
    Returns (path, whether it was made now)."""
    include = sorted({*BASE_PACKAGES, *RESOLVE_BY_HAND, *packages})
    key = hashlib.sha256(
        json.dumps({"suite": SUITE, "variant": "minbase", "mirror": mirror, "include": include}).encode()
    ).hexdigest()[:16]
    final = CACHE_ROOT / f"{SUITE}-{key}"
    if (final / "complete").exists():
        return final / "rootfs", False
    CACHE_ROOT.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(CACHE_ROOT / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one debootstrap at a time per machine
        if (final / "complete").exists():
            return final / "rootfs", False
        staging = CACHE_ROOT / f".staging-{key}-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        with open(log, "ab") as out:
            result = subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={','.join(include)}", SUITE,
                 str(staging / "rootfs"), mirror],
                stdout=out, stderr=subprocess.STDOUT, timeout=1200, check=False,
            )
        if result.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            raise ContainerError(f"debootstrap failed ({result.returncode}); see {log}")
        # debootstrap leaves a policy-rc.d that forbids starting services;
        # an installed system has none, and the package's postinst honours it.
        (staging / "rootfs/usr/sbin/policy-rc.d").unlink(missing_ok=True)
        (staging / "complete").write_text(json.dumps({"include": include, "mirror": mirror}) + "\n")
        for old in CACHE_ROOT.glob(f"{SUITE}-*"):
            shutil.rmtree(old, ignore_errors=True)  # superseded package lists
        os.rename(staging, final)
    return final / "rootfs", True


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree[ppid].append(int(entry))
    return tree


def _container_init(nspawn_pid: int) -> int | None:
    """The descendant of nspawn that is PID 1 of its own PID namespace."""
    tree = _children()
    todo = list(tree.get(nspawn_pid, []))
    while todo:
        pid = todo.pop(0)
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        match = re.search(r"^NSpid:\s+(.*)$", status, re.M)
        if match and len(match.group(1).split()) > 1 and match.group(1).split()[-1] == "1":
            return pid
        todo.extend(tree.get(pid, []))
    return None


class Container:
    """One booted container on an overlay over ``lower``."""

    def __init__(self, lower: Path, workdir: Path, name: str = "vaultd-e2e") -> None:
        self.lower = lower
        self.workdir = workdir
        self.name = name
        self.merged = workdir / "merged"
        self.console_log = workdir / "console.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.init_pid = 0
        self._mounted = False

    def path(self, inside: str) -> Path:
        """A path inside the container, as the host sees it."""
        return self.merged / inside.lstrip("/")

    def boot(self, timeout: float = 120.0) -> None:
        for sub in ("upper", "work", "merged"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={self.lower},upperdir={self.workdir / 'upper'},workdir={self.workdir / 'work'}",
             str(self.merged)],
            check=True,
        )
        self._mounted = True
        with open(self.console_log, "wb") as console:
            self.process = subprocess.Popen(
                ["systemd-nspawn", "-D", str(self.merged), f"--machine={self.name}", "--register=no",
                 "--keep-unit", "--boot", "--console=read-only"],
                stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while not self.init_pid:
            if self.process.poll() is not None:
                raise ContainerError(f"systemd-nspawn exited with {self.process.returncode}; see {self.console_log}")
            if time.monotonic() > deadline:
                raise ContainerError("the container's init did not appear")
            self.init_pid = _container_init(self.process.pid) or 0
            time.sleep(0.1)
        while True:
            result = self.run("systemctl", "is-system-running", check=False, timeout=30)
            state = result.stdout.strip()
            if state in ("running", "degraded"):
                return
            if time.monotonic() > deadline:
                raise ContainerError(f"the container did not finish booting (state {state!r})")
            time.sleep(0.3)

    def run(self, *argv: str, check: bool = True, timeout: float = 120.0, input: str | None = None,
            env: dict[str, str] | None = None, errors: str = "strict") -> subprocess.CompletedProcess[str]:
        """Run a command inside (all namespaces, a clean environment).
        ``errors="replace"`` for output that is not all UTF-8 (``journalctl
        -o export`` writes a multi-line field's length as 8 raw bytes)."""
        variables = {**INSIDE_ENV, **(env or {})}
        command = ["nsenter", "-t", str(self.init_pid), "-a", "env", "-i",
                   *(f"{k}={v}" for k, v in variables.items()), *argv]
        result = subprocess.run(command, capture_output=True, text=True, errors=errors, timeout=timeout, input=input,
                                check=False)
        if check and result.returncode != 0:
            raise ContainerError(
                f"{' '.join(argv)} exited with {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """``systemctl show`` as a dict."""
        out = self.run("systemctl", "show", unit, *(f"--property={p}" for p in properties)).stdout
        values = {}
        for line in out.splitlines():
            key, _, value = line.partition("=")
            values[key] = value
        return values

    def shutdown(self) -> None:
        if self.process is not None and self.process.poll() is None:
            if self.init_pid:
                with contextlib.suppress(Exception):
                    self.run("systemctl", "poweroff", "--no-block", check=False, timeout=20)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        if self._mounted:
            if subprocess.run(["umount", str(self.merged)], check=False).returncode != 0:
                subprocess.run(["umount", "-l", str(self.merged)], check=False)
            self._mounted = False
        shutil.rmtree(self.workdir / "upper", ignore_errors=True)
        shutil.rmtree(self.workdir / "work", ignore_errors=True)


@contextlib.contextmanager
def booted(lower: Path, workdir: Path) -> Iterator[Container]:
    container = Container(lower, workdir)
    try:
        container.boot()
        yield container
    finally:
        container.shutdown()
