"""generate-root in process, under the shamir seal: two cores over one shared
state and one store stand for two gunicorn workers.  (The awskms seal, with
recovery keys, and the real CLIs are in tests/integration/test_generate_root_server.py.)"""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from vaultd.api.app import create_app
from vaultd.core.core import Core, CoreSettings
from vaultd.core.generate_root import OTP_LENGTH, decode_token, encode_token
from vaultd.core.lifecycle import InitRequest
from vaultd.core.seal_state import SharedSealState
from vaultd.errors import BadRequest
from vaultd.storage.inmem import InmemStorage


class Worker:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.client: FlaskClient = create_app(core, max_request_size=None).test_client()

    def call(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        headers = {"X-Vault-Token": token} if token else {}
        response = self.client.open(f"/v1/{path}", method=method, json=body, headers=headers)
        return response.status_code, (response.get_json(silent=True) if response.data else None)


@pytest.fixture
def cluster() -> tuple[Worker, Worker, dict[str, Any]]:
    storage = InmemStorage()
    shared = SharedSealState.create(lock_memory=False)
    first = Core(storage, shared, CoreSettings())
    init = first.init(InitRequest(secret_shares=5, secret_threshold=3))
    for key in init["keys"][:3]:
        first.lifecycle.submit_share(bytes.fromhex(key))
    second = Core(storage, shared, CoreSettings())
    return Worker(first), Worker(second), init


def test_quorum_across_workers_mints_a_working_root_token(cluster: tuple[Worker, Worker, dict[str, Any]]) -> None:
    one, two, init = cluster
    status, body = one.call("GET", "sys/generate-root/attempt")
    assert (status, body["started"], body["progress"], body["required"]) == (200, False, 0, 3)
    assert body["otp_length"] == OTP_LENGTH
    status, started = one.call("PUT", "sys/generate-root/attempt", {})
    assert status == 200, started
    otp, nonce = started["otp"], started["nonce"]
    assert len(otp) == OTP_LENGTH and started["started"] is True
    # Progress is shared: each share may land on another worker.
    status, body = two.call("PUT", "sys/generate-root/update", {"key": init["keys"][0], "nonce": nonce})
    assert (status, body["progress"], body["complete"]) == (200, 1, False), body
    assert one.call("GET", "sys/generate-root/attempt")[1]["progress"] == 1
    assert one.call("GET", "sys/generate-root/attempt")[1]["otp"] == ""  # the OTP is shown once
    status, body = one.call("PUT", "sys/generate-root/update", {"key": init["keys_base64"][3], "nonce": nonce})
    assert (status, body["progress"]) == (200, 2), body
    status, body = two.call("PUT", "sys/generate-root/update", {"key": init["keys"][4], "nonce": nonce})
    assert status == 200 and body["complete"] is True, body
    token = decode_token(body["encoded_token"], otp)
    assert token != init["root_token"]
    status, looked = one.call("GET", "auth/token/lookup-self", token=token)
    assert status == 200 and looked["data"]["policies"] == ["root"], looked
    # The attempt is over everywhere.
    assert two.call("GET", "sys/generate-root/attempt")[1]["started"] is False


def test_refusals_change_nothing(cluster: tuple[Worker, Worker, dict[str, Any]]) -> None:
    one, two, init = cluster
    assert one.call("PUT", "sys/generate-root/update", {"key": init["keys"][0], "nonce": "x"})[0] == 400
    nonce = one.call("PUT", "sys/generate-root/attempt", {})[1]["nonce"]
    status, body = two.call("PUT", "sys/generate-root/attempt", {})
    assert status == 400 and "already in progress" in body["errors"][0]
    assert one.call("PUT", "sys/generate-root/update", {"key": init["keys"][0], "nonce": "wrong"})[0] == 400
    assert one.call("PUT", "sys/generate-root/update", {"key": init["keys"][0], "nonce": nonce})[0] == 200
    status, body = two.call("PUT", "sys/generate-root/update", {"key": init["keys"][0], "nonce": nonce})
    assert status == 400 and "already been provided" in body["errors"][0]
    # A share of another server is refused when given, not at the threshold.
    other = Core(InmemStorage(), SharedSealState.create(lock_memory=False), CoreSettings())
    foreign = other.init(InitRequest(secret_shares=5, secret_threshold=3))["keys"][0]
    status, body = one.call("PUT", "sys/generate-root/update", {"key": foreign, "nonce": nonce})
    assert status == 400 and "does not belong" in body["errors"][0]
    for bad in ("zz-not-a-key", "abcd", ""):
        assert one.call("PUT", "sys/generate-root/update", {"key": bad, "nonce": nonce})[0] == 400
    assert one.call("PUT", "sys/generate-root/update", {"key": 5, "nonce": nonce})[0] == 400
    assert one.call("GET", "sys/generate-root/attempt")[1]["progress"] == 1
    assert one.call("PUT", "sys/generate-root/attempt", {"otp": "short"})[0] == 400
    assert one.call("PUT", "sys/generate-root/attempt", {"pgp_key": "a2V5"})[0] == 400


def test_cancel_and_seal_end_the_attempt(cluster: tuple[Worker, Worker, dict[str, Any]]) -> None:
    one, two, init = cluster
    nonce = one.call("PUT", "sys/generate-root/attempt", {})[1]["nonce"]
    assert one.call("PUT", "sys/generate-root/update", {"key": init["keys"][0], "nonce": nonce})[0] == 200
    assert two.call("DELETE", "sys/generate-root/attempt")[0] == 204
    assert one.call("GET", "sys/generate-root/attempt")[1] == {
        **one.call("GET", "sys/generate-root/attempt")[1], "started": False, "progress": 0, "nonce": ""}
    nonce = one.call("PUT", "sys/generate-root/attempt", {})[1]["nonce"]
    assert one.call("PUT", "sys/generate-root/update", {"key": init["keys"][0], "nonce": nonce})[0] == 200
    assert one.call("PUT", "sys/seal", token=init["root_token"])[0] == 204
    assert two.call("GET", "sys/generate-root/attempt")[1]["started"] is False
    # Sealed: no attempt may start.
    assert one.call("PUT", "sys/generate-root/attempt", {})[0] == 503


def test_client_otp_and_the_openbao_dialect(cluster: tuple[Worker, Worker, dict[str, Any]]) -> None:
    one, _two, init = cluster
    root = init["root_token"]
    otp = "A" * OTP_LENGTH
    assert one.call("PUT", "sys/generate-root-token/attempt", {"otp": otp})[0] == 403  # needs a token
    status, body = one.call("PUT", "sys/generate-root-token/attempt", {"otp": otp}, token=root)
    assert status == 200 and body["data"]["otp"] == "" and body["data"]["started"] is True, body
    nonce = body["data"]["nonce"]
    for key in init["keys"][1:4]:
        status, body = one.call("PUT", "sys/generate-root-token/update", {"key": key, "nonce": nonce}, token=root)
        assert status == 200, body
    encoded = body["data"]["encoded_token"]
    status, decoded = one.call("PUT", "sys/decode-token", {"encoded_token": encoded, "otp": otp})
    assert status == 200, decoded
    assert one.call("GET", "auth/token/lookup-self", token=decoded["data"]["token"])[0] == 200


def test_shares_of_the_right_server_that_do_not_combine_are_refused(
    cluster: tuple[Worker, Worker, dict[str, Any]],
) -> None:
    """A share that gets past the known-share check (a server initialised
    before share hashes were kept has none) but does not combine with the
    others into the unseal key: the attempt ends at the threshold, no token."""
    one, _two, init = cluster
    core = one.core
    core.generate_root.start(otp="B" * OTP_LENGTH)
    nonce = core.generate_root.status()["nonce"]
    keys = [bytes.fromhex(k) for k in init["keys"][:3]]
    core.generate_root.update(keys[0], nonce)
    core.generate_root.update(keys[1], nonce)
    # Forget the known-share list, as a server initialised without it would.
    config = core.lifecycle.seal_config()
    assert config is not None
    tampered = bytes([keys[2][0] ^ 1]) + keys[2][1:]
    config.share_hashes = []
    core.lifecycle.seal_config = lambda: config  # type: ignore[method-assign]
    with pytest.raises(BadRequest, match="do not reconstruct"):
        core.generate_root.update(tampered, nonce)
    assert core.generate_root.status()["started"] is False


def test_encoding_round_trip() -> None:
    token, otp = "s." + "x" * 24, "Q" * OTP_LENGTH
    assert decode_token(encode_token(token, otp), otp) == token
    with pytest.raises(BadRequest):
        decode_token("!!!", otp)
    with pytest.raises(BadRequest):
        decode_token(encode_token(token, otp), otp[:-1])
