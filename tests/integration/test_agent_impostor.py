"""Issue 9, "Why" item 1, reproduced and shown fixed with real processes: the
daemon, the agent, moto's KMS, and an unprivileged local user (uid 65534,
through ``setpriv``) who tries to get the unseal key.

Before: while vaultd restarted, such a user bound 127.0.0.1:<port>, served
the real wrapped key and was sent the plaintext key by the agent.  Now the
agent talks to the daemon's unix socket only, and checks who is behind it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.integration.socketfront import short_dir as short_dir  # fixture
from tests.integration.support import Server, ServerFactory, wait_for
from tests.kms_fixtures import KmsKey, isolated_aws_env
from unsealer import exitcodes

ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534
WAIT = 60.0
TUNING = 'unsealer {\n  initial_backoff = "100ms"\n  max_backoff = "1s"\n  poll_interval = "200ms"\n}\n'

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="acts as another local user through setpriv")

IMPOSTOR = r'''
import http.server, json, sys
port, blob_file, record = int(sys.argv[1]), sys.argv[2], sys.argv[3]
blob = open(blob_file).read()
STATE = {"boot_id": "impostor", "initialized": True, "sealed": True, "seal_type": "awskms",
         "sealed_by_operator": False}
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        with open(record, "a") as f:
            f.write(json.dumps([self.command, self.path, body.decode(errors="replace")]) + "\n")
        if self.path.startswith("/v1/sys/vaultd/state"):
            out = json.dumps(STATE).encode()
        elif self.path.startswith("/v1/sys/vaultd/stored-key"):
            out = blob.encode()
        else:
            out = b'{"sealed": false}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    do_GET = do_PUT = do_POST = _answer
    def log_message(self, *a): pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
print("listening", flush=True)
srv.serve_forever()
'''

UNIX_CLIENT = r'''
import json, socket, sys
path, method, target = sys.argv[1], sys.argv[2], sys.argv[3]
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(path)
except OSError as exc:
    print(json.dumps({"connect_error": exc.errno}))
    sys.exit(0)
body = b'{"key": "AAAA", "boot_id": "x"}' if method == "PUT" else b""
s.sendall(f"{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
          f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
data = b""
while chunk := s.recv(65536):
    data += chunk
head, _, rest = data.partition(b"\r\n\r\n")
print(json.dumps({"status": int(head.split()[1]), "body": rest.decode(errors="replace")}))
'''


def as_nobody(*args: str, **kwargs: object) -> list[str]:
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", sys.executable, *args]


def unix_request(path: Path, method: str, target: str, *, nobody: bool = False) -> dict[str, object]:
    command = as_nobody("-c", UNIX_CLIENT, str(path), method, target) if nobody else [
        sys.executable, "-c", UNIX_CLIENT, str(path), method, target]
    out = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True)
    return dict(json.loads(out.stdout))


class Agent:
    def __init__(self, config: Path, log: Path, runtime_dir: str) -> None:
        env = isolated_aws_env()
        env["XDG_RUNTIME_DIR"] = runtime_dir  # the daemon's: the same default socket
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "unsealer", "--config", str(config)], cwd=ROOT,
            stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=env,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=WAIT)


def _state(server: Server) -> dict[str, object]:
    return dict(requests.get(server.url("sys/vaultd/state"), timeout=5).json())


@pytest.fixture
def daemon(server_factory: ServerFactory, kms_key: KmsKey) -> Server:
    """An initialised awskms daemon with no unsealer address: the default socket."""
    server = server_factory(workers=2, extra=kms_key.seal_hcl() + TUNING)
    body = server.call("PUT", "sys/init", json_body={"recovery_shares": 1, "recovery_threshold": 1}, timeout=30)
    server.known_secrets.extend([*body["recovery_keys"], body["root_token"]])
    return server


@pytest.fixture
def agent(daemon: Server, tmp_path: Path) -> Iterator[Agent]:
    running = Agent(daemon.config, tmp_path / "agent.log", daemon.runtime_dir)
    yield running
    running.stop()


def test_the_key_endpoints_answer_403_on_tcp_and_serve_the_socket(daemon: Server) -> None:
    for method, path in (("GET", "sys/vaultd/stored-key"), ("PUT", "sys/vaultd/unseal")):
        refused = daemon.request(method, path, json_body={"key": "AAAA", "boot_id": "x"})
        assert refused.status_code == 403, refused.text
        assert refused.json()["errors"]
    assert daemon.request("GET", "sys/vaultd/state").status_code == 200
    sock = daemon.agent_socket
    assert (os.stat(sock).st_mode & 0o777) == 0o600
    assert (os.stat(sock.parent).st_mode & 0o777) == 0o700
    served = unix_request(sock, "GET", "/v1/sys/vaultd/stored-key")
    assert served["status"] == 200 and json.loads(str(served["body"]))["seal_type"] == "awskms"
    assert "agent_channel_refused" in daemon.log_text() or "refused GET" in daemon.log_text()


def test_another_user_cannot_use_the_socket(daemon: Server) -> None:
    sock = daemon.agent_socket
    # The directory keeps other users out...
    assert unix_request(sock, "GET", "/v1/sys/vaultd/stored-key", nobody=True) == {"connect_error": 13}
    # ...and with every mode loosened, SO_PEERCRED still does.
    os.chmod(daemon.runtime_dir, 0o755)  # noqa: S103 - deliberately loosened for the test
    os.chmod(sock.parent, 0o755)  # noqa: S103 - deliberately loosened for the test
    os.chmod(sock, 0o666)  # noqa: S103 - deliberately loosened for the test
    for method, path in (("GET", "/v1/sys/vaultd/stored-key"), ("PUT", "/v1/sys/vaultd/unseal")):
        answer = unix_request(sock, method, path, nobody=True)
        assert answer["status"] == 403, answer
        assert json.loads(str(answer["body"]))["errors"]
    assert unix_request(sock, "GET", "/v1/sys/vaultd/state", nobody=True)["status"] == 200
    assert f"uid {NOBODY} may not use the agent socket" in daemon.log_text()


def test_an_impostor_on_the_tcp_port_gets_no_key(daemon: Server, agent: Agent, short_dir: Path) -> None:
    wait_for(lambda: "is unsealed" in agent.text(), "the agent to see the daemon", timeout=WAIT)
    blob = unix_request(daemon.agent_socket, "GET", "/v1/sys/vaultd/stored-key")["body"]
    os.chmod(short_dir, 0o755)  # noqa: S103 - deliberately loosened for the test
    spot = short_dir / "impostor"
    spot.mkdir()
    os.chmod(spot, 0o777)  # noqa: S103 - deliberately loosened for the test
    (spot / "blob.json").write_text(str(blob))
    record = spot / "requests.jsonl"
    daemon.stop()
    impostor = subprocess.Popen(
        as_nobody("-c", IMPOSTOR, str(daemon.port), str(spot / "blob.json"), str(record)),
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert impostor.stdout is not None and impostor.stdout.readline().strip() == "listening"
        # The real daemon answers on the port as it did: the impostor is live.
        assert requests.get(daemon.url("sys/vaultd/state"), timeout=5).json()["boot_id"] == "impostor"
        failures = agent.text().count("daemon not available")
        wait_for(lambda: agent.text().count("daemon not available") >= failures + 3,
                 "the agent to keep looking for the daemon's socket", timeout=WAIT)
        time.sleep(2)  # what the old agent needed to send the key ten times
        seen = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
        assert [s for s in seen if s[0] == "PUT"] == []
        assert not any("vaultd/" in s[1] and s[0] == "GET" and "state" not in s[1] for s in seen if s[1] != "")
        assert agent.process.poll() is None
    finally:
        impostor.kill()
        impostor.wait()
    daemon.start()
    wait_for(lambda: _state(daemon)["sealed"] is False, "the agent to unseal the real daemon", timeout=WAIT)
    assert "unsealed the daemon" in agent.text()


UNTRUSTED_PEER = r'''
import os, socket, sys
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen()
print("ready", flush=True)
while True:
    conn, _ = s.accept()
    data = conn.recv(65536)
    with open(sys.argv[2], "ab") as f:
        f.write(data or b"<connect>\n")
    conn.close()
'''


def test_an_agent_pointed_at_another_user_s_socket_refuses_with_its_exit_code(
    server_factory: ServerFactory, kms_key: KmsKey, short_dir: Path, tmp_path: Path
) -> None:
    os.chmod(short_dir, 0o755)  # noqa: S103 - deliberately loosened for the test
    theirs = short_dir / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, NOBODY, NOBODY)
    sock, record = theirs / "unseal.sock", short_dir / "record"
    record.touch()
    os.chown(record, NOBODY, NOBODY)
    peer = subprocess.Popen(as_nobody("-c", UNTRUSTED_PEER, str(sock), str(record)), stdout=subprocess.PIPE,
                            text=True)
    try:
        assert peer.stdout is not None and peer.stdout.readline().strip() == "ready"
        server = server_factory(workers=1, start=False, extra=kms_key.seal_hcl()
                                + f'unsealer {{\n  address = "unix://{sock}"\n}}\n')
        agent = Agent(server.config, tmp_path / "agent.log", server.runtime_dir)
        assert agent.process.wait(timeout=WAIT) == exitcodes.UNTRUSTED_DAEMON
        assert "refusing the daemon's socket" in agent.text() and f"uid {NOBODY}" in agent.text()
        assert record.read_bytes() == b""  # not even connected to
    finally:
        peer.kill()
        peer.wait()


@pytest.mark.parametrize("problem", ["group-writable", "another-uid"])
def test_the_daemon_refuses_an_unsafe_socket_directory(
    server_factory: ServerFactory, kms_key: KmsKey, short_dir: Path, problem: str
) -> None:
    run = short_dir / "run"
    run.mkdir(mode=0o700)
    if problem == "group-writable":
        os.chmod(run, 0o770)  # noqa: S103 - deliberately loosened for the test
    else:
        os.chown(run, NOBODY, NOBODY)
    server = server_factory(workers=1, start=False, extra=kms_key.seal_hcl()
                            + f'unsealer {{\n  address = "unix://{run}/unseal.sock"\n}}\n')
    done = subprocess.run([str(Path(sys.executable).parent / "vaultd"), "server", "--config", str(server.config)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "refusing to serve the unseal key there" in done.stderr
    assert not (run / "unseal.sock").exists()


def test_a_tcp_agent_address_keeps_working_with_a_warning(
    server_factory: ServerFactory, kms_key: KmsKey, tmp_path: Path
) -> None:
    """An upgraded config that names a TCP agent address: served on loopback
    as before, with the warning at start (see the README for why)."""
    server = server_factory(workers=1, start=False, extra=kms_key.seal_hcl())
    with open(server.config, "a") as config:
        config.write(f'unsealer {{\n  address = "{server.addr}"\n  poll_interval = "200ms"\n}}\n')
    server.start()
    server.call("PUT", "sys/init", json_body={"recovery_shares": 1, "recovery_threshold": 1}, timeout=30)
    assert "is the TCP address" in server.log_text()
    assert server.request("GET", "sys/vaultd/stored-key").status_code == 200
    agent = Agent(server.config, tmp_path / "agent.log", server.runtime_dir)
    try:
        server.stop()
        server.start()
        wait_for(lambda: _state(server)["sealed"] is False, "the agent to unseal over TCP", timeout=WAIT)
    finally:
        agent.stop()
