"""rekey in process: two cores over one shared state and one store stand for
two gunicorn workers; a third core over the same store and a fresh shared
state stands for the server after a restart.  Under awskms the seal is the
real one, on moto's KMS.  (The real CLIs and hvac on a multi-worker server
are in tests/integration/test_rekey_server.py.)"""

from __future__ import annotations

import base64
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.kms_fixtures import KmsKey
from vaultd.api.app import create_app
from vaultd.core.core import Core, CoreSettings
from vaultd.core.lifecycle import ROOT_KEY, SEAL_CONFIG, STORED_KEY, InitRequest, SealConfig
from vaultd.core.rekey import Rekey
from vaultd.core.seal_state import SharedSealState
from vaultd.crypto import aead, shamir
from vaultd.seal.awskms import AwsKmsSeal
from vaultd.seal.base import StoredKey
from vaultd.storage.base import Op
from vaultd.storage.file import FileStorage
from vaultd.storage.inmem import InmemStorage


class Worker:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.client: FlaskClient = create_app(core, max_request_size=None).test_client()

    def call(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        headers = {"X-Vault-Token": token} if token else {}
        response = self.client.open(f"/v1/{path}", method=method, json=body, headers=headers)
        return response.status_code, (response.get_json(silent=True) if response.data else None)

    def ok(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        status, answer = self.call(method, path, body, token)
        assert status == 200, (method, path, status, answer)
        return answer

    def unseal(self, keys: Sequence[str]) -> tuple[int, Any]:
        status, body = 0, None
        for key in keys:
            status, body = self.call("PUT", "sys/unseal", {"key": key})
            if status != 200 or not body["sealed"]:
                break
        return status, body


@pytest.fixture
def store() -> InmemStorage:
    return InmemStorage()


@pytest.fixture
def cluster(store: InmemStorage) -> tuple[Worker, Worker, dict[str, Any]]:
    shared = SharedSealState.create(lock_memory=False)
    first = Core(store, shared, CoreSettings())
    init = first.init(InitRequest(secret_shares=5, secret_threshold=3))
    for key in init["keys"][:3]:
        first.lifecycle.submit_share(bytes.fromhex(key))
    return Worker(first), Worker(Core(store, shared, CoreSettings())), init


def _rekey(one: Worker, two: Worker, old: Sequence[str], *, shares: int, threshold: int,
           verify: bool = False, recovery: bool = False) -> dict[str, Any]:
    """Start on one worker, give the shares alternately on both; the last answer."""
    prefix = "sys/rekey-recovery-key" if recovery else "sys/rekey"
    started = one.ok("PUT", f"{prefix}/init", {"secret_shares": shares, "secret_threshold": threshold,
                                               "require_verification": verify})
    assert started["started"] is True and (started["n"], started["t"]) == (shares, threshold), started
    body: dict[str, Any] = {}
    for i, key in enumerate(old):
        body = (one, two)[i % 2].ok("PUT", f"{prefix}/update", {"key": key, "nonce": started["nonce"]})
        if body.get("complete"):
            break
        assert body["progress"] == i + 1 and body["nonce"] == started["nonce"], body
    assert body["complete"] is True and body["nonce"] == started["nonce"], body
    return body


def test_rekey_across_workers_replaces_the_unseal_keys(
    cluster: tuple[Worker, Worker, dict[str, Any]], store: InmemStorage, caplog: pytest.LogCaptureFixture,
) -> None:
    one, two, init = cluster
    caplog.set_level(logging.INFO, logger="vaultd")
    assert one.ok("GET", "sys/rekey/init") == {
        "nonce": "", "started": False, "t": 0, "n": 0, "progress": 0, "required": 3,
        "pgp_fingerprints": None, "backup": False, "verification_required": False}
    result = _rekey(one, two, init["keys"][1:4], shares=3, threshold=2)
    assert len(result["keys"]) == 3 and result["verification_required"] is False
    assert [bytes.fromhex(k) for k in result["keys"]] == [base64.b64decode(k) for k in result["keys_base64"]]
    # Done everywhere; seal-status already shows the new shape on both workers.
    assert two.ok("GET", "sys/rekey/init")["started"] is False
    for worker in (one, two):
        status = worker.ok("GET", "sys/seal-status")
        assert (status["n"], status["t"], status["sealed"]) == (3, 2, False)
    assert one.call("PUT", "sys/seal", token=init["root_token"])[0] == 204
    # The old keys are refused on sight, the new ones unseal.
    status, body = two.call("PUT", "sys/unseal", {"key": init["keys"][0]})
    assert status == 400 and "does not belong" in body["errors"][0]
    status, body = one.unseal(result["keys"][1:])
    assert status == 200 and body["sealed"] is False, body
    # After a restart (a new shared state, the same store) the same holds.
    restarted = Worker(Core(store, SharedSealState.create(lock_memory=False), CoreSettings()))
    assert restarted.call("PUT", "sys/unseal", {"key": init["keys"][2]})[0] == 400
    status, body = restarted.unseal(result["keys_base64"][:2])
    assert status == 200 and body["sealed"] is False, body
    events = [getattr(r, "journal_fields", {}).get("VAULTD_EVENT") for r in caplog.records]
    assert "rekey_started" in events and "rekey_completed" in events
    for secret in (*init["keys"], *result["keys"], *result["keys_base64"]):
        assert secret not in caplog.text


def test_verification_holds_the_change_until_new_keys_come_back(
    cluster: tuple[Worker, Worker, dict[str, Any]], store: InmemStorage,
) -> None:
    one, two, init = cluster
    before = store.get(SEAL_CONFIG)
    result = _rekey(one, two, init["keys"][:3], shares=4, threshold=3, verify=True)
    vnonce = result["verification_nonce"]
    assert result["verification_required"] is True and vnonce and len(result["keys"]) == 4
    assert store.get(SEAL_CONFIG) == before  # nothing changed yet
    status = two.ok("GET", "sys/rekey/init")
    assert status["started"] is True and status["verification_nonce"] == vnonce and status["progress"] == 0
    # Update is over: more old keys are refused, with the verification nonce named.
    status_code, body = one.call("PUT", "sys/rekey/update", {"key": init["keys"][4], "nonce": result["nonce"]})
    assert status_code == 400 and vnonce in body["errors"][0]
    assert two.ok("GET", "sys/rekey/verify") == {"nonce": vnonce, "started": True, "t": 3, "n": 4, "progress": 0}
    # Wrong nonce, an old key, are refused and count for nothing.
    assert one.call("PUT", "sys/rekey/verify", {"key": result["keys"][0], "nonce": "nope"})[0] == 400
    status_code, body = one.call("PUT", "sys/rekey/verify", {"key": init["keys"][0], "nonce": vnonce})
    assert status_code == 400 and "not one of the new keys" in body["errors"][0]
    progress = two.ok("PUT", "sys/rekey/verify", {"key": result["keys"][3], "nonce": vnonce})
    assert progress["progress"] == 1 and progress["nonce"] == vnonce
    # DELETE on verify starts verification over under a new nonce.
    restarted = one.ok("DELETE", "sys/rekey/verify")
    assert restarted["progress"] == 0 and restarted["nonce"] != vnonce
    vnonce = restarted["nonce"]
    assert store.get(SEAL_CONFIG) == before
    for i, key in enumerate(result["keys"][1:4]):
        done = (one, two)[i % 2].ok("PUT", "sys/rekey/verify", {"key": key, "nonce": vnonce})
    assert done == {"nonce": vnonce, "complete": True}
    assert store.get(SEAL_CONFIG) != before
    assert two.ok("GET", "sys/rekey/init")["started"] is False
    assert one.call("PUT", "sys/seal", token=init["root_token"])[0] == 204
    assert two.call("PUT", "sys/unseal", {"key": init["keys"][1]})[0] == 400
    status_code, body = two.unseal(result["keys"][:3])
    assert status_code == 200 and body["sealed"] is False


def test_cancel_during_verification_keeps_the_old_keys(
    cluster: tuple[Worker, Worker, dict[str, Any]], store: InmemStorage,
) -> None:
    one, two, init = cluster
    before = store.get(SEAL_CONFIG), store.get(ROOT_KEY)
    result = _rekey(one, two, init["keys"][2:5], shares=3, threshold=2, verify=True)
    assert two.call("DELETE", "sys/rekey/init")[0] == 204
    assert one.call("GET", "sys/rekey/verify")[0] == 400
    late = {"key": result["keys"][0], "nonce": result["verification_nonce"]}
    status, body = one.call("PUT", "sys/rekey/verify", late)
    assert status == 400, body
    assert (store.get(SEAL_CONFIG), store.get(ROOT_KEY)) == before
    # A seal, too, ends an attempt in verification.
    result = _rekey(one, two, init["keys"][:3], shares=3, threshold=2, verify=True)
    assert one.call("PUT", "sys/seal", token=init["root_token"])[0] == 204
    assert (store.get(SEAL_CONFIG), store.get(ROOT_KEY)) == before
    assert two.unseal(init["keys"][:3])[1]["sealed"] is False
    assert one.ok("GET", "sys/rekey/init")["started"] is False


def test_refusals_change_nothing(cluster: tuple[Worker, Worker, dict[str, Any]], store: InmemStorage) -> None:
    one, two, init = cluster
    before = store.get(SEAL_CONFIG)
    for body, text in (
        ({"secret_shares": 3, "secret_threshold": 2, "pgp_keys": ["a2V5", "a2V5", "a2V5"]}, "pgp_keys"),
        ({"secret_shares": 3, "secret_threshold": 2, "backup": True}, "backup"),
        ({"secret_shares": 2, "secret_threshold": 3}, "threshold cannot be larger"),
        ({"secret_shares": 3, "secret_threshold": 1}, "greater than one"),
        ({}, "at least one"),
        ({"secret_shares": "3", "secret_threshold": 2}, "wrong type"),
    ):
        status, answer = one.call("PUT", "sys/rekey/init", body)
        assert status == 400 and text in answer["errors"][0], (body, answer)
    status, answer = one.call("PUT", "sys/rekey-recovery-key/init", {"secret_shares": 3, "secret_threshold": 2})
    assert status == 400 and "not supported" in answer["errors"][0]
    assert one.call("PUT", "sys/rekey/update", {"key": init["keys"][0], "nonce": "x"})[0] == 400
    nonce = one.ok("PUT", "sys/rekey/init", {"secret_shares": 3, "secret_threshold": 2})["nonce"]
    status, answer = two.call("PUT", "sys/rekey/init", {"secret_shares": 3, "secret_threshold": 2})
    assert status == 400 and "already in progress" in answer["errors"][0]
    assert one.call("PUT", "sys/rekey/update", {"key": init["keys"][0], "nonce": "wrong"})[0] == 400
    assert one.ok("PUT", "sys/rekey/update", {"key": init["keys"][0], "nonce": nonce})["progress"] == 1
    status, answer = two.call("PUT", "sys/rekey/update", {"key": init["keys_base64"][0], "nonce": nonce})
    assert status == 400 and "already been provided" in answer["errors"][0]
    other = Core(InmemStorage(), SharedSealState.create(lock_memory=False), CoreSettings())
    foreign = other.init(InitRequest(secret_shares=5, secret_threshold=3))["keys"][0]
    status, answer = one.call("PUT", "sys/rekey/update", {"key": foreign, "nonce": nonce})
    assert status == 400 and "does not belong" in answer["errors"][0]
    for bad in ("zz-not-a-key", "abcd", "", 5, None):
        assert one.call("PUT", "sys/rekey/update", {"key": bad, "nonce": nonce})[0] == 400
    assert one.call("PUT", "sys/rekey/verify", {"key": init["keys"][1], "nonce": nonce})[0] == 400
    assert two.ok("GET", "sys/rekey/init")["progress"] == 1
    assert store.get(SEAL_CONFIG) == before
    # Sealed: 503 for everything but the shares count.
    assert one.call("PUT", "sys/seal", token=init["root_token"])[0] == 204
    assert one.call("GET", "sys/rekey/init")[0] == 503
    assert one.call("PUT", "sys/rekey/init", {"secret_shares": 3, "secret_threshold": 2})[0] == 503


def test_shares_that_do_not_make_the_key_are_refused(store: InmemStorage) -> None:
    """With one unseal key there are no share verifiers: a wrong 32-byte key
    passes the first checks and must fail at the threshold, changing nothing."""
    shared = SharedSealState.create(lock_memory=False)
    core = Core(store, shared, CoreSettings())
    init = core.init(InitRequest(secret_shares=1, secret_threshold=1))
    core.lifecycle.submit_share(bytes.fromhex(init["keys"][0]))
    worker = Worker(core)
    before = store.get(SEAL_CONFIG), store.get(ROOT_KEY)
    nonce = worker.ok("PUT", "sys/rekey/init", {"secret_shares": 1, "secret_threshold": 1})["nonce"]
    status, body = worker.call("PUT", "sys/rekey/update", {"key": "ab" * 32, "nonce": nonce})
    assert status == 400 and "do not reconstruct" in body["errors"][0]
    assert (store.get(SEAL_CONFIG), store.get(ROOT_KEY)) == before
    # The attempt stays, its progress reset, and the right key completes it.
    assert worker.ok("GET", "sys/rekey/init")["progress"] == 0
    result = worker.ok("PUT", "sys/rekey/update", {"key": init["keys"][0], "nonce": nonce})
    assert result["complete"] is True and len(result["keys"]) == 1
    worker.call("PUT", "sys/seal", token=init["root_token"])
    assert worker.call("PUT", "sys/unseal", {"key": init["keys"][0]})[0] == 400
    assert worker.unseal(result["keys"])[1]["sealed"] is False


class FailingStore(InmemStorage):
    """A store whose next transaction fails (a full disk at the worst moment)."""

    fail = False

    def transaction(self, ops: Sequence[Op]) -> None:
        if self.fail:
            raise OSError("no space left on device")
        super().transaction(ops)


def test_a_failed_write_leaves_the_old_keys() -> None:
    store = FailingStore()
    shared = SharedSealState.create(lock_memory=False)
    core = Core(store, shared, CoreSettings())
    init = core.init(InitRequest(secret_shares=3, secret_threshold=2))
    for key in init["keys"][:2]:
        core.lifecycle.submit_share(bytes.fromhex(key))
    worker = Worker(core)
    nonce = worker.ok("PUT", "sys/rekey/init", {"secret_shares": 3, "secret_threshold": 2})["nonce"]
    worker.ok("PUT", "sys/rekey/update", {"key": init["keys"][0], "nonce": nonce})
    store.fail = True
    status, _ = worker.call("PUT", "sys/rekey/update", {"key": init["keys"][1], "nonce": nonce})
    assert status >= 500
    store.fail = False
    worker.call("PUT", "sys/seal", token=init["root_token"])
    assert worker.unseal(init["keys"][1:])[1]["sealed"] is False


class Killed(BaseException):
    """A ``kill -9`` between two writes: nothing after it runs."""


class KilledFileStorage(FileStorage):
    """The file backend, whose transactions are applied one write at a time,
    killed after ``writes_left`` more writes."""

    writes_left: int | None = None

    def put(self, key: str, value: bytes) -> None:
        if self.writes_left is not None:
            if self.writes_left == 0:
                raise Killed()
            self.writes_left -= 1
        super().put(key, value)


@pytest.mark.parametrize("writes", [0, 1, 2])
def test_kill_during_the_verified_commit_on_file_storage(tmp_path: Path, writes: int) -> None:
    """Killed after the redo record (writes >= 1) the new keys work after a
    restart; killed before it, the old ones; never neither."""
    store = KilledFileStorage(str(tmp_path))
    shared = SharedSealState.create(lock_memory=False)
    core = Core(store, shared, CoreSettings())
    init = core.init(InitRequest(secret_shares=3, secret_threshold=2))
    for key in init["keys"][:2]:
        core.lifecycle.submit_share(bytes.fromhex(key))
    rekey = Rekey(core.lifecycle, shared)
    nonce = rekey.start(False, secret_shares=3, secret_threshold=2, require_verification=True)["nonce"]
    rekey.update(False, bytes.fromhex(init["keys"][0]), nonce)
    result = rekey.update(False, bytes.fromhex(init["keys"][1]), nonce)
    assert result is not None
    rekey.verify(False, bytes.fromhex(result["keys"][0]), result["verification_nonce"])
    store.writes_left = writes
    with pytest.raises(Killed):
        rekey.verify(False, bytes.fromhex(result["keys"][1]), result["verification_nonce"])
    restarted = Worker(Core(FileStorage(str(tmp_path)), SharedSealState.create(lock_memory=False), CoreSettings()))
    works, refused = (result["keys"], init["keys"]) if writes else (init["keys"], result["keys"])
    assert restarted.call("PUT", "sys/unseal", {"key": refused[0]})[0] == 400
    status, body = restarted.unseal(works[1:])
    assert status == 200 and body["sealed"] is False, body


# -- awskms: recovery keys, and the barrier's wrapped key ---------------------------------


def _auto(store: InmemStorage, kms_key: KmsKey, *, break_glass: bool = False) -> tuple[Worker, Worker, dict[str, Any]]:
    shared = SharedSealState.create(lock_memory=False)
    seal = AwsKmsSeal(kms_key.seal_options())
    first = Core(store, shared, CoreSettings(seal=seal))
    init = first.init(InitRequest(recovery_shares=5, recovery_threshold=3, break_glass=break_glass))
    second = Core(store, shared, CoreSettings(seal=AwsKmsSeal(kms_key.seal_options())))
    return Worker(first), Worker(second), init


def _generate_root(worker: Worker, keys: Sequence[str]) -> tuple[int, Any]:
    nonce = worker.ok("PUT", "sys/generate-root/attempt", {})["nonce"]
    status, body = 0, None
    for key in keys:
        status, body = worker.call("PUT", "sys/generate-root/update", {"key": key, "nonce": nonce})
        if status != 200:
            worker.call("DELETE", "sys/generate-root/attempt")
            break
    return status, body


def test_recovery_rekey_under_awskms(
    store: InmemStorage, aws_env: dict[str, str], kms_key: KmsKey,
) -> None:
    one, two, init = _auto(store, kms_key)
    old = init["recovery_keys"]
    root_key_before = store.get(ROOT_KEY)
    assert one.ok("GET", "sys/rekey-recovery-key/init")["required"] == 3
    result = _rekey(one, two, old[:3], shares=4, threshold=2, verify=True, recovery=True)
    vnonce = result["verification_nonce"]
    for i, key in enumerate(result["keys"][2:4]):
        done = (two, one)[i].ok("PUT", "sys/rekey-recovery-key/verify", {"key": key, "nonce": vnonce})
    assert done["complete"] is True
    assert store.get(ROOT_KEY) == root_key_before  # the unseal key did not change
    status = one.ok("GET", "sys/seal-status")
    assert (status["n"], status["t"]) == (4, 2)
    # generate-root now takes the new recovery keys, not the old ones.
    status_code, body = _generate_root(two, old[:3])
    assert status_code == 400 and "does not belong" in body["errors"][0]
    status_code, body = _generate_root(one, result["keys"][:2])
    assert status_code == 200 and body["complete"] is True, body


def test_break_glass_recovery_rekey_keeps_shares_of_the_kek(
    store: InmemStorage, aws_env: dict[str, str], kms_key: KmsKey,
) -> None:
    one, two, init = _auto(store, kms_key, break_glass=True)
    kek = shamir.combine([bytes.fromhex(k) for k in init["recovery_keys"][:3]])
    result = _rekey(one, two, init["recovery_keys"][1:4], shares=3, threshold=2, recovery=True)
    assert shamir.combine([bytes.fromhex(k) for k in result["keys"][:2]]) == kek
    assert init["recovery_keys"][0] not in result["keys"]
    # They still unseal (break glass); the old ones are refused.
    assert one.call("PUT", "sys/seal", token=init["root_token"])[0] == 204
    assert two.call("PUT", "sys/unseal", {"key": init["recovery_keys"][0]})[0] == 400
    assert two.unseal(result["keys"][1:])[1]["sealed"] is False
    # A barrier rekey would orphan them: refused.
    status, body = one.call("PUT", "sys/rekey/init", {})
    assert status == 400 and "break_glass" in body["errors"][0]


def test_barrier_rekey_under_awskms_rewraps_through_kms(
    store: InmemStorage, aws_env: dict[str, str], kms_key: KmsKey,
) -> None:
    one, two, init = _auto(store, kms_key)
    seal = AwsKmsSeal(kms_key.seal_options())
    old_stored = StoredKey.from_json(store.get(STORED_KEY) or b"")
    old_kek = seal.unwrap(old_stored)
    status_code, body = one.call("PUT", "sys/rekey/init", {"require_verification": True})
    assert status_code == 400 and "verification not supported" in body["errors"][0]
    started = one.ok("PUT", "sys/rekey/init", {"secret_shares": 5, "secret_threshold": 3})
    assert (started["n"], started["t"], started["required"]) == (0, 0, 3)
    result: dict[str, Any] = {}
    for i, key in enumerate(init["recovery_keys"][2:5]):
        result = (one, two)[i % 2].ok("PUT", "sys/rekey/update", {"key": key, "nonce": started["nonce"]})
    assert result["complete"] is True and result["keys"] == []
    new_kek = seal.unwrap(StoredKey.from_json(store.get(STORED_KEY) or b""))
    assert new_kek != old_kek
    root_key = aead.decrypt(new_kek, store.get(ROOT_KEY) or b"", ROOT_KEY.encode())
    with pytest.raises(aead.AuthenticationError):
        aead.decrypt(old_kek, store.get(ROOT_KEY) or b"", ROOT_KEY.encode())
    assert len(root_key) == 32
    # What the agent does after a restart: unwrap the stored key, submit it.
    restarted = Core(store, SharedSealState.create(lock_memory=False), CoreSettings(seal=seal))
    with pytest.raises(Exception, match="does not decrypt"):
        restarted.lifecycle.submit_unwrapped_key(old_kek, restarted.shared.boot_id)
    restarted.lifecycle.submit_unwrapped_key(new_kek, restarted.shared.boot_id)
    assert Worker(restarted).ok("GET", "sys/seal-status")["sealed"] is False
    assert SealConfig.from_json(store.get(SEAL_CONFIG) or b"").recovery_shares == 5
