"""Seal migration decisions in the core, without HTTP: shamir -> awskms,
awskms -> shamir (with the agent's key, and break-glass without it), and
awskms key A -> key B, on moto's KMS.  A new :class:`Lifecycle` over the same
store with a fresh shared state stands for a restart with an edited config;
``seal.unwrap`` of the stored key is what the agent does (the daemon never
calls Decrypt).  A storage that "crashes" part-way through the switch's
transaction checks that every prefix of it leaves a server that unseals."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.kms_fixtures import KmsKey, create_kms_key
from vaultd.core import seal_migration
from vaultd.core.lifecycle import (
    SEAL_CONFIG,
    InitRequest,
    Lifecycle,
    SealConfig,
    is_known_share,
    is_recovery_key,
)
from vaultd.core.seal_state import SharedSealState
from vaultd.crypto import shamir
from vaultd.errors import BadRequest
from vaultd.seal.awskms import AwsKmsSeal
from vaultd.storage.base import Op, Put, Storage
from vaultd.storage.file import FileStorage
from vaultd.storage.inmem import InmemStorage


def boot(store: Storage, seal: AwsKmsSeal | None = None, disabled: str = "") -> Lifecycle:
    """A fresh start of the daemon over ``store`` with the given config."""
    return Lifecycle(store, SharedSealState.create(lock_memory=False), seal=seal, storage_type="inmem",
                     disabled_seal_type=disabled)


def agent_unseal(lc: Lifecycle, seal: AwsKmsSeal) -> dict[str, object]:
    kek = seal.unwrap(lc.stored_key())
    return lc.submit_unwrapped_key(kek, lc.shared.boot_id)


def write_secret(lc: Lifecycle) -> None:
    lc.require_unsealed()
    lc.barrier.put("secret/x", b"intact")


def read_secret(lc: Lifecycle) -> bytes | None:
    lc.require_unsealed()
    return lc.barrier.get("secret/x")


def config_of(store: Storage) -> SealConfig:
    blob = store.get(SEAL_CONFIG)
    assert blob is not None
    return SealConfig.from_json(blob)


def seal_a(kms_key: KmsKey) -> AwsKmsSeal:
    return AwsKmsSeal(kms_key.seal_options())


# -- what the config asks for ------------------------------------------------------


def test_detect_reads_the_config_against_the_store(aws_env: dict[str, str], kms_key: KmsKey) -> None:
    shamir_cfg = SealConfig("shamir", 5, 3)
    auto_cfg = SealConfig("awskms", 1, 1, 3, 2, seal_key_id=kms_key.key_id)
    a = seal_a(kms_key)
    b = AwsKmsSeal(kms_key.seal_options(kms_key_id="other-key"))
    m = seal_migration.detect
    assert m(shamir_cfg, None, "", "") is None
    assert m(shamir_cfg, None, "awskms", "") is None  # migrated to shamir, stanza still there
    assert m(shamir_cfg, a, "", "") == seal_migration.Migration("shamir", "awskms")
    assert m(auto_cfg, a, "", "") is None
    assert m(auto_cfg, None, "awskms", "") == seal_migration.Migration("awskms", "shamir")
    assert m(auto_cfg, b, "awskms", "") == seal_migration.Migration("awskms", "awskms")
    assert m(auto_cfg, a, "awskms", "") is None  # A -> B done; A still listed
    legacy = SealConfig("awskms", 1, 1, 3, 2)
    assert m(legacy, a, "awskms", kms_key.arn) is None  # judged by the ARN KMS returned
    assert m(legacy, b, "awskms", kms_key.arn) is not None


# -- shamir -> awskms --------------------------------------------------------------


def test_shamir_to_awskms_with_migrate_and_the_unseal_keys(aws_env: dict[str, str], kms_key: KmsKey) -> None:
    store = InmemStorage()
    lc = boot(store)
    keys = [bytes.fromhex(k) for k in lc.init(InitRequest(secret_shares=5, secret_threshold=3))["keys"]]
    lc.submit_share(keys[0]), lc.submit_share(keys[1]), lc.submit_share(keys[2])
    write_secret(lc)

    lc = boot(store, seal_a(kms_key))
    status = lc.seal_status()
    assert status["migration"] is True and status["sealed"] is True
    assert (status["type"], status["recovery_seal"], status["t"], status["n"]) == ("awskms", True, 3, 5)
    assert lc.shared.generation == 0
    with pytest.raises(BadRequest, match="migrate option not provided and seal migration is pending"):
        lc.submit_share(keys[0])
    with pytest.raises(BadRequest, match="this server is migrating from the shamir seal"):
        lc.submit_unwrapped_key(bytes(32), lc.shared.boot_id)
    assert lc.submit_share(keys[3], migrate=True)["progress"] == 1
    lc.submit_share(keys[1], migrate=True)
    status = lc.submit_share(keys[4], migrate=True)
    assert status["sealed"] is False and status["migration"] is False
    assert read_secret(lc) == b"intact"

    config = config_of(store)
    assert (config.type, config.recovery_shares, config.recovery_threshold, config.break_glass) == (
        "awskms", 5, 3, False)
    assert config.seal_key_id == kms_key.key_id
    assert all(is_known_share(config, k) for k in keys)
    assert is_recovery_key(config, shamir.combine(keys[:3]))  # generate-root and rekey accept them

    # The next start: the agent unseals; the old keys are recovery keys now.
    lc = boot(store, seal_a(kms_key))
    assert lc.seal_status()["migration"] is False
    with pytest.raises(BadRequest, match="recovery keys cannot unseal"):
        lc.submit_share(keys[0])
    assert agent_unseal(lc, seal_a(kms_key))["sealed"] is False
    assert read_secret(lc) == b"intact"


def test_migrate_without_a_migration_is_vaults_error(aws_env: dict[str, str]) -> None:
    lc = boot(InmemStorage())
    keys = [bytes.fromhex(k) for k in lc.init(InitRequest(secret_shares=3, secret_threshold=2))["keys"]]
    with pytest.raises(BadRequest, match="can't perform a seal migration, no migration seal found"):
        lc.submit_share(keys[0], migrate=True)


def test_a_kms_failure_changes_nothing(aws_env: dict[str, str], kms_key: KmsKey) -> None:
    store = InmemStorage()
    lc = boot(store)
    keys = [bytes.fromhex(k) for k in lc.init(InitRequest(secret_shares=3, secret_threshold=2))["keys"]]
    before = {k: store.get(k) for k in store.keys()}
    lc = boot(store, AwsKmsSeal(kms_key.seal_options(kms_key_id="no-such-key")))
    lc.submit_share(keys[0], migrate=True)
    with pytest.raises(BadRequest, match="could not wrap the unseal key"):
        lc.submit_share(keys[2], migrate=True)
    assert {k: store.get(k) for k in store.keys()} == before
    assert lc.seal_status()["sealed"] is True and lc.seal_status()["progress"] == 0
    assert boot(store).submit_share(keys[1])["progress"] == 1  # the old seal still works


def test_wrong_shares_are_refused_before_any_write(aws_env: dict[str, str], kms_key: KmsKey) -> None:
    store = InmemStorage()
    boot(store).init(InitRequest(secret_shares=3, secret_threshold=2))
    init = boot(InmemStorage()).init(InitRequest(secret_shares=3, secret_threshold=2))
    other = [bytes.fromhex(k) for k in init["keys"]]
    lc = boot(store, seal_a(kms_key))
    with pytest.raises(BadRequest, match="does not belong to this server"):
        lc.submit_share(other[0], migrate=True)
    assert config_of(store).type == "shamir"


# -- awskms -> shamir --------------------------------------------------------------


def _auto_store(kms_key: KmsKey, *, break_glass: bool = False) -> tuple[InmemStorage, list[bytes]]:
    store = InmemStorage()
    lc = boot(store, seal_a(kms_key))
    result = lc.init(InitRequest(recovery_shares=3, recovery_threshold=2, break_glass=break_glass))
    write_secret(lc)
    return store, [bytes.fromhex(k) for k in result["recovery_keys"]]


def test_awskms_to_shamir_with_the_agents_key_and_the_recovery_keys(aws_env: dict[str, str], kms_key: KmsKey) -> None:
    store, recovery = _auto_store(kms_key)
    lc = boot(store, None, disabled="awskms")
    status = lc.seal_status()
    assert status["migration"] is True
    assert (status["type"], status["recovery_seal"], status["t"], status["n"]) == ("shamir", False, 2, 3)
    assert "recovery_seal_type" not in status
    with pytest.raises(BadRequest, match="has not handed over the key"):
        lc.submit_share(recovery[0], migrate=True)
    # The agent (its stanza disabled) unwraps as always; the daemon holds it.
    status = agent_unseal(lc, seal_a(kms_key))
    assert status["sealed"] is True and seal_migration.key_held(lc)
    with pytest.raises(BadRequest, match="migrate option not provided"):
        lc.submit_share(recovery[0])
    lc.submit_share(recovery[2], migrate=True)
    assert lc.submit_share(recovery[0], migrate=True)["sealed"] is False
    assert read_secret(lc) == b"intact"
    config = config_of(store)
    assert (config.type, config.secret_shares, config.secret_threshold) == ("shamir", 3, 2)
    assert store.get("core/stored-key") is None

    # Restarted with the stanza still there (disabled): no migration, and
    # the recovery keys are the unseal keys.
    lc = boot(store, None, disabled="awskms")
    assert lc.seal_status()["migration"] is False
    lc.submit_share(recovery[1])
    assert lc.submit_share(recovery[2])["sealed"] is False
    assert read_secret(lc) == b"intact"


def test_recovery_shares_of_another_server_change_nothing(aws_env: dict[str, str], kms_key: KmsKey) -> None:
    store, recovery = _auto_store(kms_key)
    _, foreign = _auto_store(kms_key)
    lc = boot(store, None, disabled="awskms")
    agent_unseal(lc, seal_a(kms_key))
    lc.submit_share(recovery[0], migrate=True)
    with pytest.raises(BadRequest, match="does not belong"):
        lc.submit_share(foreign[1], migrate=True)
    assert config_of(store).type == "awskms" and lc.seal_status()["sealed"] is True


def test_awskms_to_shamir_with_break_glass_needs_no_agent(aws_env: dict[str, str], kms_key: KmsKey) -> None:
    store, recovery = _auto_store(kms_key, break_glass=True)
    lc = boot(store, None, disabled="awskms")
    lc.submit_share(recovery[0], migrate=True)
    assert lc.submit_share(recovery[1], migrate=True)["sealed"] is False
    assert config_of(store).type == "shamir" and read_secret(lc) == b"intact"


# -- awskms key A -> key B -----------------------------------------------------------


def test_kms_key_a_to_b_needs_no_operator_keys(aws_env: dict[str, str], kms_key: KmsKey) -> None:
    store, recovery = _auto_store(kms_key)
    key_b = create_kms_key(kms_key.endpoint)
    seal_b = AwsKmsSeal(key_b.seal_options())
    lc = boot(store, seal_b, disabled="awskms")
    status = lc.seal_status()
    assert status["migration"] is True and (status["type"], status["t"], status["n"]) == ("awskms", 2, 3)
    with pytest.raises(BadRequest, match="takes no keys"):
        lc.submit_share(recovery[0], migrate=True)
    assert agent_unseal(lc, seal_a(kms_key))["sealed"] is False
    assert read_secret(lc) == b"intact"
    assert config_of(store).seal_key_id == key_b.key_id
    assert lc.stored_key().key_id == key_b.arn

    lc = boot(store, seal_b, disabled="awskms")
    assert lc.seal_status()["migration"] is False
    assert agent_unseal(lc, seal_b)["sealed"] is False
    assert is_recovery_key(config_of(store), shamir.combine(recovery[:2]))


def test_kms_key_b_refusing_still_unseals_with_a(aws_env: dict[str, str], kms_key: KmsKey) -> None:
    store, _ = _auto_store(kms_key)
    broken = AwsKmsSeal(kms_key.seal_options(kms_key_id="no-such-key"))
    lc = boot(store, broken, disabled="awskms")
    assert agent_unseal(lc, seal_a(kms_key))["sealed"] is False
    assert lc.seal_status()["migration"] is True  # retried at the next start
    assert config_of(store).seal_key_id == kms_key.key_id


# -- kill -9 part-way through the switch (file storage applies ops one by one) -------


class Crash(Exception):
    pass


class CrashingStore(Storage):
    """The file store, dying after ``survive`` writes of a transaction."""

    def __init__(self, inner: FileStorage, survive: int) -> None:
        self.inner = inner
        self.survive = survive

    def get(self, key: str) -> bytes | None:
        return self.inner.get(key)

    def put(self, key: str, value: bytes) -> None:
        self.inner.put(key, value)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def list(self, prefix: str) -> list[str]:
        return self.inner.list(prefix)

    def lock(self, name: str = "") -> contextlib.AbstractContextManager[None]:
        return self.inner.lock(name)

    def transaction(self, ops: Sequence[Op]) -> None:
        for index, op in enumerate(ops):
            if index == self.survive:
                raise Crash()
            if isinstance(op, Put):
                self.inner.put(op.key, op.value)
            else:
                self.inner.delete(op.key)


@pytest.mark.parametrize("survive", range(5))
def test_a_crash_inside_the_switch_leaves_one_working_seal(
    aws_env: dict[str, str], kms_key: KmsKey, tmp_path: Path, survive: int
) -> None:
    path = str(tmp_path / "data")
    lc = boot(FileStorage(path))
    keys = [bytes.fromhex(k) for k in lc.init(InitRequest(secret_shares=3, secret_threshold=2))["keys"]]
    lc.submit_share(keys[0]), lc.submit_share(keys[1])
    write_secret(lc)

    lc = boot(CrashingStore(FileStorage(path), survive), seal_a(kms_key))
    lc.submit_share(keys[0], migrate=True)
    with pytest.raises(Crash):
        lc.submit_share(keys[2], migrate=True)

    # The restart replays the redo record if it was written.
    after = boot(FileStorage(path), seal_a(kms_key))
    assert FileStorage(path).get(seal_migration.PENDING) is None
    if survive == 0:  # nothing written: the old seal, still in migration mode
        assert after.seal_status()["migration"] is True
        old = boot(FileStorage(path))
        old.submit_share(keys[1])
        assert old.submit_share(keys[2])["sealed"] is False
        assert read_secret(old) == b"intact"
    else:  # the record was durable: the new seal
        assert after.seal_status()["migration"] is False
        assert agent_unseal(after, seal_a(kms_key))["sealed"] is False
        assert read_secret(after) == b"intact"
