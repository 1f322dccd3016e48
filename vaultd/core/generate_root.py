"""generate-root: a new root token from a quorum of the server's keys.

A lost root token must not mean a lost server, and no single person should
be able to mint one: so, as in Vault, the holders of the unseal key shares
(under the shamir seal) or of the recovery key shares (under an auto seal,
where they authorise but do not unseal) each submit their share, and the
last one gets the token, XOR'd with a one-time password that only the
operator who started the attempt holds.  Anyone watching the responses sees
the encoded token, never the token.

The attempt (its nonce, the OTP and the shares so far) lives in the shared
seal state, so every gunicorn worker sees the same progress, and nothing of
it reaches the disk; a seal ends it.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import Any

from vaultd.core.lifecycle import (
    ROOT_KEY,
    Lifecycle,
    SealConfig,
    is_known_share,
    is_recovery_key,
    require_recovery_check,
)
from vaultd.core.seal_state import CEREMONY_GENERATE_ROOT, SharedSealState
from vaultd.core.token_entry import TOKEN_PREFIX
from vaultd.crypto import aead, roottoken, shamir
from vaultd.errors import BadRequest
from vaultd.logging import log_event

log = logging.getLogger("vaultd.core")

TOKEN_BODY_LENGTH = 24
OTP_LENGTH = len(TOKEN_PREFIX) + TOKEN_BODY_LENGTH
"""The OTP is XOR'd with the token byte for byte, so it is as long as a
token (Vault's ``otp_length``; clients generate OTPs of this length)."""


def random_otp() -> str:
    return roottoken.random_otp(OTP_LENGTH)


def encode_token(token: str, otp: str) -> str:
    return roottoken.encode_token(token, otp)


def decode_token(encoded: str, otp: str) -> str:
    """The inverse of :func:`encode_token` (``sys/decode-token``)."""
    try:
        return roottoken.decode_token(encoded, otp)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


class RootGeneration:
    """One server's generate-root ceremony, over the shared seal state."""

    def __init__(self, lifecycle: Lifecycle, shared: SharedSealState, make_root: Callable[[], str]) -> None:
        self.lifecycle = lifecycle
        self.shared = shared
        self._make_root = make_root

    def _config(self) -> SealConfig:
        config = self.lifecycle.seal_config()
        if config is None:
            raise BadRequest("Vault is not initialized")
        return config

    @staticmethod
    def _quorum(config: SealConfig) -> tuple[int, int]:
        """(shares, threshold) of the keys that authorise: recovery keys
        under an auto seal, unseal keys under shamir."""
        if config.recovery_seal:
            return config.recovery_shares, config.recovery_threshold
        return config.secret_shares, config.secret_threshold

    def status(self, otp: str = "") -> dict[str, Any]:
        config = self._config()
        with self.shared.locked():
            attempt = self.shared.ceremony(CEREMONY_GENERATE_ROOT)
        return {
            "started": attempt is not None,
            "nonce": attempt.nonce if attempt else "",
            "progress": len(attempt.parts) if attempt else 0,
            "required": self._quorum(config)[1],
            "complete": False,
            "encoded_token": "",
            "encoded_root_token": "",
            "pgp_fingerprint": "",
            "otp": otp,
            "otp_length": OTP_LENGTH,
        }

    def start(self, otp: str = "", pgp_key: str = "") -> dict[str, Any]:
        """Begin an attempt.  With no OTP one is made and returned, once."""
        self.lifecycle.require_unsealed()
        config = self._config()
        if otp and pgp_key:
            raise BadRequest("only one of otp and pgp_key may be given")
        if pgp_key:
            raise BadRequest("pgp_key is not supported by vaultd: give an otp, or neither to have one generated")
        if self._quorum(config)[0] == 0:
            raise BadRequest("this server has no recovery keys to authorise a root token")
        require_recovery_check(config, "generate-root")
        generated = not otp
        if generated:
            otp = random_otp()
        elif len(otp) != OTP_LENGTH or not otp.isascii():
            raise BadRequest(f"OTP string is wrong length: expected {OTP_LENGTH} characters")
        with self.shared.locked():
            if self.shared.ceremony(CEREMONY_GENERATE_ROOT) is not None:
                raise BadRequest("root generation already in progress")
            self.shared.start_ceremony(CEREMONY_GENERATE_ROOT, otp.encode())
        log_event(log, "generate_root_started", "a root token generation attempt started",
                  boot_id=self.shared.boot_id)
        return self.status(otp if generated else "")

    def cancel(self) -> None:
        with self.shared.locked():
            started = self.shared.ceremony(CEREMONY_GENERATE_ROOT) is not None
            self.shared.clear_ceremony(CEREMONY_GENERATE_ROOT)
        if started:
            log_event(log, "generate_root_cancelled", "a root token generation attempt was cancelled",
                      boot_id=self.shared.boot_id)

    def update(self, key: bytes, nonce: str) -> dict[str, Any]:
        """One key holder's share; the last one gets the encoded token."""
        if not nonce:
            raise BadRequest("nonce is required")
        self.lifecycle.require_unsealed()
        config = self._config()
        shares, threshold = self._quorum(config)
        expected = 32 if shares == 1 else 33
        if len(key) != expected:
            raise BadRequest(f"invalid key: expected {expected} bytes, got {len(key)}")
        if shares > 1 and not is_known_share(config, key):
            raise BadRequest("invalid key: this key share does not belong to this server")
        with self.shared.locked():
            attempt = self.shared.ceremony(CEREMONY_GENERATE_ROOT)
            if attempt is None:
                raise BadRequest("no root generation in progress")
            if not hmac.compare_digest(nonce.encode(), attempt.nonce.encode()):
                raise BadRequest(f"incorrect nonce supplied; nonce for this root generation operation is "
                                 f"{attempt.nonce}")
            if any(hmac.compare_digest(part, key) for part in attempt.parts):
                raise BadRequest("given key has already been provided during this generation operation")
            self.shared.add_ceremony_part(CEREMONY_GENERATE_ROOT, key)
            parts = [*attempt.parts, key]
            if len(parts) < threshold:
                return {"started": True, "nonce": attempt.nonce, "progress": len(parts), "required": threshold,
                        "complete": False, "encoded_token": "", "encoded_root_token": "", "pgp_fingerprint": ""}
            # The quorum is here: the attempt ends now, whatever the keys say.
            self.shared.clear_ceremony(CEREMONY_GENERATE_ROOT)
        secret = key if shares == 1 else shamir.combine(parts)
        if not self._authorises(config, secret):
            log_event(log, "generate_root_failed", "root token generation refused: the key shares given do not "
                      "reconstruct this server's key", level=logging.WARNING, boot_id=self.shared.boot_id)
            raise BadRequest("root generation aborted: the key shares given do not reconstruct this server's "
                             "key; start a new attempt")
        token = self._make_root()
        encoded = encode_token(token, attempt.extra.decode())
        log_event(log, "generate_root_completed", "a new root token was generated by a quorum of key holders",
                  boot_id=self.shared.boot_id)
        return {"started": True, "nonce": attempt.nonce, "progress": threshold, "required": threshold,
                "complete": True, "encoded_token": encoded, "encoded_root_token": encoded, "pgp_fingerprint": ""}

    def _authorises(self, config: SealConfig, secret: bytes) -> bool:
        """Unseal key: it decrypts the root key.  Recovery key: its hash
        matches the one kept at init (with break_glass it is the unseal key)."""
        if config.recovery_seal and not config.break_glass:
            return is_recovery_key(config, secret)
        blob = self.lifecycle.physical.get(ROOT_KEY)
        if blob is None:
            return False
        try:
            aead.decrypt(secret, blob, ROOT_KEY.encode())
        except (aead.AuthenticationError, ValueError):
            return False
        return True
