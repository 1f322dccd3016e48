"""``make run``: the whole auto-unsealing stack on one machine.

Starts a KMS emulator (moto, key kept in ``.vaultd/kms-dev-key.json``),
``vaultd server`` with ``seal "awskms"`` and sqlite storage in ``.vaultd/data``
(a ``.vaultd/data`` left by an older ``make run`` with the file backend is
still served with it, as the daemon does for any file-backend directory),
and ``vaultd-unsealer``.  On the first run it initialises the server and
keeps the recovery keys and root token in ``.vaultd/init.json`` (0600).
Ctrl-C stops everything; the next run comes back unsealed with the same data.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from vaultd.dev import kms
from vaultd.dev.ports import free_port

CONFIG = """\
# Written by vaultd.dev.stack (make run, make bench) on every start.
storage "{storage}" {{
  path = "{data}"
}}

listener "tcp" {{
  address     = "{address}"
  tls_disable = true
}}

seal "awskms" {{
  region     = "{region}"
  access_key = "{access_key}"
  secret_key = "{secret_key}"
  kms_key_id = "{key_id}"
  endpoint   = "{endpoint}"
}}

# The agent's channel: a unix socket in a private directory of the stack's
# state dir (the daemon makes it 0700); the agent endpoints answer 403 on TCP.
unsealer {{
  address = "unix://{agent_socket}"
}}

disable_mlock = true
log_level     = "info"
"""


def render_config(
    data: Path, address: str, emulator: kms.DevKms, *, agent_socket: Path | None = None, storage: str = "sqlite"
) -> str:
    """The config of a one-machine stack: ``storage`` (the package's default,
    sqlite, unless told; ``make bench`` also measures file) in ``data``, a plain
    HTTP loopback listener at ``address``, the awskms seal against the dev
    emulator, and the agent on a unix socket (by default ``run/unseal.sock``
    beside ``data``, in the stack's state directory).  ``make bench`` uses it too."""
    socket_path = agent_socket or data.parent / "run" / "unseal.sock"
    return CONFIG.format(
        storage=storage, data=data, address=address, region=kms.REGION, access_key=kms.ACCESS_KEY,
        secret_key=kms.SECRET_KEY, key_id=kms.ALIAS, endpoint=emulator.endpoint, agent_socket=socket_path,
    )


def _port(preferred: int) -> int:
    """``preferred`` (8200, Vault's) when free, else any free port."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
        except OSError:
            return free_port()
        return preferred


def _wait(url: str, *, seconds: float = 30.0) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        try:
            return requests.get(url, timeout=2).json()
        except (requests.RequestException, ValueError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=".vaultd", help="state directory (default .vaultd)")
    parser.add_argument("--port", type=int, default=8200, help="preferred port (default 8200)")
    args = parser.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    state = Path(args.dir).resolve()
    state.mkdir(mode=0o700, exist_ok=True)
    os.chmod(state, 0o700)
    emulator = kms.start(state / "kms-dev-key.json")
    address = f"127.0.0.1:{_port(args.port)}"
    config = state / "vaultd.hcl"
    _write_private(config, render_config(state / "data", address, emulator))
    bindir = Path(sys.executable).parent
    daemon = subprocess.Popen([str(bindir / "vaultd"), "server", "--config", str(config)])
    agent = subprocess.Popen([str(bindir / "vaultd-unsealer"), "--config", str(config)])
    children = [daemon, agent]

    def stop(*_: object) -> None:
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
        emulator.stop()

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    base = f"http://{address}/v1"
    init_file = state / "init.json"
    try:
        status = _wait(f"{base}/sys/seal-status")
        if not status["initialized"]:
            response = requests.put(f"{base}/sys/init", json={"recovery_shares": 1, "recovery_threshold": 1},
                                    timeout=30)
            response.raise_for_status()
            _write_private(init_file, json.dumps(response.json(), indent=2) + "\n")
            print(f"initialised; recovery key and root token saved in {init_file} (mode 0600)", flush=True)
        deadline = time.monotonic() + 60
        while _wait(f"{base}/sys/seal-status")["sealed"]:
            if time.monotonic() > deadline or daemon.poll() is not None:
                print("vaultd did not unseal; see the log above", file=sys.stderr)
                return 1
            time.sleep(0.2)
        print(
            "\nvaultd is up and unsealed.\n\n"
            f"    export VAULT_ADDR=http://{address}\n"
            "    .venv/bin/vaultctl status\n"
            f"    .venv/bin/vaultctl login    # the root token is in {init_file}\n\n"
            "Ctrl-C stops everything; `make run` again comes back unsealed.\n",
            flush=True,
        )
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        print("a process of the stack exited; stopping", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop()


if __name__ == "__main__":
    sys.exit(main())
