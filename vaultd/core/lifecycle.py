"""Init, unseal and seal: the life of the key hierarchy.

Physical layout of what this module owns (all under ``core/``, outside the
barrier, because it must be readable while sealed):

``core/seal-config``  plaintext JSON: seal type, shares/threshold, share
                      verifiers, cluster id.  Written last at init, so its
                      presence is what "initialised" means.
``core/root-key``     the root key, AES-GCM under the unseal key (KEK).
``core/keyring``      the barrier keyring, AES-GCM under the root key.
``core/stored-key``   auto seal only: the KEK wrapped by the seal (KMS).

Unseal progress and the unsealed root key live in the shared seal state, so
every gunicorn worker sees the same progress and the same outcome.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vaultd import __version__
from vaultd.core.barrier import Barrier
from vaultd.core.keyring import Keyring
from vaultd.core.seal_state import COUNTER_ENCRYPTIONS, EPOCH_INIT, EPOCH_KEYRING, SharedSealState
from vaultd.crypto import aead, shamir
from vaultd.errors import BadRequest, Sealed
from vaultd.logging import log_event
from vaultd.seal.base import AutoSeal, SealError, StoredKey
from vaultd.storage.base import Storage

if TYPE_CHECKING:
    from vaultd.core.seal_migration import Migration

log = logging.getLogger("vaultd.core")

SEAL_CONFIG = "core/seal-config"
ROOT_KEY = "core/root-key"
KEYRING = "core/keyring"
STORED_KEY = "core/stored-key"

COMMIT_DATE = "2026-11-28T00:00:00Z"


@dataclass
class SealConfig:
    """What is known about the seal before unsealing."""

    type: str
    secret_shares: int
    secret_threshold: int
    recovery_shares: int = 0
    recovery_threshold: int = 0
    break_glass: bool = False
    cluster_id: str = ""
    cluster_name: str = ""
    share_salt: str = ""
    share_hashes: list[str] = field(default_factory=list)
    """sha256(salt || share) of every share that can unseal, so a share from
    another server is refused when it is submitted, not after the threshold."""
    recovery_hash: str = ""
    """sha256(recovery_salt || recovery key) under an auto seal: how
    generate-root and rekey tell the recovery key when its shares come
    together, since without break_glass it decrypts nothing.  Empty on
    servers initialised before it was kept."""
    recovery_salt: str = ""
    seal_key_id: str = ""
    """The configured key (awskms: ``kms_key_id``) the stored key was last
    wrapped with, so a migration between two KMS keys is told from a
    finished one without asking KMS.  Empty under shamir and on servers
    initialised before it was kept."""

    @property
    def recovery_seal(self) -> bool:
        return self.type != "shamir"

    @property
    def unseal_shares(self) -> int:
        """How many shares exist that can unseal (0: none, auto seal only)."""
        if not self.recovery_seal:
            return self.secret_shares
        return self.recovery_shares if self.break_glass else 0

    @property
    def unseal_threshold(self) -> int:
        return self.recovery_threshold if self.recovery_seal else self.secret_threshold

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__, sort_keys=True).encode()

    @classmethod
    def from_json(cls, blob: bytes) -> SealConfig:
        raw = json.loads(blob)
        return cls(**{k: v for k, v in raw.items() if k in cls.__dataclass_fields__})


@dataclass
class InitRequest:
    """``sys/init``'s parameters; 0 means "not given"."""

    secret_shares: int = 0
    secret_threshold: int = 0
    recovery_shares: int = 0
    recovery_threshold: int = 0
    break_glass: bool = False
    stored_shares: int = 0
    """Vault 1.0's parameter (``-stored-shares=1`` in the auto-unseal
    walkthrough): how many shares the seal stores.  An auto seal stores
    exactly one, the wrapped unseal key; a shamir seal stores none."""


class Lifecycle:
    """The seal state machine of one worker process, over the shared state."""

    def __init__(
        self,
        physical: Storage,
        shared: SharedSealState,
        *,
        seal: AutoSeal | None,
        seal_type: str = "shamir",
        cluster_name: str = "",
        storage_type: str = "inmem",
        on_initialised: Callable[[Barrier, str], str] | None = None,
        on_change: Callable[[], None] | None = None,
        disabled_seal_type: str = "",
    ) -> None:
        """``disabled_seal_type``: the type of a seal stanza marked
        ``disabled`` (the seal a migration leaves), "" if none."""
        self.physical = physical
        self.shared = shared
        self.seal = seal
        self.seal_type = seal.type if seal else seal_type
        self.cluster_name = cluster_name
        self.storage_type = storage_type
        self.barrier = Barrier(physical, self._load_keyring, lambda: shared.bump_epoch(COUNTER_ENCRYPTIONS))
        self._on_initialised = on_initialised
        self._on_change = on_change
        """Called (under the refresh lock) when the seal generation changed,
        so the owner drops what it cached from the previous generation."""
        self._refresh_lock = threading.Lock()
        self._seen_generation = -1
        self._seen_keyring_epoch = -1
        self._config: SealConfig | None = None
        self.stale_risk: Callable[[], bool] | None = None
        """HA (set by the core): True while other nodes may write the
        store (this node is not the active one); the seal configuration is
        then read afresh, past the cache, every time."""
        self._config_epoch = -1
        self.disabled_seal_type = disabled_seal_type
        self._migration: tuple[int, Migration | None] = (-1, None)
        from vaultd.core import seal_migration

        # Before anything reads the seal config: finish a seal migration
        # that a crash interrupted half-way (file storage; see the module).
        seal_migration.recover(physical)

    # -- what every request calls first -------------------------------------

    def refresh(self) -> bool:
        """Bring this worker's barrier in line with the shared state.

        Cheap when nothing changed (two integer loads); returns True when
        something changed.  A worker serves requests on several threads, so
        the catching up is done by one thread under a lock, and the state is
        marked as seen only once the barrier (and, through ``on_change``, the
        caller's caches) match it: a thread that finds the generation
        unchanged must never find the barrier still sealed from before."""
        if self._up_to_date():
            return False
        with self._refresh_lock:
            generation = self.shared.generation
            keyring_epoch = self.shared.epoch(EPOCH_KEYRING)
            if generation == self._seen_generation and keyring_epoch == self._seen_keyring_epoch:
                return False  # another thread caught up while this one waited
            root_key = self.shared.root_key()
            if root_key is None:
                self.barrier.seal()
            else:
                self.barrier.unseal(self._decrypt_keyring(root_key))
            if generation != self._seen_generation and self._on_change is not None:
                self._on_change()
            self._seen_keyring_epoch = keyring_epoch
            self._seen_generation = generation
        return True

    def _up_to_date(self) -> bool:
        return (
            self.shared.generation == self._seen_generation
            and self.shared.epoch(EPOCH_KEYRING) == self._seen_keyring_epoch
        )

    def require_unsealed(self) -> None:
        self.refresh()
        if self.barrier.sealed:
            raise Sealed()

    # -- reading the state ---------------------------------------------------

    def seal_config(self) -> SealConfig | None:
        epoch = self.shared.epoch(EPOCH_INIT)
        if self.stale_risk is not None and self.stale_risk():
            # Another node may have initialised, rekeyed or migrated the seal.
            clear = getattr(self.physical, "clear", None)
            if clear is not None:
                clear()
            self._config = None
        if self._config is None or epoch != self._config_epoch:
            blob = self.physical.get(SEAL_CONFIG)
            self._config = SealConfig.from_json(blob) if blob else None
            self._config_epoch = epoch
        return self._config

    @property
    def initialized(self) -> bool:
        return self.seal_config() is not None

    def seal_status(self) -> dict[str, Any]:
        self.refresh()
        config = self.seal_config()
        with self.shared.locked():
            progress = len(self.shared.parts())
            nonce = self.shared.nonce()
        sealed = self.barrier.sealed
        recovery_seal = config.recovery_seal if config else self.seal is not None
        status: dict[str, Any] = {
            "type": config.type if config else self.seal_type,
            "initialized": config is not None,
            "sealed": sealed,
            "t": config.unseal_threshold if config else 0,
            "n": (config.recovery_shares if config.recovery_seal else config.secret_shares) if config else 0,
            "progress": progress,
            "nonce": nonce,
            "recovery_seal": recovery_seal,
        }
        if recovery_seal:
            # The recovery keys are always Shamir shares (Vault's field,
            # present only under an auto seal).
            status["recovery_seal_type"] = "shamir"
        migration = self.migration()
        if config is not None and migration is not None:
            from vaultd.core import seal_migration

            status |= seal_migration.status_fields(config, migration)
            if status["recovery_seal"]:
                status["recovery_seal_type"] = "shamir"
            else:
                status.pop("recovery_seal_type", None)
        status |= {
            "version": __version__,
            "commit_date": COMMIT_DATE,
            "migration": migration is not None,
        }
        if config and not sealed:
            status["cluster_name"] = config.cluster_name
            status["cluster_id"] = config.cluster_id
        status["storage_type"] = self.storage_type
        return status

    # -- init ------------------------------------------------------------------

    def init(self, request: InitRequest) -> dict[str, Any]:
        auto = self.seal is not None
        warnings = _validate_init(request, auto=auto, seal_type=self.seal_type)
        with self.physical.lock("core/init"):
            if self.physical.get(SEAL_CONFIG) is not None:
                raise BadRequest("Vault is already initialized")
            kek = aead.generate_key()
            root_key = aead.generate_key()
            keyring = Keyring.new()
            cluster_id = str(uuid.uuid4())
            config = SealConfig(
                type=self.seal_type,
                secret_shares=1 if auto else request.secret_shares,
                secret_threshold=1 if auto else request.secret_threshold,
                recovery_shares=request.recovery_shares if auto else 0,
                recovery_threshold=request.recovery_threshold if auto else 0,
                break_glass=request.break_glass,
                cluster_id=cluster_id,
                cluster_name=self.cluster_name or f"vaultd-cluster-{cluster_id[:8]}",
            )
            result: dict[str, Any] = {"keys": [], "keys_base64": []}
            if auto:
                assert self.seal is not None
                try:
                    # DescribeKey first: a mistyped, disabled or asymmetric key
                    # is named as such, not as a failed Encrypt.
                    self.seal.describe_key()
                    stored = self.seal.wrap(kek, {"vaultd:cluster_id": cluster_id})
                except SealError as exc:
                    log_event(log, "kms_error", "init: the %s seal could not wrap the new unseal key (%s)",
                              self.seal_type, exc.code, level=logging.ERROR, kms_error_code=exc.code,
                              permanent=exc.permanent)
                    raise BadRequest(f"failed to wrap the unseal key with the {self.seal_type} seal: {exc}") from None
                self.physical.put(STORED_KEY, stored.to_json())
                config.seal_key_id = str(getattr(self.seal, "kms_key_id", "") or "")
                recovery_secret = kek if request.break_glass else aead.generate_key()
                shares = _make_shares(recovery_secret, request.recovery_shares, request.recovery_threshold)
                _record_verifiers(config, shares)
                _record_recovery_hash(config, recovery_secret)
                result["recovery_keys"] = [s.hex() for s in shares]
                result["recovery_keys_base64"] = [base64.b64encode(s).decode() for s in shares]
            else:
                shares = _make_shares(kek, request.secret_shares, request.secret_threshold)
                _record_verifiers(config, shares)
                result["keys"] = [s.hex() for s in shares]
                result["keys_base64"] = [base64.b64encode(s).decode() for s in shares]
            self.physical.put(ROOT_KEY, aead.encrypt(kek, root_key, ROOT_KEY.encode()))
            self.physical.put(KEYRING, aead.encrypt(root_key, keyring.to_bytes(), KEYRING.encode()))
            barrier = Barrier(self.physical, lambda: keyring)
            barrier.unseal(keyring)
            root_token = self._on_initialised(barrier, config.cluster_name) if self._on_initialised else ""
            self.physical.put(SEAL_CONFIG, config.to_json())
            self.shared.bump_epoch(EPOCH_INIT)
            result["root_token"] = root_token
            if warnings:
                result["warnings"] = warnings
            if auto:
                # We hold the KEK we have just made: no KMS round trip is
                # needed for the first unseal.
                with self.shared.locked():
                    self.shared.mark_unsealed(root_key)
        log_event(log, "init", "initialised: seal %s, cluster %s", config.type, config.cluster_id,
                  seal_type=config.type, cluster_id=config.cluster_id)
        if auto:
            log_event(log, "unsealed", "unsealed with the key made at init", unsealed_by="init",
                      seal_type=config.type, boot_id=self.shared.boot_id)
        return result

    # -- unseal ----------------------------------------------------------------

    def submit_share(self, key: bytes, *, migrate: bool = False) -> dict[str, Any]:
        """One operator's key share (or, with one share, the whole key);
        ``migrate``: towards a seal migration (see :mod:`.seal_migration`)."""
        config = self.seal_config()
        if config is None:
            raise BadRequest("Vault is not initialized")
        migration = self.migration()
        if migrate or migration is not None:
            from vaultd.core import seal_migration

            seal_migration.submit_share(self, config, migration, key, migrate)
            return self.seal_status()
        if config.unseal_shares == 0:
            raise BadRequest(
                f"this server uses the {config.type} seal and its recovery keys cannot unseal it "
                "(it was initialised without break_glass); the unsealer agent unseals it"
            )
        expected = 32 if config.unseal_shares == 1 else 33
        if len(key) != expected:
            raise BadRequest(f"invalid key: expected {expected} bytes, got {len(key)}")
        if config.unseal_shares > 1 and not _is_known_share(config, key):
            raise BadRequest("invalid key: this key share does not belong to this server")
        with self.shared.locked():
            if not self.shared.unsealed:
                self._add_share_locked(config, key)
        return self.seal_status()

    def _add_share_locked(self, config: SealConfig, key: bytes) -> None:
        parts = self.shared.parts()
        if any(hmac.compare_digest(p, key) for p in parts):
            raise BadRequest("this key share was already submitted in this unseal attempt")
        self.shared.add_part(key)
        parts.append(key)
        if len(parts) < config.unseal_threshold:
            return
        kek = key if config.unseal_shares == 1 else shamir.combine(parts)
        try:
            self._unseal_locked(kek)
        finally:
            self.shared.reset_progress()

    def reset_progress(self) -> dict[str, Any]:
        with self.shared.locked():
            self.shared.reset_progress()
        return self.seal_status()

    def submit_unwrapped_key(self, kek: bytes, boot_id: str) -> dict[str, Any]:
        """The unsealer agent's path: the KEK it had the seal unwrap."""
        config = self.seal_config()
        if config is None:
            raise BadRequest("Vault is not initialized")
        migration = self.migration()
        if migration is not None:
            from vaultd.core import seal_migration

            seal_migration.receive_unwrapped_key(self, config, migration, kek, boot_id)
            return self.seal_status()
        if not config.recovery_seal:
            raise BadRequest("this server uses the shamir seal; submit key shares to sys/unseal")
        with self.shared.locked():
            if not hmac.compare_digest(boot_id.encode(), self.shared.boot_id.encode()):
                raise BadRequest("boot_id does not match: the daemon restarted, read sys/vaultd/state again")
            if not self.shared.unsealed:
                if self.shared.sealed_by_operator:
                    raise BadRequest(
                        "sealed by an operator: this run of the daemon is not auto-unsealed again; restart it"
                    )
                if len(kek) != 32:
                    raise BadRequest("invalid key: expected 32 bytes")
                self._unseal_locked(kek, by="unsealer")
        return self.seal_status()

    def migration(self) -> Migration | None:
        """The seal migration the config asks for (a
        :class:`~vaultd.core.seal_migration.Migration`), or None; cached per
        seal-config epoch, so a finished migration is seen by every worker."""
        epoch = self.shared.epoch(EPOCH_INIT)
        if self._migration[0] == epoch:
            return self._migration[1]
        from vaultd.core import seal_migration

        config = self.seal_config()
        found = None
        if config is not None:
            stored_key_id = ""
            if config.recovery_seal and self.disabled_seal_type and not config.seal_key_id:
                blob = self.physical.get(STORED_KEY)
                stored_key_id = StoredKey.from_json(blob).key_id if blob else ""
            found = seal_migration.detect(config, self.seal, self.disabled_seal_type, stored_key_id)
        self._migration = (epoch, found)
        return found

    def stored_key(self) -> StoredKey:
        config = self.seal_config()
        if config is None:
            raise BadRequest("Vault is not initialized")
        blob = self.physical.get(STORED_KEY)
        if not config.recovery_seal or blob is None:
            raise BadRequest("this server has no stored key: it uses the shamir seal")
        return StoredKey.from_json(blob)

    def _unseal_locked(self, kek: bytes, *, by: str = "shares") -> None:
        """``by`` (shares or unsealer) is for the log: who unsealed."""
        blob = self.physical.get(ROOT_KEY)
        if blob is None:
            raise BadRequest("Vault is not initialized")
        try:
            root_key = aead.decrypt(kek, blob, ROOT_KEY.encode())
        except aead.AuthenticationError:
            log_event(log, "unseal_failed", "unseal refused: the key submitted (by %s) does not decrypt the root key",
                      by, submitted_by=by, boot_id=self.shared.boot_id)
            raise BadRequest("Error unsealing: the key does not decrypt this server's root key") from None
        self.shared.mark_unsealed(root_key)
        log_event(log, "unsealed", "unsealed (by %s)", by, unsealed_by=by, seal_type=self.seal_type,
                  boot_id=self.shared.boot_id)

    # -- seal ------------------------------------------------------------------

    def seal_now(self, *, by_operator: bool = True) -> None:
        with self.shared.locked():
            self.shared.mark_sealed(by_operator=by_operator)
        self.barrier.seal()
        if by_operator:
            log_event(log, "operator_seal", "sealed by operator request", boot_id=self.shared.boot_id)
        else:
            log_event(log, "sealed", "sealed", boot_id=self.shared.boot_id)

    # -- keyring ---------------------------------------------------------------

    def rotate(self) -> Keyring:
        self.require_unsealed()
        root_key = self.shared.root_key()
        if root_key is None:
            raise Sealed()
        with self.physical.lock("core/keyring"):
            rotated = self._decrypt_keyring(root_key).rotated()
            self.physical.put(KEYRING, aead.encrypt(root_key, rotated.to_bytes(), KEYRING.encode()))
        self.shared.bump_epoch(EPOCH_KEYRING)
        self.shared.reset_epoch(COUNTER_ENCRYPTIONS)
        self.barrier.unseal(rotated)
        log_event(log, "key_rotation", "rotated the barrier keyring to term %d", rotated.active,
                  key_term=rotated.active)
        return rotated

    def key_status(self) -> dict[str, Any]:
        """``sys/key-status``: the active term, when it was installed, and how
        many values it has encrypted (in every worker, since the daemon started
        or the last rotation)."""
        self.require_unsealed()
        term = self.barrier.keyring.active_term
        return {
            "encryptions": self.shared.epoch(COUNTER_ENCRYPTIONS),
            "install_time": term.install_time,
            "term": term.number,
        }

    def _load_keyring(self) -> Keyring:
        root_key = self.shared.root_key()
        if root_key is None:
            raise Sealed()
        return self._decrypt_keyring(root_key)

    def _decrypt_keyring(self, root_key: bytes) -> Keyring:
        blob = self.physical.get(KEYRING)
        if blob is None:
            raise Sealed("the keyring is missing from storage")
        return Keyring.from_bytes(aead.decrypt(root_key, blob, KEYRING.encode()))


def _validate_init(request: InitRequest, *, auto: bool, seal_type: str = "awskms") -> list[str]:
    """Refuse what cannot be meant; return the warnings for what is ignored.

    Under an auto seal the unseal key is one key, wrapped by the seal and
    stored: Vault 1.0 took ``-key-shares=1 -key-threshold=1 -stored-shares=1``
    for that (its auto-unseal walkthrough passes all three), so 1 is accepted
    and said to be implied; any other count cannot be honoured and is a 400
    rather than silently a different setup from the one asked for."""
    if auto:
        given = [name for name in ("secret_shares", "secret_threshold") if getattr(request, name)]
        wrong = [name for name in given if getattr(request, name) != 1]
        if wrong:
            raise BadRequest(
                f"parameters {','.join(wrong)} must be 1 or omitted with seal type {seal_type}: the unseal key "
                "is wrapped by the seal and stored as one share; use recovery_shares and recovery_threshold "
                "to split the recovery key"
            )
        if request.stored_shares not in (0, 1):
            raise BadRequest(
                f"stored_shares must be 1 with seal type {seal_type}: the seal stores exactly one share, "
                "the wrapped unseal key"
            )
        _validate_shares(request.recovery_shares, request.recovery_threshold, "recovery seal configuration")
        if given:
            return [
                f"{' and '.join(given)} of 1 are implied with seal type {seal_type} and were ignored: the "
                "unseal key is stored wrapped by the seal; recovery_shares and recovery_threshold set the "
                "recovery key shares"
            ]
        return []
    if request.recovery_shares or request.recovery_threshold:
        raise BadRequest("parameters recovery_shares,recovery_threshold not applicable to seal type shamir")
    if request.break_glass:
        raise BadRequest("break_glass applies only to auto seals (awskms)")
    if request.stored_shares:
        raise BadRequest("stored keys are not supported by the shamir seal: stored_shares must be omitted")
    _validate_shares(request.secret_shares, request.secret_threshold, "seal configuration")
    return []


def _validate_shares(shares: int, threshold: int, what: str) -> None:
    if shares < 1:
        raise BadRequest(f"invalid {what}: shares must be at least one")
    if threshold < 1:
        raise BadRequest(f"invalid {what}: threshold must be at least one")
    if shares > 255:
        raise BadRequest(f"invalid {what}: shares must be less than 256")
    if threshold > shares:
        raise BadRequest(f"invalid {what}: threshold cannot be larger than shares")
    if shares > 1 and threshold == 1:
        raise BadRequest(f"invalid {what}: threshold must be greater than one for multiple shares")


def _make_shares(secret: bytes, shares: int, threshold: int) -> list[bytes]:
    if shares == 1:
        return [secret]
    return shamir.split(secret, shares, threshold)


def _share_hash(salt: bytes, share: bytes) -> str:
    return hashlib.sha256(salt + share).hexdigest()


def _record_verifiers(config: SealConfig, shares: list[bytes]) -> None:
    if len(shares) < 2:
        return
    salt = secrets.token_bytes(32)
    config.share_salt = base64.b64encode(salt).decode()
    config.share_hashes = [_share_hash(salt, s) for s in shares]


def _record_recovery_hash(config: SealConfig, secret: bytes) -> None:
    salt = secrets.token_bytes(32)
    config.recovery_salt = base64.b64encode(salt).decode()
    config.recovery_hash = _share_hash(salt, secret)


def is_recovery_key(config: SealConfig, secret: bytes) -> bool:
    """Whether ``secret`` is the recovery key recorded at init (constant time)."""
    if not config.recovery_hash:
        return False
    digest = _share_hash(base64.b64decode(config.recovery_salt), secret)
    return hmac.compare_digest(config.recovery_hash, digest)


def require_recovery_check(config: SealConfig, what: str) -> None:
    """400 if this auto-sealed server cannot tell its recovery key (vaultd
    0.1.0 kept no check of it, and without break_glass it opens nothing)."""
    if config.recovery_seal and not config.recovery_hash and not config.break_glass:
        raise BadRequest(
            "this server was initialised before vaultd kept a check of its recovery key, so it cannot "
            f"tell the recovery key when its shares come together; {what} is not possible here"
        )


def is_known_share(config: SealConfig, share: bytes) -> bool:
    """Whether ``share`` is one of the shares made at init (when they were
    recorded: with two or more shares)."""
    return _is_known_share(config, share)


def _is_known_share(config: SealConfig, share: bytes) -> bool:
    if not config.share_hashes:
        return True
    digest = _share_hash(base64.b64decode(config.share_salt), share)
    found = False
    for known in config.share_hashes:
        found |= hmac.compare_digest(known, digest)
    return found
