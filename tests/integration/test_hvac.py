"""hvac, the Python client most Vault users script with (the PyPI release),
driving ``vaultd server`` with 4 workers: seal lifecycle, KV v1 and v2,
tokens and mounts.

hvac turns status codes into exception classes (400 InvalidRequest, 403
Forbidden, 404 InvalidPath, 503 VaultDown), so these tests also pin the
codes a script would branch on.
"""

from __future__ import annotations

import hvac
import hvac.exceptions
import pytest

from tests.integration.support import InitResult, Server


def _client(server: Server, token: str | None = None) -> hvac.Client:
    return hvac.Client(url=server.addr, token=token, timeout=15)


def test_seal_lifecycle(vaultd: Server) -> None:
    client = _client(vaultd)
    assert client.sys.is_initialized() is False
    assert client.sys.read_init_status() == {"initialized": False}

    result = client.sys.initialize(secret_shares=5, secret_threshold=3)
    keys, root = result["keys"], result["root_token"]
    vaultd.known_secrets.extend([*keys, *result["keys_base64"], root])
    assert len(keys) == 5 and len(result["keys_base64"]) == 5
    assert client.sys.is_initialized() is True
    with pytest.raises(hvac.exceptions.InvalidRequest):
        client.sys.initialize(secret_shares=5, secret_threshold=3)

    status = client.sys.read_seal_status()
    assert (status["sealed"], status["t"], status["n"], status["progress"]) == (True, 3, 5, 0)
    assert client.sys.is_sealed() is True

    status = client.sys.submit_unseal_key(keys[0])
    assert status["sealed"] is True and status["progress"] == 1
    status = client.sys.submit_unseal_key(reset=True)
    assert status["progress"] == 0
    status = client.sys.submit_unseal_key(result["keys_base64"][1])
    assert status["progress"] == 1
    status = client.sys.submit_unseal_keys(keys[2:4])
    assert status["sealed"] is False
    assert client.sys.is_sealed() is False

    health = client.sys.read_health_status(method="GET")
    assert health["initialized"] is True and health["sealed"] is False and health["standby"] is False
    assert client.sys.read_leader_status()["ha_enabled"] is False

    client.token = root
    assert client.is_authenticated()
    client.sys.enable_secrets_engine("kv", path="kv", options={"version": "2"})
    client.secrets.kv.v2.create_or_update_secret("app", {"k": "v"}, mount_point="kv")

    client.sys.seal()
    assert client.sys.is_sealed() is True
    with pytest.raises(hvac.exceptions.VaultDown):
        client.secrets.kv.v2.read_secret_version("app", mount_point="kv", raise_on_deleted_version=True)
    # The health endpoint still answers, with 503 for sealed (hvac hands
    # back the raw response for a non-200 health status).
    health_sealed = client.sys.read_health_status(method="GET")
    assert health_sealed.status_code == 503 and health_sealed.json()["sealed"] is True

    client.sys.submit_unseal_keys(keys[1:4])
    read = client.secrets.kv.v2.read_secret_version("app", mount_point="kv", raise_on_deleted_version=True)
    assert read["data"]["data"] == {"k": "v"}


def test_kv_v1(unsealed: tuple[Server, InitResult]) -> None:
    server, init = unsealed
    client = _client(server, init.root_token)
    client.sys.enable_secrets_engine("kv", path="kv1", options={"version": "1"})
    kv = client.secrets.kv.v1

    kv.create_or_update_secret("app/db", {"user": "u", "password": "p1"}, mount_point="kv1")
    kv.create_or_update_secret("app/api", {"key": "k1"}, mount_point="kv1")
    assert kv.read_secret("app/db", mount_point="kv1")["data"] == {"user": "u", "password": "p1"}
    kv.create_or_update_secret("app/db", {"user": "u", "password": "p2"}, mount_point="kv1")
    assert kv.read_secret("app/db", mount_point="kv1")["data"]["password"] == "p2"

    assert kv.list_secrets("", mount_point="kv1")["data"]["keys"] == ["app/"]
    assert kv.list_secrets("app", mount_point="kv1")["data"]["keys"] == ["api", "db"]

    kv.delete_secret("app/db", mount_point="kv1")
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv.read_secret("app/db", mount_point="kv1")
    assert kv.list_secrets("app", mount_point="kv1")["data"]["keys"] == ["api"]
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv.list_secrets("nothing", mount_point="kv1")


# hvac's own patch() calls read_secret_version without the argument.
@pytest.mark.filterwarnings("ignore:The raise_on_deleted_version parameter:DeprecationWarning")
def test_kv_v2(unsealed: tuple[Server, InitResult]) -> None:
    server, init = unsealed
    client = _client(server, init.root_token)
    client.sys.enable_secrets_engine("kv", path="kv2", options={"version": "2"})
    kv = client.secrets.kv.v2

    assert kv.read_configuration(mount_point="kv2")["data"]["max_versions"] == 0
    kv.configure(max_versions=5, mount_point="kv2")
    assert kv.read_configuration(mount_point="kv2")["data"]["max_versions"] == 5

    # create, read, update
    first = kv.create_or_update_secret("svc", {"a": "1"}, mount_point="kv2")
    assert first["data"]["version"] == 1
    second = kv.create_or_update_secret("svc", {"a": "2"}, cas=1, mount_point="kv2")
    assert second["data"]["version"] == 2
    with pytest.raises(hvac.exceptions.InvalidRequest, match="check-and-set"):
        kv.create_or_update_secret("svc", {"a": "x"}, cas=1, mount_point="kv2")
    with pytest.raises(hvac.exceptions.InvalidRequest, match="check-and-set"):
        kv.create_or_update_secret("svc", {"a": "x"}, cas=0, mount_point="kv2")
    latest = kv.read_secret_version("svc", mount_point="kv2", raise_on_deleted_version=True)
    assert latest["data"]["data"] == {"a": "2"} and latest["data"]["metadata"]["version"] == 2
    v1 = kv.read_secret_version("svc", version=1, mount_point="kv2", raise_on_deleted_version=True)
    assert v1["data"]["data"] == {"a": "1"}

    # patch: hvac's (read + cas write) and the HTTP merge-patch hvac's adapter can send
    kv.patch("svc", {"b": "3"}, mount_point="kv2")
    merge = client.adapter.request(
        "PATCH",
        "/v1/kv2/data/svc",
        json={"data": {"a": None, "c": "4"}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert merge["data"]["version"] == 4
    now = kv.read_secret_version("svc", mount_point="kv2", raise_on_deleted_version=True)
    assert now["data"]["data"] == {"b": "3", "c": "4"}

    # list
    kv.create_or_update_secret("team/one", {"x": "1"}, mount_point="kv2")
    assert kv.list_secrets("", mount_point="kv2")["data"]["keys"] == ["svc", "team/"]
    assert kv.list_secrets("team", mount_point="kv2")["data"]["keys"] == ["one"]

    # delete / undelete / destroy
    kv.delete_latest_version_of_secret("svc", mount_point="kv2")
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv.read_secret_version("svc", mount_point="kv2", raise_on_deleted_version=True)
    deleted = kv.read_secret_version("svc", mount_point="kv2", raise_on_deleted_version=False)
    assert deleted["data"]["data"] is None and deleted["data"]["metadata"]["deletion_time"]
    kv.undelete_secret_versions("svc", versions=[4], mount_point="kv2")
    assert kv.read_secret_version("svc", mount_point="kv2", raise_on_deleted_version=True)["data"]["data"] == {
        "b": "3",
        "c": "4",
    }
    kv.delete_secret_versions("svc", versions=[1], mount_point="kv2")
    kv.destroy_secret_versions("svc", versions=[2], mount_point="kv2")
    kv.undelete_secret_versions("svc", versions=[1, 2], mount_point="kv2")  # 2 is destroyed: stays gone
    assert kv.read_secret_version("svc", version=1, mount_point="kv2", raise_on_deleted_version=True)
    # A destroyed version is a 404 with its metadata (hvac raises even with
    # raise_on_deleted_version=False: that covers soft-deleted ones only).
    with pytest.raises(hvac.exceptions.InvalidPath) as destroyed:
        kv.read_secret_version("svc", version=2, mount_point="kv2", raise_on_deleted_version=False)
    body = destroyed.value.json
    assert body["data"]["metadata"]["destroyed"] is True and body["data"]["data"] is None

    # metadata
    kv.update_metadata("svc", max_versions=3, cas_required=True, custom_metadata={"owner": "ops"}, mount_point="kv2")
    meta = kv.read_secret_metadata("svc", mount_point="kv2")["data"]
    assert meta["max_versions"] == 3 and meta["cas_required"] is True
    assert meta["custom_metadata"] == {"owner": "ops"}
    assert meta["current_version"] == 4
    assert meta["versions"]["2"]["destroyed"] is True
    with pytest.raises(hvac.exceptions.InvalidRequest, match="check-and-set parameter required"):
        kv.create_or_update_secret("svc", {"a": "5"}, mount_point="kv2")
    fifth = kv.create_or_update_secret("svc", {"a": "5"}, cas=4, mount_point="kv2")
    assert fifth["data"]["version"] == 5 and fifth["data"]["custom_metadata"] == {"owner": "ops"}
    # The larger of the key's (3) and the mount's (5) max_versions wins, as
    # in Vault: a sixth version prunes the first.
    kv.create_or_update_secret("svc", {"a": "6"}, cas=5, mount_point="kv2")
    meta = kv.read_secret_metadata("svc", mount_point="kv2")["data"]
    assert sorted(meta["versions"]) == ["2", "3", "4", "5", "6"] and meta["oldest_version"] == 2

    kv.delete_metadata_and_all_versions("svc", mount_point="kv2")
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv.read_secret_metadata("svc", mount_point="kv2")
    assert kv.list_secrets("", mount_point="kv2")["data"]["keys"] == ["team/"]


def test_tokens(unsealed: tuple[Server, InitResult]) -> None:
    server, init = unsealed
    root = _client(server, init.root_token)
    created = root.auth.token.create(policies=["default"], ttl="1h", meta={"purpose": "test"})["auth"]
    child_token = created["client_token"]
    server.known_secrets.append(child_token)
    assert created["policies"] == ["default"]
    assert 3500 <= created["lease_duration"] <= 3600 and created["renewable"] is True

    looked = root.auth.token.lookup(child_token)["data"]
    assert looked["accessor"] == created["accessor"]
    assert looked["meta"] == {"purpose": "test"} and looked["policies"] == ["default"]
    assert root.auth.token.lookup_accessor(created["accessor"])["data"]["id"] == ""

    child = _client(server, child_token)
    assert child.auth.token.lookup_self()["data"]["accessor"] == created["accessor"]
    renewed = child.auth.token.renew_self(increment="2h")["auth"]
    assert 7100 <= renewed["lease_duration"] <= 7200
    renewed = root.auth.token.renew(child_token, increment="30m")["auth"]
    assert 1700 <= renewed["lease_duration"] <= 1800
    # The default policy grants no secrets and no token creation.
    with pytest.raises(hvac.exceptions.Forbidden):
        child.sys.list_mounted_secrets_engines()
    with pytest.raises(hvac.exceptions.Forbidden):
        child.auth.token.create(ttl="1h")

    grandchild = root.auth.token.create(ttl="1h")["auth"]["client_token"]
    server.known_secrets.append(grandchild)
    root.auth.token.revoke(child_token)
    with pytest.raises(hvac.exceptions.Forbidden):
        child.auth.token.lookup_self()
    with pytest.raises(hvac.exceptions.Forbidden):
        root.auth.token.lookup(child_token)
    # A sibling is untouched; revoke-self ends it.
    sibling = _client(server, grandchild)
    assert sibling.auth.token.lookup_self()["data"]["policies"] == ["root"]
    sibling.auth.token.revoke_self()
    with pytest.raises(hvac.exceptions.Forbidden):
        sibling.auth.token.lookup_self()


def test_mounts(unsealed: tuple[Server, InitResult]) -> None:
    server, init = unsealed
    client = _client(server, init.root_token)
    sys = client.sys

    sys.enable_secrets_engine("kv", path="team-a", description="team A", options={"version": "2"})
    sys.enable_secrets_engine("kv-v2", path="team-b")
    sys.enable_secrets_engine("kv", path="legacy")
    mounts = sys.list_mounted_secrets_engines()["data"]
    assert {"team-a/", "team-b/", "legacy/", "sys/"} <= set(mounts)
    assert mounts["team-a/"]["description"] == "team A"
    assert mounts["team-a/"]["options"] == {"version": "2"}
    assert mounts["team-b/"]["options"] == {"version": "2"}
    assert "secret/" not in mounts  # only dev mode mounts secret/
    with pytest.raises(hvac.exceptions.InvalidRequest, match="already in use"):
        sys.enable_secrets_engine("kv", path="team-a")
    with pytest.raises(hvac.exceptions.InvalidRequest):
        sys.enable_secrets_engine("no-such-engine", path="x")

    sys.tune_mount_configuration("team-a", default_lease_ttl="1h", max_lease_ttl="2h", description="tuned")
    tuned = sys.read_mount_configuration("team-a")["data"]
    assert tuned["default_lease_ttl"] == 3600 and tuned["max_lease_ttl"] == 7200
    assert tuned["description"] == "tuned"
    assert sys.list_mounted_secrets_engines()["data"]["team-a/"]["config"]["default_lease_ttl"] == 3600

    client.secrets.kv.v2.create_or_update_secret("s", {"v": "1"}, mount_point="team-a")
    sys.disable_secrets_engine("team-a")
    assert "team-a/" not in sys.list_mounted_secrets_engines()["data"]
    # Re-enabling the path starts empty: disabling removed the data.
    sys.enable_secrets_engine("kv", path="team-a", options={"version": "2"})
    with pytest.raises(hvac.exceptions.InvalidPath):
        client.secrets.kv.v2.read_secret_version("s", mount_point="team-a", raise_on_deleted_version=True)

    auth = sys.list_auth_methods()["data"]
    assert auth["token/"]["type"] == "token"
