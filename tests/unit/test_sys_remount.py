"""sys/remount: engines and auth methods move, their data stays."""

from __future__ import annotations

from pathlib import Path

from tests.unit.test_sys_policy import Api


def test_remount_a_secrets_engine_keeps_its_data(tmp_path: Path) -> None:
    api = Api(tmp_path)
    api.call("POST", "secret/data/app", body={"data": {"k": "v"}})
    status, body = api.call("POST", "sys/remount", body={"from": "secret", "to": "moved"})
    assert status == 200, body
    migration = body["data"]["migration_id"]
    assert api.call("GET", "moved/data/app")[1]["data"]["data"] == {"k": "v"}
    assert api.call("GET", "secret/data/app")[0] == 404
    status, body = api.call("GET", f"sys/remount/status/{migration}")
    assert body["data"]["migration_info"] == {"source_mount": "secret/", "target_mount": "moved/", "status": "success"}
    assert "moved/" in api.call("GET", "sys/mounts")[1]["data"]


def test_remount_an_auth_method(tmp_path: Path) -> None:
    api = Api(tmp_path)
    api.call("POST", "sys/auth/userpass", body={"type": "userpass"})
    api.call("POST", "auth/userpass/users/bob", body={"password": "pw"})
    assert api.call("POST", "sys/remount", body={"from": "auth/userpass", "to": "auth/people"})[0] == 200
    assert api.client.post("/v1/auth/people/login/bob", json={"password": "pw"}).status_code == 200
    assert "people/" in api.call("GET", "sys/auth")[1]["data"]


def test_remount_refusals(tmp_path: Path) -> None:
    api = Api(tmp_path)
    api.call("POST", "sys/mounts/other", body={"type": "kv"})
    for body in (
        {"from": "secret", "to": "other"},  # in use
        {"from": "nothing", "to": "x"},
        {"from": "secret", "to": "auth/x"},  # engine to auth
        {"from": "sys", "to": "x"},
        {"from": "auth/token", "to": "auth/t2"},
        {"from": "secret", "to": "cubbyhole"},
        {"from": "secret"},
    ):
        status, answer = api.call("POST", "sys/remount", body=body)
        assert status == 400, (body, answer)
    assert api.call("GET", "sys/remount/status/nope")[0] == 404
    token = api.token("default")
    assert api.call("POST", "sys/remount", token, {"from": "secret", "to": "y"})[0] == 403
