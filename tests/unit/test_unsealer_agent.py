"""The unsealer agent's parts that need no daemon: settings from the config
file, the backoff, exit codes for KMS errors (through the real seal, the KMS
emulator and the fault proxy), the HTTP client's transport rules, and the
command line.  The agent against a real daemon is in
tests/integration/test_autounseal.py."""

from __future__ import annotations

import base64
import http.server
import json
import logging
import os
import socket
import socketserver
import threading
from pathlib import Path

import pytest
import tenacity

from tests.faultproxy import FaultProxy
from tests.kms_fixtures import KmsKey, free_port
from unsealer import exitcodes
from unsealer.__main__ import main
from unsealer.agent import Agent, Outcome, _EpisodeWaits, backoff_wait
from unsealer.client import DaemonClient, DaemonRefused, DaemonUnavailable, b64encode_into, wipe
from unsealer.settings import AgentSettings, SettingsError, parse_seconds, settings_from_config
from vaultd.config import parse_config
from vaultd.seal.awskms import AwsKmsSeal
from vaultd.seal.base import SealError

BASE = """
storage "inmem" {}
listener "tcp" {
  address = "127.0.0.1:8200"
  tls_disable = true
}
"""


def _settings(text: str) -> AgentSettings:
    return settings_from_config(parse_config(text, "vaultd.hcl"))


# --- settings ------------------------------------------------------------------


def test_defaults_are_the_issue_s_backoff_and_the_daemon_s_default_socket(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    settings = _settings(BASE)
    expected = f"{tmp_path}/vaultd/unseal.sock"
    assert settings.address == f"unix://{expected}"
    assert settings.channel is not None and settings.channel.socket_path == expected
    assert (settings.initial_backoff, settings.max_backoff) == (0.5, 30.0)
    assert settings.unix_tls is False


def test_backoff_bounds_come_from_the_unsealer_stanza() -> None:
    settings = _settings(
        BASE
        + """
unsealer {
  address = "http://localhost:8300/"
  initial_backoff = "250ms"
  max_backoff = "2m"
  poll_interval = 2
  timeout = "1.5s"
}
"""
    )
    assert settings.address == "http://localhost:8300"
    assert settings.channel is None
    assert (settings.initial_backoff, settings.max_backoff) == (0.25, 120.0)
    assert (settings.poll_interval, settings.timeout) == (2.0, 1.5)


def test_a_tls_listener_means_tls_over_the_socket_too() -> None:
    text = (
        'storage "inmem" {}\nlistener "tcp" {\n  address = "127.0.0.1:8200"\n'
        '  tls_cert_file = "/c.pem"\n  tls_key_file = "/k.pem"\n}\n'
        'unsealer {\n  address = "unix:///run/x/unseal.sock"\n}\n'
    )
    assert _settings(text).unix_tls is True


@pytest.mark.parametrize(
    "address",
    ["http://10.0.0.5:8200", "http://vault.example.com:8200", "ftp://127.0.0.1/"],
)
def test_the_key_is_not_sent_in_clear_to_another_host(address: str) -> None:
    with pytest.raises(SettingsError):
        _settings(BASE + f'unsealer {{\n  address = "{address}"\n}}\n')
    with pytest.raises(SettingsError):
        DaemonClient(address)


@pytest.mark.parametrize(
    "address",
    ["https://vault.example.com:8200", "http://[::1]:8200", "http://127.0.0.2:8200", "unix:///run/vaultd.sock"],
)
def test_tls_loopback_and_unix_addresses_are_accepted(address: str) -> None:
    assert _settings(BASE + f'unsealer {{\n  address = "{address}"\n}}\n').address == address


@pytest.mark.parametrize("address", ["unix://", "unix:relative.sock", f"unix:///{'x' * 120}.sock"])
def test_unusable_socket_addresses_are_config_errors(address: str) -> None:
    with pytest.raises(SettingsError):
        _settings(BASE + f'unsealer {{\n  address = "{address}"\n}}\n')


@pytest.mark.parametrize("value", ["0s", "-1s", "soon", "", True, "5 s"])
def test_bad_durations_are_refused(value: object) -> None:
    with pytest.raises(SettingsError):
        parse_seconds(value, "initial_backoff")


def test_max_backoff_below_initial_is_refused() -> None:
    with pytest.raises(SettingsError):
        _settings(BASE + 'unsealer {\n  initial_backoff = "10s"\n  max_backoff = "1s"\n}\n')


@pytest.mark.parametrize(("text", "seconds"), [("500ms", 0.5), ("1m30s", 90.0), ("2", 2.0), ("1.5h", 5400.0)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_seconds(text, "x") == seconds


# --- backoff ---------------------------------------------------------------------


def _delay(wait: tenacity.wait.wait_base, attempt: int) -> float:
    state = tenacity.RetryCallState(retry_object=tenacity.Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    return float(wait(state))


def test_backoff_grows_from_the_initial_delay_to_the_cap_with_jitter() -> None:
    wait = backoff_wait(0.5, 30.0)
    for attempt in range(1, 20):
        ceiling = min(30.0, 0.5 * 2 ** (attempt - 1))
        samples = [_delay(wait, attempt) for _ in range(200)]
        assert all(ceiling / 2 <= s <= ceiling for s in samples)
        assert len(set(samples)) > 1  # jittered
    assert max(_delay(wait, 1) for _ in range(200)) <= 0.5
    assert min(_delay(wait, 12) for _ in range(200)) >= 15.0


# --- KMS errors -> exit codes (real seal, emulator, fault proxy) ------------------

EXIT_FOR_CODE = {
    "AccessDeniedException": exitcodes.KMS_AUTH,
    "UnrecognizedClientException": exitcodes.KMS_AUTH,
    "InvalidSignatureException": exitcodes.KMS_AUTH,
    "ExpiredTokenException": exitcodes.KMS_AUTH,
    "IncorrectKeyException": exitcodes.WRONG_KEY,
    "InvalidCiphertextException": exitcodes.WRONG_KEY,
    "DisabledException": exitcodes.KEY_UNUSABLE,
    "NotFoundException": exitcodes.KEY_UNUSABLE,
    "KMSInvalidStateException": exitcodes.KEY_UNUSABLE,
    "InvalidKeyUsageException": exitcodes.KEY_UNUSABLE,
    "ValidationException": exitcodes.SEAL_OTHER,
}


@pytest.mark.parametrize(("code", "exit_code"), sorted(EXIT_FOR_CODE.items()))
def test_permanent_kms_errors_have_distinct_exit_codes(
    aws_env: dict[str, str], kms_key: KmsKey, kms_proxy: FaultProxy, code: str, exit_code: int
) -> None:
    seal = AwsKmsSeal(kms_key.seal_options(kms_proxy.url))
    stored = seal.wrap(os.urandom(32), {"vaultd:cluster_id": "c"})
    kms_proxy.fail(code, times=1)
    with pytest.raises(SealError) as caught:
        seal.unwrap(stored)
    assert caught.value.permanent
    assert exitcodes.for_seal_error(caught.value) == exit_code
    assert exit_code in exitcodes.PERMANENT


def test_missing_credentials_exit_as_an_auth_problem(aws_env: dict[str, str], kms_key: KmsKey) -> None:
    options = kms_key.seal_options()
    del options["access_key"], options["secret_key"]
    with pytest.raises(SealError) as caught:
        AwsKmsSeal(options).wrap(os.urandom(32), {})
    assert exitcodes.for_seal_error(caught.value) == exitcodes.KMS_AUTH


def test_exit_codes_are_distinct_and_documented() -> None:
    codes = [exitcodes.OK, exitcodes.UNEXPECTED, *exitcodes.PERMANENT]
    assert len(set(codes)) == len(codes)
    doc = exitcodes.__doc__ or ""
    for code, name in exitcodes.NAMES.items():
        assert f"| {code}    | {name}" in doc


# --- the client -------------------------------------------------------------------


@pytest.mark.parametrize("size", range(0, 40))
def test_b64encode_into_matches_the_stdlib(size: int) -> None:
    data = os.urandom(size)
    encoded = b64encode_into(data)
    assert isinstance(encoded, bytearray)
    assert bytes(encoded) == base64.b64encode(data)
    wipe(encoded)
    assert encoded == bytearray(len(encoded))


class _Recorder(http.server.BaseHTTPRequestHandler):
    """A peer that records what reached it and answers as configured."""

    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, str, bytes]]
    connections: list[socket.socket]
    answer: tuple[int, dict[str, str], bytes]

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.seen.append((self.command, self.path, self.rfile.read(length)))
        self.connections.append(self.connection)
        status, headers, body = self.answer
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = _handle

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""

    def address_string(self) -> str:
        return "local"


def _recorder(answer: tuple[int, dict[str, str], bytes]) -> type[_Recorder]:
    return type("Recorder", (_Recorder,), {"seen": [], "connections": [], "answer": answer})


STATE = {"boot_id": "b1", "initialized": True, "sealed": True, "seal_type": "awskms", "sealed_by_operator": False}


def test_unseal_body_carries_the_key_and_boot_id(serve: object) -> None:
    handler = _recorder((200, {"Content-Type": "application/json"}, b'{"sealed": false}'))
    server = serve(http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler))  # type: ignore[operator]
    client = DaemonClient(f"http://127.0.0.1:{server.server_address[1]}")
    key = bytearray(os.urandom(32))
    assert client.unseal(key, "boot-1") == {"sealed": False}
    method, path, body = handler.seen[0]
    assert (method, path) == ("PUT", "/v1/sys/vaultd/unseal")
    assert json.loads(body) == {"key": base64.b64encode(bytes(key)).decode(), "boot_id": "boot-1"}


def test_the_client_ignores_proxy_settings_from_the_environment(
    serve: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = _recorder((200, {"Content-Type": "application/json"}, json.dumps(STATE).encode()))
    server = serve(http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler))  # type: ignore[operator]
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("HTTP_PROXY", dead)
    monkeypatch.setenv("http_proxy", dead)
    monkeypatch.setenv("ALL_PROXY", dead)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    state = DaemonClient(f"http://127.0.0.1:{server.server_address[1]}").state()
    assert state.boot_id == "b1"


def test_redirects_are_not_followed(serve: object) -> None:
    target = _recorder((200, {}, b"{}"))
    elsewhere = serve(http.server.ThreadingHTTPServer(("127.0.0.1", 0), target))  # type: ignore[operator]
    location = f"http://127.0.0.1:{elsewhere.server_address[1]}/steal"
    redirect = _recorder((307, {"Location": location}, b""))
    server = serve(http.server.ThreadingHTTPServer(("127.0.0.1", 0), redirect))  # type: ignore[operator]
    client = DaemonClient(f"http://127.0.0.1:{server.server_address[1]}")
    with pytest.raises(DaemonRefused):
        client.unseal(bytearray(32), "b1")
    assert target.seen == []


@pytest.mark.parametrize(
    ("status", "error"), [(503, DaemonUnavailable), (500, DaemonUnavailable), (400, DaemonRefused)]
)
def test_answers_are_sorted_into_retryable_and_refusals(
    serve: object, status: int, error: type[Exception]
) -> None:
    handler = _recorder((status, {"Content-Type": "application/json"}, b'{"errors": ["nope"]}'))
    server = serve(http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler))  # type: ignore[operator]
    with pytest.raises(error) as caught:
        DaemonClient(f"http://127.0.0.1:{server.server_address[1]}").state()
    assert "nope" in str(caught.value)


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def test_unix_socket_transport(serve: object, tmp_path: Path) -> None:
    path = tmp_path / "vaultd.sock"
    handler = _recorder((200, {"Content-Type": "application/json"}, json.dumps(STATE).encode()))
    serve(_UnixHTTPServer(str(path), handler))  # type: ignore[operator]
    for address in (f"unix://{path}", str(path)):
        client = DaemonClient(address)
        assert client.state().sealed is True
        client.close()
    assert [seen[1] for seen in handler.seen] == ["/v1/sys/vaultd/state"] * 2


def test_unreachable_daemon_is_retryable() -> None:
    with pytest.raises(DaemonUnavailable) as caught:
        DaemonClient(f"http://127.0.0.1:{free_port()}", timeout=2).state()
    assert "refused" in str(caught.value).lower()


# --- the loop, without a daemon ---------------------------------------------------


def test_agent_retries_an_absent_daemon_with_logged_backoff_and_stops_cleanly(
    aws_env: dict[str, str], kms_key: KmsKey, caplog: pytest.LogCaptureFixture
) -> None:
    settings = AgentSettings(address=f"http://127.0.0.1:{free_port()}", initial_backoff=0.02, max_backoff=0.1)
    agent = Agent(DaemonClient(settings.address, timeout=2), AwsKmsSeal(kms_key.seal_options()), settings)
    caplog.set_level(logging.DEBUG, logger="vaultd.unsealer")
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(agent.run()))
    thread.start()
    try:
        for _ in range(400):
            if agent.attempts >= 4:
                break
            threading.Event().wait(0.05)
    finally:
        agent.stop()
        thread.join(timeout=30)
    assert result == [exitcodes.OK]
    failures = [r for r in caplog.records if "failed" in r.getMessage()]
    first = failures[0].getMessage()
    assert first.startswith("attempt 1 failed: daemon not available") and "retrying in" in first
    assert "attempt 2 failed" in failures[1].getMessage()
    # Asked often while down, so only attempts 1, 2, 4, 8... are warnings.
    levels = {int(r.getMessage().split()[1]): r.levelno for r in failures}
    assert [levels[n] for n in (1, 2, 3, 4)] == [logging.WARNING, logging.WARNING, logging.DEBUG, logging.WARNING]


def test_the_daemon_is_retried_on_a_short_scale_and_kms_on_the_configured_one() -> None:
    waits = _EpisodeWaits(AgentSettings(address="http://127.0.0.1:8200"))  # KMS: 0.5 s doubling to 30 s

    def wait_after(exc: Exception) -> float:
        state = tenacity.RetryCallState(None, None, (), {})  # type: ignore[arg-type]
        state.set_exception((type(exc), exc, None))
        return waits(state)

    daemon = [wait_after(DaemonUnavailable("refused")) for _ in range(12)]
    assert 0.025 <= daemon[0] <= 0.05
    assert all(0.05 <= w <= 0.1 for w in daemon[4:])
    # KMS's first retry is its own first, not the thirteenth of the episode.
    kms = [wait_after(SealError("throttled", code="ThrottlingException", permanent=False)) for _ in range(3)]
    assert 0.25 <= kms[0] <= 0.5 and 0.5 <= kms[1] <= 1.0 and 1.0 <= kms[2] <= 2.0


def test_the_agent_looks_again_as_soon_as_the_daemon_closes_its_connection(
    serve: object, aws_env: dict[str, str], kms_key: KmsKey
) -> None:
    handler = _recorder((200, {"Content-Type": "application/json"}, json.dumps({**STATE, "sealed": False}).encode()))
    server = serve(http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler))  # type: ignore[operator]
    settings = AgentSettings(address=f"http://127.0.0.1:{server.server_address[1]}", poll_interval=600)
    client = DaemonClient(settings.address)
    agent = Agent(client, AwsKmsSeal(kms_key.seal_options()), settings)
    assert agent.run_episode() is Outcome.ALREADY_UNSEALED
    assert client.idle_socket() is not None

    pause = threading.Thread(target=agent._pause)
    pause.start()
    pause.join(timeout=0.5)
    assert pause.is_alive(), "with the daemon up, the agent waits out its poll interval"
    handler.connections[0].shutdown(socket.SHUT_RDWR)  # what a stopping daemon's kernel does
    pause.join(timeout=20)
    assert not pause.is_alive(), "the closed connection did not end the wait"
    # The next look reconnects by itself.
    assert agent.run_episode() is Outcome.ALREADY_UNSEALED

    pause = threading.Thread(target=agent._pause)
    pause.start()
    agent.stop()
    pause.join(timeout=20)
    assert not pause.is_alive(), "stopping the agent did not end the wait"
    client.close()


def test_a_stopped_agent_does_not_start_an_episode(aws_env: dict[str, str], kms_key: KmsKey) -> None:
    settings = AgentSettings(address=f"http://127.0.0.1:{free_port()}")
    agent = Agent(DaemonClient(settings.address), AwsKmsSeal(kms_key.seal_options()), settings)
    agent.stop()
    assert agent.run_episode() is Outcome.STOPPED
    assert agent.attempts == 0


# --- the command line ---------------------------------------------------------------


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert main([]) == exitcodes.CONFIG
    assert main(["--config", str(tmp_path / "missing.hcl")]) == exitcodes.CONFIG


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == exitcodes.OK
    assert "Exit codes" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra",
    [
        "",  # no seal stanza
        'seal "shamir" {}\n',
        'seal "awskms" {\n  region = "us-east-1"\n}\n',  # no key id
        'seal "awskms" {\n  kms_key_id = "k"\n}\nunsealer {\n  address = "http://192.0.2.1:8200"\n}\n',
        'seal "awskms" {\n  kms_key_id = "k"\n}\nunsealer {\n  max_backoff = "never"\n}\n',
    ],
)
def test_unusable_configs_exit_2(aws_env: dict[str, str], tmp_path: Path, extra: str) -> None:
    path = tmp_path / "vaultd.hcl"
    path.write_text(BASE + extra)
    assert main(["--config", str(path)]) == exitcodes.CONFIG


def test_bytes_on_the_watched_connection_are_not_taken_for_a_close(
    aws_env: dict[str, str], kms_key: KmsKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TLS record the daemon sends unasked makes the socket readable too;
    the agent must not run an episode on every such wake."""
    ours, daemons = socket.socketpair()
    settings = AgentSettings(address=f"http://127.0.0.1:{free_port()}", poll_interval=600)
    client = DaemonClient(settings.address)
    monkeypatch.setattr(client, "idle_socket", lambda: ours)
    agent = Agent(client, AwsKmsSeal(kms_key.seal_options()), settings)
    daemons.sendall(b"x")
    pause = threading.Thread(target=agent._pause)
    pause.start()
    pause.join(timeout=0.6)
    assert pause.is_alive(), "unread bytes ended the wait as if the daemon had gone"
    agent.stop()
    pause.join(timeout=20)
    assert not pause.is_alive()
    assert ours.recv(1) == b"x", "the watch must not consume what it looked at"
    ours.close()
    daemons.close()
    client.close()
