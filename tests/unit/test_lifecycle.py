"""Init, unseal and seal through the core, without HTTP."""

from __future__ import annotations

import base64
import os

import pytest

from tests.kms_fixtures import KmsKey
from vaultd.core.lifecycle import KEYRING, ROOT_KEY, InitRequest, Lifecycle
from vaultd.core.seal_state import SharedSealState
from vaultd.errors import BadRequest, Sealed, StorageError
from vaultd.seal.awskms import AwsKmsSeal
from vaultd.storage.file import FileStorage
from vaultd.storage.inmem import InmemStorage


@pytest.fixture
def shared() -> SharedSealState:
    return SharedSealState.create(lock_memory=False)


def make(shared: SharedSealState, storage=None) -> Lifecycle:
    return Lifecycle(storage or InmemStorage(), shared, seal=None, storage_type="inmem")


def init(lc: Lifecycle, n: int = 5, t: int = 3) -> list[bytes]:
    result = lc.init(InitRequest(secret_shares=n, secret_threshold=t))
    assert len(result["keys"]) == n
    assert [bytes.fromhex(k) for k in result["keys"]] == [base64.b64decode(k) for k in result["keys_base64"]]
    return [bytes.fromhex(k) for k in result["keys"]]


def test_uninitialised_status(shared: SharedSealState) -> None:
    status = make(shared).seal_status()
    assert status["initialized"] is False
    assert status["sealed"] is True
    assert (status["t"], status["n"], status["progress"]) == (0, 0, 0)


@pytest.mark.parametrize(
    ("n", "t", "message"),
    [
        (0, 0, "shares must be at least one"),
        (3, 0, "threshold must be at least one"),
        (256, 3, "shares must be less than 256"),
        (3, 4, "threshold cannot be larger than shares"),
        (3, 1, "threshold must be greater than one"),
    ],
)
def test_init_rejects_bad_share_config(shared: SharedSealState, n: int, t: int, message: str) -> None:
    lc = make(shared)
    with pytest.raises(BadRequest, match=message):
        lc.init(InitRequest(secret_shares=n, secret_threshold=t))
    assert not lc.initialized


def test_init_twice_is_refused(shared: SharedSealState) -> None:
    lc = make(shared)
    init(lc)
    with pytest.raises(BadRequest, match="already initialized"):
        lc.init(InitRequest(secret_shares=1, secret_threshold=1))


def test_unseal_with_threshold_shares_and_progress(shared: SharedSealState) -> None:
    lc = make(shared)
    keys = init(lc)
    assert lc.seal_status()["sealed"] is True
    s1 = lc.submit_share(keys[4])
    assert (s1["sealed"], s1["progress"], s1["t"], s1["n"]) == (True, 1, 3, 5)
    assert s1["nonce"]
    s2 = lc.submit_share(keys[1])
    assert s2["progress"] == 2 and s2["nonce"] == s1["nonce"]
    s3 = lc.submit_share(keys[2])
    assert s3["sealed"] is False and s3["progress"] == 0 and s3["nonce"] == ""
    assert "cluster_id" in s3
    lc.require_unsealed()


def test_bad_shares_change_nothing(shared: SharedSealState) -> None:
    lc = make(shared)
    keys = init(lc)
    other = make(SharedSealState.create(lock_memory=False))
    foreign = init(other)
    lc.submit_share(keys[0])
    with pytest.raises(BadRequest, match="already submitted"):
        lc.submit_share(keys[0])
    with pytest.raises(BadRequest, match="does not belong"):
        lc.submit_share(foreign[1])
    with pytest.raises(BadRequest, match="expected 33 bytes"):
        lc.submit_share(keys[1][:32])
    status = lc.seal_status()
    assert status["progress"] == 1 and status["sealed"] is True
    lc.submit_share(keys[1])
    assert lc.submit_share(keys[2])["sealed"] is False


def test_reset_clears_progress(shared: SharedSealState) -> None:
    lc = make(shared)
    keys = init(lc)
    lc.submit_share(keys[0])
    assert lc.reset_progress()["progress"] == 0
    lc.submit_share(keys[1])
    lc.submit_share(keys[2])
    assert lc.submit_share(keys[3])["sealed"] is False


def test_single_share_is_the_whole_key(shared: SharedSealState) -> None:
    lc = make(shared)
    (key,) = init(lc, 1, 1)
    assert len(key) == 32
    wrong = bytearray(key)
    wrong[0] ^= 1
    with pytest.raises(BadRequest, match="Error unsealing"):
        lc.submit_share(bytes(wrong))
    assert lc.seal_status()["sealed"] is True
    assert lc.submit_share(key)["sealed"] is False


def test_seal_then_every_lifecycle_on_the_shared_state_is_sealed(shared: SharedSealState) -> None:
    storage = InmemStorage()
    a, b = make(shared, storage), make(shared, storage)
    (key,) = init(a, 1, 1)
    a.submit_share(key)
    b.require_unsealed()
    a.seal_now()
    assert shared.sealed_by_operator
    with pytest.raises(Sealed):
        b.require_unsealed()


def test_barrier_encrypts_and_binds_values_to_their_path(shared: SharedSealState, tmp_path) -> None:
    storage = FileStorage(str(tmp_path))
    lc = make(shared, storage)
    (key,) = init(lc, 1, 1)
    lc.submit_share(key)
    lc.require_unsealed()
    lc.barrier.put("logical/x/secret", b"top secret value")
    raw = storage.get("logical/x/secret")
    assert raw is not None and b"top secret value" not in raw
    assert lc.barrier.get("logical/x/secret") == b"top secret value"
    storage.put("logical/x/moved", raw)
    with pytest.raises(StorageError):
        lc.barrier.get("logical/x/moved")
    for path in tmp_path.rglob("*"):
        assert b"top secret value" not in (path.read_bytes() if path.is_file() else b"")


def test_rotate_keeps_old_terms_readable(shared: SharedSealState) -> None:
    storage = InmemStorage()
    lc = make(shared, storage)
    other = make(shared, storage)
    (key,) = init(lc, 1, 1)
    lc.submit_share(key)
    lc.require_unsealed()
    other.require_unsealed()
    lc.barrier.put("a", b"one")
    assert lc.rotate().active == 2
    lc.barrier.put("b", b"two")
    # The other worker learns of the new term from the shared epoch.
    other.require_unsealed()
    assert other.barrier.keyring.active == 2
    assert other.barrier.get("a") == b"one" and other.barrier.get("b") == b"two"


def test_storage_never_holds_keys_in_clear(shared: SharedSealState) -> None:
    storage = InmemStorage()
    lc = make(shared, storage)
    (key,) = init(lc, 1, 1)
    lc.submit_share(key)
    root = shared.root_key()
    assert root is not None
    for name in (ROOT_KEY, KEYRING):
        blob = storage.get(name)
        assert blob is not None and key not in blob and root not in blob


def test_shares_submitted_in_different_processes_count_together(shared: SharedSealState) -> None:
    """Two workers (forked processes) each take a share; a third completes."""
    storage = InmemStorage()
    lc = make(shared, storage)
    keys = init(lc)
    for key in keys[:2]:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            code = 0
            try:
                make(shared, storage).submit_share(key)
            except BaseException:
                code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    assert lc.seal_status()["progress"] == 2
    assert lc.submit_share(keys[2])["sealed"] is False


def test_key_status_counts_encryptions_in_every_worker_until_a_rotation(shared: SharedSealState) -> None:
    storage = InmemStorage()
    a, b = make(shared, storage), make(shared, storage)
    (key,) = init(a, 1, 1)
    a.submit_share(key)
    a.require_unsealed()
    b.require_unsealed()
    before = a.key_status()["encryptions"]
    a.barrier.put("x", b"1")
    b.barrier.put("y", b"2")
    status = b.key_status()
    assert status["encryptions"] == before + 2 and status["term"] == 1
    a.rotate()
    assert b.key_status() == {"encryptions": 0, "install_time": a.barrier.keyring.active_term.install_time, "term": 2}


# -- init under an auto seal (the Vault 1.0 auto-unseal walkthrough) ------------------


@pytest.fixture
def auto(shared: SharedSealState, aws_env: dict[str, str], kms_key: KmsKey) -> Lifecycle:
    """A lifecycle with the real awskms seal, on moto's KMS."""
    return Lifecycle(InmemStorage(), shared, seal=AwsKmsSeal(kms_key.seal_options()), storage_type="inmem")


def test_walkthrough_init_under_an_auto_seal_implies_one_stored_share(auto: Lifecycle) -> None:
    """``-stored-shares=1 -recovery-shares=1 -recovery-threshold=1
    -key-shares=1 -key-threshold=1``: accepted, with a warning that the key
    share counts were implied rather than used."""
    result = auto.init(InitRequest(secret_shares=1, secret_threshold=1, stored_shares=1,
                                   recovery_shares=1, recovery_threshold=1))
    assert result["keys"] == [] and result["keys_base64"] == []
    assert len(result["recovery_keys"]) == 1 and len(result["recovery_keys_base64"]) == 1
    [warning] = result["warnings"]
    assert "secret_shares and secret_threshold of 1 are implied with seal type awskms" in warning
    status = auto.seal_status()
    assert status["type"] == "awskms" and status["recovery_seal"] is True
    assert status["recovery_seal_type"] == "shamir"
    assert (status["initialized"], status["sealed"], status["n"], status["t"]) == (True, False, 1, 1)
    # Vault's order: recovery_seal_type right after recovery_seal.
    keys = list(status)
    assert keys.index("recovery_seal_type") == keys.index("recovery_seal") + 1


def test_auto_seal_init_without_key_shares_has_no_warning(auto: Lifecycle) -> None:
    result = auto.init(InitRequest(recovery_shares=3, recovery_threshold=2))
    assert "warnings" not in result and len(result["recovery_keys"]) == 3


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (InitRequest(secret_shares=5, secret_threshold=3, recovery_shares=1, recovery_threshold=1),
         "parameters secret_shares,secret_threshold must be 1 or omitted with seal type awskms"),
        (InitRequest(secret_shares=1, secret_threshold=2, recovery_shares=1, recovery_threshold=1),
         "parameters secret_threshold must be 1 or omitted"),
        (InitRequest(stored_shares=2, recovery_shares=1, recovery_threshold=1),
         "stored_shares must be 1 with seal type awskms"),
        (InitRequest(secret_shares=1, secret_threshold=1, recovery_shares=3, recovery_threshold=4),
         "threshold cannot be larger than shares"),
    ],
    ids=["key-shares-5", "key-threshold-2", "stored-shares-2", "bad-recovery"],
)
def test_auto_seal_refuses_share_counts_it_cannot_honour(auto: Lifecycle, request_: InitRequest, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        auto.init(request_)
    assert not auto.initialized and list(auto.physical.list("")) == []
    assert auto.seal_status()["recovery_seal_type"] == "shamir"  # also before init


def test_shamir_refuses_stored_shares_and_has_no_recovery_seal_type(shared: SharedSealState) -> None:
    lc = make(shared)
    with pytest.raises(BadRequest, match="stored keys are not supported by the shamir seal"):
        lc.init(InitRequest(secret_shares=1, secret_threshold=1, stored_shares=1))
    assert not lc.initialized
    init(lc, 1, 1)
    assert "recovery_seal_type" not in lc.seal_status()
