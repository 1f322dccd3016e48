"""The agent's HTTP client on urllib3 alone: what leaving requests must not
cost.  The agent runs for the machine's lifetime, so whatever it imports
stays resident (requests is about 4 MiB); and without requests' adapter the
client itself must still refuse hidden retries and keep the environment out
of whom it trusts.  The transport rules shared with requests' time (proxies,
redirects, 4xx/5xx, unix sockets) are tested in test_unsealer_agent.py."""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import json
import socket
import socketserver
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from unsealer.client import DaemonClient, DaemonUnavailable
from unsealer.settings import SettingsError

ROOT = Path(__file__).resolve().parents[2]
STATE = {"boot_id": "b1", "initialized": True, "sealed": True, "seal_type": "awskms", "sealed_by_operator": False}

# Prints who imported requests (if anything does) before the verdict.
_TRIPWIRE = """
import sys, traceback
class Tripwire:
    def find_spec(self, name, path=None, target=None):
        if name == "requests":
            traceback.print_stack()
        return None
sys.meta_path.insert(0, Tripwire())
import unsealer.__main__
sys.exit("requests" in sys.modules)
"""


def test_the_agent_does_not_import_requests() -> None:
    result = subprocess.run([sys.executable, "-c", _TRIPWIRE], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"importing unsealer.__main__ pulled in requests:\n{result.stderr}"


# --- servers ------------------------------------------------------------------------


class _Daemon(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[str]
    mode: str

    def do_GET(self) -> None:
        self.seen.append(self.path)
        if self.mode == "drop":  # what a daemon dying mid-request looks like
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        status, body = (503, b'{"errors": ["busy"]}') if self.mode == "busy" else (200, json.dumps(STATE).encode())
        self.send_response(status)
        if self.mode == "busy":
            self.send_header("Retry-After", "1")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""

    def address_string(self) -> str:
        return "local"


def _handler(mode: str = "ok") -> type[_Daemon]:
    return type("Daemon", (_Daemon,), {"seen": [], "mode": mode})


class _TLSServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    context: ssl.SSLContext

    def get_request(self) -> tuple[socket.socket, object]:
        sock, address = super().get_request()
        return self.context.wrap_socket(sock, server_side=True), address


class _UnixTLSServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    context: ssl.SSLContext

    def get_request(self) -> tuple[socket.socket, object]:
        sock, address = super().get_request()
        return self.context.wrap_socket(sock, server_side=True), address


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca(common_name: str, key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A CA, a server certificate it signed for 127.0.0.1, and a second CA
    that signed nothing."""
    root = tmp_path_factory.mktemp("pki")
    ca_key, other_key, server_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca, other = _ca("unsealer test CA", ca_key), _ca("another CA", other_key)
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(_name("vaultd")).issuer_name(ca.subject)
        .public_key(server_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {name: root / f"{name}.pem" for name in ("ca", "other", "cert", "key")}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["other"].write_bytes(other.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(paths["cert"], paths["key"])
    return {"ca": str(paths["ca"]), "other": str(paths["other"]), "context": context, "dir": root}


# --- TLS ------------------------------------------------------------------------------


def test_https_trusts_ca_file_and_never_the_environment(
    serve: object, pki: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = _handler()
    server = _TLSServer(("127.0.0.1", 0), handler)
    server.context = pki["context"]  # type: ignore[assignment]
    serve(server)  # type: ignore[operator]
    address = f"https://127.0.0.1:{server.server_address[1]}"
    assert DaemonClient(address, ca_file=str(pki["ca"])).state().boot_id == "b1"
    with pytest.raises(DaemonUnavailable, match="SSLError"):
        DaemonClient(address, ca_file=str(pki["other"])).state()
    # OpenSSL's own variables would make the test CA a "system" CA.
    monkeypatch.setenv("SSL_CERT_FILE", str(pki["ca"]))
    monkeypatch.setenv("SSL_CERT_DIR", str(pki["dir"]))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pki["ca"]))
    with pytest.raises(DaemonUnavailable, match="SSLError"):
        DaemonClient(address).state()
    assert handler.seen == ["/v1/sys/vaultd/state"]


def test_tls_over_the_unix_socket_checks_the_chain_against_ca_file(
    serve: object, pki: dict[str, object], tmp_path: Path
) -> None:
    handler = _handler()
    path = tmp_path / "vaultd.sock"
    server = _UnixTLSServer(str(path), handler)
    server.context = pki["context"]  # type: ignore[assignment]
    serve(server)  # type: ignore[operator]
    client = DaemonClient(f"unix://{path}", ca_file=str(pki["ca"]), tls=True)
    assert client.state().boot_id == "b1"
    assert isinstance(client.idle_socket(), ssl.SSLSocket)
    client.close()
    with pytest.raises(DaemonUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
        DaemonClient(f"unix://{path}", ca_file=str(pki["other"]), tls=True).state()
    assert handler.seen == ["/v1/sys/vaultd/state"]


# --- one try per call -----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["busy", "drop"])
def test_the_daemon_is_asked_once_per_call(serve: object, mode: str) -> None:
    """urllib3's default would retry both (a 503 with Retry-After, a
    connection dropped before the answer): the agent's backoff is the only
    retry loop, with its logging and metrics."""
    handler = _handler(mode)
    server = serve(http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler))  # type: ignore[operator]
    with pytest.raises(DaemonUnavailable):
        DaemonClient(f"http://127.0.0.1:{server.server_address[1]}", timeout=5).state()
    assert handler.seen == ["/v1/sys/vaultd/state"]


@pytest.mark.parametrize("address", ["https://127.0.0.1:8200", "unix:///run/vaultd/unseal.sock"])
def test_a_ca_file_that_does_not_exist_is_a_config_error(address: str, tmp_path: Path) -> None:
    """Retrying would not make it appear: the agent ends at start (exit 2)."""
    with pytest.raises(SettingsError, match="does not exist"):
        DaemonClient(address, ca_file=str(tmp_path / "missing.pem"), tls=address.startswith("unix"))
