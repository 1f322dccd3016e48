"""AES-256-GCM with a random nonce, in one self-describing blob.

Every layer that encrypts (barrier, keyring, root key under the KEK) uses the
same helper so that nonce handling is written once: a fresh 96-bit random
nonce per message, stored in front of the ciphertext.  The associated data is
how callers bind a ciphertext to its context (the storage path, the key
term), so a blob copied somewhere else fails to decrypt.
"""

from __future__ import annotations

import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16


class AuthenticationError(Exception):
    """Decryption failed: wrong key, wrong associated data, or a damaged blob.

    The causes are deliberately not told apart: callers map this to "invalid
    key" or "corrupt storage" and an oracle on *why* would help an attacker.
    """

    def __init__(self, message: str = "message authentication failed") -> None:
        super().__init__(message)


def generate_key() -> bytes:
    return secrets.token_bytes(KEY_SIZE)


class Cipher:
    """One key with its AES key schedule made once, for keys used for many
    messages (the barrier's keyring terms).  Drop it to drop the key."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError("AES-256-GCM needs a 32-byte key")
        self._aead = AESGCM(bytes(key))

    def __repr__(self) -> str:
        return "Cipher(<redacted>)"

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = secrets.token_bytes(NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, bytes(plaintext), bytes(aad))

    def decrypt(self, blob: bytes, aad: bytes) -> bytes:
        if len(blob) < NONCE_SIZE + TAG_SIZE:
            raise AuthenticationError()
        blob = bytes(blob)
        try:
            return self._aead.decrypt(blob[:NONCE_SIZE], blob[NONCE_SIZE:], bytes(aad))
        except InvalidTag:
            raise AuthenticationError() from None


def encrypt(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """``nonce || ciphertext || tag``.  A wrong-sized key is a programming
    error here (ValueError), unlike in :func:`decrypt`."""
    return Cipher(key).encrypt(plaintext, aad)


def decrypt(key: bytes, blob: bytes, aad: bytes) -> bytes:
    """Plaintext of ``blob``, or :class:`AuthenticationError`.

    A key of the wrong size also counts as a wrong key, because it can come
    from outside (shares of some other secret combine to a different length)
    and must not surface as a 500.
    """
    if len(key) != KEY_SIZE:
        raise AuthenticationError()
    return Cipher(key).decrypt(blob, aad)
