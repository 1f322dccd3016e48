"""The security barrier: a Storage that encrypts everything it stores.

Everything above the barrier (mount table, tokens, engine data) reads and
writes plaintext through it; the physical backend below only ever sees
``term (4 bytes) | version (1) | nonce | ciphertext+tag``.  The storage path is
the AEAD associated data, so a value copied to another path fails to decrypt
instead of being silently accepted there.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable, Iterator, Sequence

from vaultd.core.keyring import Keyring
from vaultd.crypto import aead
from vaultd.errors import Sealed, StorageError
from vaultd.storage.base import Op, Put, Storage
from vaultd.storage.cache import DecodeMemo

_VERSION = 1
_PREFIX = struct.Struct(">IB")


class Barrier(Storage):
    def __init__(
        self,
        physical: Storage,
        reload_keyring: Callable[[], Keyring],
        on_encrypt: Callable[[], None] | None = None,
    ) -> None:
        self._physical = physical
        self._reload = reload_keyring
        self._on_encrypt = on_encrypt
        self._keyring: Keyring | None = None
        # Plaintext of recent reads, keyed on the ciphertext object the
        # cached storage below returned (see DecodeMemo); wiped on seal.
        self._plaintexts: DecodeMemo[bytes] = DecodeMemo()

    # -- seal state ------------------------------------------------------------

    @property
    def sealed(self) -> bool:
        return self._keyring is None

    def unseal(self, keyring: Keyring) -> None:
        self._plaintexts.clear()
        self._keyring = keyring

    def seal(self) -> None:
        self._keyring = None
        self._plaintexts.clear()

    @property
    def keyring(self) -> Keyring:
        if self._keyring is None:
            raise Sealed()
        return self._keyring

    # -- Storage ---------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        if self._keyring is None:
            raise Sealed()
        blob = self._physical.get(key)
        if blob is None:
            return None
        return self._plaintexts.get(key, blob, lambda raw: self.decrypt(key, raw))

    def put(self, key: str, value: bytes) -> None:
        self._physical.put(key, self.encrypt(key, value))

    def delete(self, key: str) -> None:
        self.keyring  # noqa: B018 - a sealed barrier refuses every operation
        self._physical.delete(key)

    def transaction(self, ops: Sequence[Op]) -> None:
        """Every value encrypted first, so a sealed barrier or a failed
        encryption stores nothing."""
        self.keyring  # noqa: B018
        self._physical.transaction(
            [Put(op.key, self.encrypt(op.key, op.value)) if isinstance(op, Put) else op for op in ops]
        )

    def list(self, prefix: str) -> list[str]:
        self.keyring  # noqa: B018
        return self._physical.list(prefix)

    def keys(self, prefix: str = "") -> Iterator[str]:
        self.keyring  # noqa: B018
        return self._physical.keys(prefix)

    def lock(self, name: str = "") -> contextlib.AbstractContextManager[None]:
        return self._physical.lock(name)

    # -- the cipher ------------------------------------------------------------

    def encrypt(self, key: str, plaintext: bytes) -> bytes:
        term = self.keyring.active_term
        if self._on_encrypt is not None:
            self._on_encrypt()
        return _PREFIX.pack(term.number, _VERSION) + term.cipher.encrypt(plaintext, key.encode())

    def decrypt(self, key: str, blob: bytes) -> bytes:
        if len(blob) < _PREFIX.size:
            raise StorageError(f"stored value at {key!r} is truncated")
        number, version = _PREFIX.unpack_from(blob)
        if version != _VERSION:
            raise StorageError(f"stored value at {key!r} has unknown version {version}")
        keyring = self.keyring
        if number not in keyring.terms:
            # Another worker rotated the keyring after we loaded ours.
            keyring = self._keyring = self._reload()
            if number not in keyring.terms:
                raise StorageError(f"stored value at {key!r} uses unknown key term {number}")
        try:
            return keyring.terms[number].cipher.decrypt(blob[_PREFIX.size :], key.encode())
        except aead.AuthenticationError:
            raise StorageError(f"stored value at {key!r} failed authentication") from None
