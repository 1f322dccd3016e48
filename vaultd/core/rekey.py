"""rekey: new unseal keys (or recovery keys) from a quorum of the current ones.

A key holder who leaves keeps a share for ever unless the keys can change.
As in Vault, the holders of the current keys each submit their share; at the
threshold the server makes a new key, splits it into the shares and
threshold asked for, and returns the new shares once.  The targets:

- the barrier (``sys/rekey/*``).  Under shamir a new unseal key (KEK), with
  the root key re-encrypted under it.  Under awskms, authorised by the
  recovery keys, a new KEK wrapped again through the seal (``kms:Encrypt``)
  and stored, with the root key re-encrypted; no shares are returned (the
  unsealer agent unwraps the new stored key at its next unseal).
- the recovery keys under an auto seal (``sys/rekey-recovery-key/*``): a new
  recovery key, or, with ``break_glass``, a new split of the same KEK (the
  recovery shares must stay able to unseal).

With ``require_verification`` nothing changes until a quorum of the *new*
shares has been given back (``.../verify``) under a second nonce, so keys
that were never written down can never become the only ones.

Whatever changes is written in one storage transaction (the re-encrypted
root key, the stored key, the seal configuration with the new share
verifiers), framed by seal migration's redo record so that the file
backend, which applies a transaction one write at a time, is finished at
the next start: a ``kill -9`` leaves the old keys or the new ones working,
never neither; workers re-read the seal configuration through
``EPOCH_INIT``.  The attempt (nonce, shares so far, the new key while it
awaits verification) lives in the shared seal state, never on disk, and a
seal ends it.
"""

from __future__ import annotations

import base64
import hmac
import logging
import secrets
import struct
from dataclasses import dataclass
from typing import Any

from vaultd.core import seal_migration
from vaultd.core.lifecycle import (
    ROOT_KEY,
    SEAL_CONFIG,
    STORED_KEY,
    Lifecycle,
    SealConfig,
    _make_shares,
    _record_recovery_hash,
    _share_hash,
    _validate_shares,
    is_known_share,
    is_recovery_key,
    require_recovery_check,
)
from vaultd.core.seal_state import (
    CEREMONY_REKEY,
    CEREMONY_REKEY_RECOVERY,
    CEREMONY_REKEY_RECOVERY_VERIFY,
    CEREMONY_REKEY_VERIFY,
    EPOCH_INIT,
    SharedSealState,
)
from vaultd.crypto import aead, shamir
from vaultd.errors import BadRequest, Sealed, VaultError
from vaultd.logging import log_event
from vaultd.seal.base import SealError
from vaultd.storage.base import Put

log = logging.getLogger("vaultd.core")

_PLAN = struct.Struct("<BHH32s32s")
# flags, new shares, new threshold, the new key and the salt of its share
# verifiers (both zero until the new key exists)
_VERIFY = 1
_PENDING = 2


@dataclass(frozen=True)
class _Plan:
    """What an attempt was started with, and (pending) the key it made."""

    shares: int
    threshold: int
    verify: bool
    pending: bool = False
    new_key: bytes = bytes(32)
    salt: bytes = bytes(32)

    def pack(self) -> bytes:
        flags = (_VERIFY if self.verify else 0) | (_PENDING if self.pending else 0)
        return _PLAN.pack(flags, self.shares, self.threshold, self.new_key, self.salt)

    @classmethod
    def unpack(cls, raw: bytes) -> _Plan:
        flags, shares, threshold, new_key, salt = _PLAN.unpack(raw)
        return cls(shares, threshold, bool(flags & _VERIFY), bool(flags & _PENDING), new_key, salt)


class Rekey:
    """One server's rekey ceremonies (barrier and recovery), over the shared state.

    Holds nothing of its own: any worker may build one per request."""

    def __init__(self, lifecycle: Lifecycle, shared: SharedSealState) -> None:
        self.lifecycle = lifecycle
        self.shared = shared

    # -- helpers -----------------------------------------------------------------

    @staticmethod
    def _areas(recovery: bool) -> tuple[int, int]:
        if recovery:
            return CEREMONY_REKEY_RECOVERY, CEREMONY_REKEY_RECOVERY_VERIFY
        return CEREMONY_REKEY, CEREMONY_REKEY_VERIFY

    def _config(self, recovery: bool) -> SealConfig:
        """The seal configuration, once the server is unsealed and the
        target applies (Vault answers 503 while sealed)."""
        config = self.lifecycle.seal_config()
        if config is None:
            raise BadRequest("server is not yet initialized")
        if recovery and not config.recovery_seal:
            raise BadRequest("recovery rekeying not supported: this server uses the shamir seal, which has "
                             "no recovery keys")
        self.lifecycle.require_unsealed()
        return config

    @staticmethod
    def _quorum(config: SealConfig) -> tuple[int, int]:
        """(shares, threshold) of the keys that authorise: the recovery keys
        under an auto seal (for both targets), the unseal keys under shamir."""
        if config.recovery_seal:
            return config.recovery_shares, config.recovery_threshold
        return config.secret_shares, config.secret_threshold

    @staticmethod
    def _auto_barrier(config: SealConfig, recovery: bool) -> bool:
        return config.recovery_seal and not recovery

    @staticmethod
    def _check_length(key: bytes, shares: int) -> None:
        expected = 32 if shares == 1 else 33
        if len(key) != expected:
            raise BadRequest(f"invalid key: expected {expected} bytes, got {len(key)}")

    # -- status ----------------------------------------------------------------------

    def status(self, recovery: bool) -> dict[str, Any]:
        """``GET sys/rekey/init`` (Vault's fields; ``t``/``n`` are the new ones)."""
        config = self._config(recovery)
        area, verify_area = self._areas(recovery)
        with self.shared.locked():
            attempt = self.shared.ceremony(area)
            verification = self.shared.ceremony(verify_area)
        status: dict[str, Any] = {
            "nonce": "", "started": False, "t": 0, "n": 0, "progress": 0, "required": self._quorum(config)[1],
            "pgp_fingerprints": None, "backup": False, "verification_required": False,
        }
        if attempt is not None:
            plan = _Plan.unpack(attempt.extra)
            status |= {"nonce": attempt.nonce, "started": True, "t": plan.threshold, "n": plan.shares,
                       "progress": 0 if plan.pending else len(attempt.parts),
                       "verification_required": plan.verify}
            if plan.pending and verification is not None:
                status["verification_nonce"] = verification.nonce
        return status

    def verify_status(self, recovery: bool) -> dict[str, Any]:
        """``GET sys/rekey/verify``."""
        self._config(recovery)
        area, verify_area = self._areas(recovery)
        with self.shared.locked():
            attempt = self.shared.ceremony(area)
            verification = self.shared.ceremony(verify_area)
        if attempt is None:
            raise BadRequest("no rekey configuration found")
        plan = _Plan.unpack(attempt.extra)
        return {
            "nonce": verification.nonce if verification else "",
            "started": plan.pending,
            "t": plan.threshold,
            "n": plan.shares,
            "progress": len(verification.parts) if verification else 0,
        }

    # -- start and cancel ----------------------------------------------------------

    def start(self, recovery: bool, *, secret_shares: int, secret_threshold: int,
              require_verification: bool = False, pgp_keys: list[str] | None = None,
              backup: bool = False) -> dict[str, Any]:
        if backup and not pgp_keys:
            raise BadRequest("cannot request a backup of the new keys without providing PGP keys for encryption")
        if pgp_keys:
            raise BadRequest("pgp_keys is not supported by vaultd: the new key shares are returned in clear, "
                             "once, to the operator who completes the rekey")
        config = self._config(recovery)
        area, _ = self._areas(recovery)
        if self.lifecycle.migration() is not None:
            raise BadRequest("a seal migration is pending: complete it before a rekey")
        if self._quorum(config)[0] == 0:
            raise BadRequest("this server has no key shares to authorise a rekey")
        require_recovery_check(config, "rekey")
        if self._auto_barrier(config, recovery):
            # Vault's auto-seal barrier rekey: the new key is wrapped by the
            # seal, not split, so shares and threshold do not apply.
            if require_verification:
                raise BadRequest("requiring verification not supported when rekeying the barrier key with "
                                 "recovery keys")
            if config.break_glass:
                raise BadRequest(
                    "this server was initialised with break_glass: its recovery keys are shares of the unseal "
                    "key, and a new unseal key would leave them unable to unseal; rekey is refused"
                )
            plan = _Plan(0, 0, False)
        else:
            what = "recovery configuration" if recovery else "rekey seal configuration"
            _validate_shares(secret_shares, secret_threshold, what)
            plan = _Plan(secret_shares, secret_threshold, require_verification)
        with self.shared.locked():
            if self.shared.ceremony(area) is not None:
                raise BadRequest("rekey already in progress")
            self.shared.start_ceremony(area, plan.pack())
        target = _target(recovery)
        log_event(log, "rekey_started", "a rekey of the %s keys started (%d shares, threshold %d%s)", target,
                  plan.shares, plan.threshold, ", verification required" if plan.verify else "",
                  rekey_target=target, boot_id=self.shared.boot_id)
        return self.status(recovery)

    def cancel(self, recovery: bool) -> None:
        """``DELETE sys/rekey/init``: the attempt and any pending new keys
        are forgotten; the current keys stay valid."""
        self._config(recovery)
        area, verify_area = self._areas(recovery)
        with self.shared.locked():
            started = self.shared.ceremony(area) is not None
            self.shared.clear_ceremony(area)
            self.shared.clear_ceremony(verify_area)
        if started:
            target = _target(recovery)
            log_event(log, "rekey_cancelled", "a rekey of the %s keys was cancelled", target,
                      rekey_target=target, boot_id=self.shared.boot_id)

    def restart_verification(self, recovery: bool) -> dict[str, Any]:
        """``DELETE sys/rekey/verify``: the verification starts over under a
        new nonce; the new keys stay pending."""
        self._config(recovery)
        area, verify_area = self._areas(recovery)
        with self.shared.locked():
            attempt = self.shared.ceremony(area)
            if attempt is not None and _Plan.unpack(attempt.extra).pending:
                self.shared.start_ceremony(verify_area, b"")
        return self.verify_status(recovery)

    # -- the current keys ------------------------------------------------------------

    def update(self, recovery: bool, key: bytes, nonce: str) -> dict[str, Any] | None:
        """One current key holder's share.  None while below the threshold
        (the caller answers with the status, as Vault does); at the
        threshold, the new shares."""
        config = self._config(recovery)
        area, verify_area = self._areas(recovery)
        shares, threshold = self._quorum(config)
        self._check_length(key, shares)
        if shares > 1 and not is_known_share(config, key):
            raise BadRequest("invalid key: this key share does not belong to this server")
        with self.shared.locked():
            attempt = self.shared.ceremony(area)
            if attempt is None:
                raise BadRequest(f"no {'recovery' if recovery else 'barrier'} rekey in progress")
            plan = _Plan.unpack(attempt.extra)
            if plan.pending:
                verification = self.shared.ceremony(verify_area)
                raise BadRequest("rekey operation already finished; verification must be performed; nonce for "
                                 f"the verification operation is \"{verification.nonce if verification else ''}\"")
            if not hmac.compare_digest(nonce.encode(), attempt.nonce.encode()):
                raise BadRequest(f"incorrect nonce supplied; nonce for this rekey operation is \"{attempt.nonce}\"")
            if any(hmac.compare_digest(part, key) for part in attempt.parts):
                raise BadRequest("given key has already been provided during this rekey operation")
            self.shared.add_ceremony_part(area, key)
            parts = [*attempt.parts, key]
            if len(parts) < threshold:
                return None
            # The quorum is here: its shares are forgotten whatever they say;
            # the attempt stays, as in Vault, for another try.
            self.shared.rewrite_ceremony(area, attempt.extra)
        secret = key if shares == 1 else shamir.combine(parts)
        if not self._authorises(config, secret):
            log_event(log, "rekey_failed", "rekey refused: the key shares given do not reconstruct this server's "
                      "key", level=logging.WARNING, rekey_target=_target(recovery), boot_id=self.shared.boot_id)
            raise BadRequest("rekey refused: the key shares given do not reconstruct this server's key; give "
                             "them again")
        if self._auto_barrier(config, recovery):
            self._rewrap(config, attempt.nonce)
            return {"nonce": attempt.nonce, "complete": True, "keys": [], "keys_base64": [],
                    "pgp_fingerprints": None, "backup": False, "verification_required": False}
        # Under break_glass the recovery key *is* the KEK: a new split of it.
        new_key = secret if recovery and config.break_glass else aead.generate_key()
        new_shares = _make_shares(new_key, plan.shares, plan.threshold)
        result: dict[str, Any] = {
            "nonce": attempt.nonce, "complete": True,
            "keys": [s.hex() for s in new_shares],
            "keys_base64": [base64.b64encode(s).decode() for s in new_shares],
            "pgp_fingerprints": None, "backup": False, "verification_required": plan.verify,
        }
        salt = secrets.token_bytes(32)
        hashes = [bytes.fromhex(_share_hash(salt, s)) for s in new_shares] if len(new_shares) > 1 else []
        if plan.verify:
            pending = _Plan(plan.shares, plan.threshold, True, True, new_key, salt)
            with self.shared.locked():
                self._still_current(area, attempt.nonce)
                self.shared.rewrite_ceremony(area, pending.pack(), hashes)
                result["verification_nonce"] = self.shared.start_ceremony(verify_area, b"")
            return result
        root_key = self._root_key()
        with self.shared.locked():
            self._still_current(area, attempt.nonce)
            self._commit(config, recovery, plan, new_key, salt, hashes, root_key)
            self.shared.clear_ceremony(area)
        self.shared.bump_epoch(EPOCH_INIT)
        self._completed(recovery, plan)
        return result

    def _authorises(self, config: SealConfig, secret: bytes) -> bool:
        """Unseal key: it decrypts the root key.  Recovery key: its hash
        matches the one kept (with break_glass it is the unseal key too)."""
        if config.recovery_seal and config.recovery_hash:
            return is_recovery_key(config, secret)
        blob = self.lifecycle.physical.get(ROOT_KEY)
        if blob is None or len(secret) != 32:
            return False
        try:
            aead.decrypt(secret, blob, ROOT_KEY.encode())
        except (aead.AuthenticationError, ValueError):
            return False
        return True

    def _still_current(self, area: int, nonce: str) -> None:
        """Under the lock, before anything is written: the attempt was not
        cancelled, nor the server sealed, while the new key was made."""
        attempt = self.shared.ceremony(area)
        if attempt is None or attempt.nonce != nonce or not self.shared.unsealed:
            raise BadRequest("the rekey was cancelled (or the server sealed) while the new key was made; "
                             "nothing changed")

    # -- the new keys ------------------------------------------------------------------

    def verify(self, recovery: bool, key: bytes, nonce: str) -> dict[str, Any] | None:
        """One holder of a *new* share; at the threshold, if they make the
        new key, the rekey takes effect."""
        self._config(recovery)
        area, verify_area = self._areas(recovery)
        root_key = self._root_key()
        with self.shared.locked():
            attempt = self.shared.ceremony(area)
            if attempt is None:
                raise BadRequest("no rekey in progress")
            plan = _Plan.unpack(attempt.extra)
            verification = self.shared.ceremony(verify_area)
            if not plan.pending or verification is None:
                raise BadRequest("no rekey verification in progress")
            if not hmac.compare_digest(nonce.encode(), verification.nonce.encode()):
                raise BadRequest(f"incorrect nonce supplied; nonce for this verify operation is "
                                 f"\"{verification.nonce}\"")
            self._check_length(key, plan.shares)
            if attempt.parts and not _in_hashes(plan.salt, attempt.parts, key):
                raise BadRequest("invalid key: this key share is not one of the new keys of this rekey")
            if any(hmac.compare_digest(part, key) for part in verification.parts):
                raise BadRequest("given key has already been provided during this verify operation")
            self.shared.add_ceremony_part(verify_area, key)
            parts = [*verification.parts, key]
            if len(parts) < plan.threshold:
                return None
            combined = key if plan.shares == 1 else shamir.combine(parts)
            if not hmac.compare_digest(combined, plan.new_key):
                self.shared.start_ceremony(verify_area, b"")  # a new nonce, as Vault rotates it
                log_event(log, "rekey_failed", "rekey verification failed: the new key shares given do not make "
                          "the new key", level=logging.WARNING, rekey_target=_target(recovery),
                          boot_id=self.shared.boot_id)
                raise BadRequest("rekey verification failed; incorrect key shares supplied")
            config = self.lifecycle.seal_config()
            assert config is not None
            self._commit(config, recovery, plan, plan.new_key, plan.salt, attempt.parts, root_key)
            self.shared.clear_ceremony(area)
            self.shared.clear_ceremony(verify_area)
        self.shared.bump_epoch(EPOCH_INIT)
        self._completed(recovery, plan)
        return {"nonce": verification.nonce, "complete": True}

    # -- writing -----------------------------------------------------------------------

    def _root_key(self) -> bytes:
        root_key = self.shared.root_key()
        if root_key is None:
            raise Sealed()
        return root_key

    def _commit(self, config: SealConfig, recovery: bool, plan: _Plan, new_key: bytes, salt: bytes,
                hashes: list[bytes], root_key: bytes) -> None:
        """Write the new key's consequences in one transaction.  The caller
        holds the shared lock (so no other worker's rekey or seal
        interleaves) and bumps ``EPOCH_INIT`` once it is released."""
        updated = SealConfig.from_json(config.to_json())
        if len(hashes) > 1:
            updated.share_salt = base64.b64encode(salt).decode()
            updated.share_hashes = [h.hex() for h in hashes]
        else:
            updated.share_salt, updated.share_hashes = "", []
        ops = []
        if recovery:
            updated.recovery_shares, updated.recovery_threshold = plan.shares, plan.threshold
            _record_recovery_hash(updated, new_key)
        else:
            updated.secret_shares, updated.secret_threshold = plan.shares, plan.threshold
            ops.append(Put(ROOT_KEY, aead.encrypt(new_key, root_key, ROOT_KEY.encode())))
        ops.append(Put(SEAL_CONFIG, updated.to_json()))
        seal_migration.commit(self.lifecycle.physical, ops)

    def _rewrap(self, config: SealConfig, nonce: str) -> None:
        """Auto seal, barrier: a new KEK, wrapped by the seal (the KMS call
        is made before anything is written, outside the lock), then the
        root key under it and the stored key in one transaction."""
        seal = self.lifecycle.seal
        if seal is None:
            raise BadRequest(f"this server's configuration has no {config.type} seal to wrap a new key with")
        new_kek = aead.generate_key()
        try:
            stored = seal.wrap(new_kek, {"vaultd:cluster_id": config.cluster_id})
        except SealError as exc:
            log_event(log, "kms_error", "rekey: the %s seal could not wrap the new unseal key (%s)", config.type,
                      exc.code, level=logging.ERROR, kms_error_code=exc.code, permanent=exc.permanent)
            log_event(log, "rekey_failed", "rekey failed: the seal could not wrap the new key; nothing changed",
                      level=logging.WARNING, rekey_target="barrier", boot_id=self.shared.boot_id)
            raise VaultError(f"failed to wrap the new unseal key with the {config.type} seal: {exc}; "
                             "nothing changed", status=500) from None
        area, _ = self._areas(False)
        root_key = self._root_key()
        with self.shared.locked():
            self._still_current(area, nonce)
            seal_migration.commit(self.lifecycle.physical, [
                Put(ROOT_KEY, aead.encrypt(new_kek, root_key, ROOT_KEY.encode())),
                Put(STORED_KEY, stored.to_json()),
            ])
            self.shared.clear_ceremony(area)
        self.shared.bump_epoch(EPOCH_INIT)
        self._completed(False, _Plan(0, 0, False))

    def _completed(self, recovery: bool, plan: _Plan) -> None:
        target = _target(recovery)
        if plan.shares:
            log_event(log, "rekey_completed", "the %s keys were rekeyed to %d shares, threshold %d; the old keys "
                      "no longer work", target, plan.shares, plan.threshold, rekey_target=target,
                      boot_id=self.shared.boot_id)
        else:
            log_event(log, "rekey_completed", "the barrier's unseal key was replaced and wrapped again by the seal",
                      rekey_target=target, boot_id=self.shared.boot_id)


def _target(recovery: bool) -> str:
    return "recovery" if recovery else "barrier"


def _in_hashes(salt: bytes, hashes: list[bytes], share: bytes) -> bool:
    digest = bytes.fromhex(_share_hash(salt, share))
    found = False
    for known in hashes:
        found |= hmac.compare_digest(known, digest)
    return found
