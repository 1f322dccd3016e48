from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vaultd.crypto import aead
from vaultd.crypto.aead import AuthenticationError


def test_round_trip() -> None:
    key = aead.generate_key()
    for plaintext in (b"", b"x", b"secret value" * 1000):
        blob = aead.encrypt(key, plaintext, b"core/keyring")
        assert aead.decrypt(key, blob, b"core/keyring") == plaintext


def test_layout_is_nonce_ciphertext_tag() -> None:
    # Checked against the library directly, so the layout is a contract
    # other tools (and a future Go port) can rely on.
    key = aead.generate_key()
    blob = aead.encrypt(key, b"hello", b"aad")
    assert len(blob) == 12 + 5 + 16
    assert AESGCM(key).decrypt(blob[:12], blob[12:], b"aad") == b"hello"


def test_generate_key() -> None:
    first, second = aead.generate_key(), aead.generate_key()
    assert len(first) == 32
    assert first != second


def test_nonce_is_fresh_each_time() -> None:
    key = aead.generate_key()
    blobs = {aead.encrypt(key, b"same", b"") for _ in range(50)}
    assert len(blobs) == 50
    assert len({blob[:12] for blob in blobs}) == 50


def test_wrong_key() -> None:
    blob = aead.encrypt(aead.generate_key(), b"data", b"a")
    with pytest.raises(AuthenticationError):
        aead.decrypt(aead.generate_key(), blob, b"a")


def test_wrong_aad() -> None:
    key = aead.generate_key()
    blob = aead.encrypt(key, b"data", b"logical/kv/foo")
    with pytest.raises(AuthenticationError):
        aead.decrypt(key, blob, b"logical/kv/bar")


def test_wrong_key_length_on_decrypt_is_authentication_error() -> None:
    key = aead.generate_key()
    blob = aead.encrypt(key, b"data", b"")
    for bad in (b"", key[:16], key + b"\x00"):
        with pytest.raises(AuthenticationError):
            aead.decrypt(bad, blob, b"")


def test_wrong_key_length_on_encrypt_is_value_error() -> None:
    with pytest.raises(ValueError):
        aead.encrypt(b"\x00" * 16, b"data", b"")


@pytest.mark.parametrize("cut", [0, 1, 12, 27, 28, 40])
def test_truncated(cut: int) -> None:
    key = aead.generate_key()
    blob = aead.encrypt(key, b"twelve bytes", b"")
    assert len(blob) == 40
    with pytest.raises(AuthenticationError):
        aead.decrypt(key, blob[: cut - 1] if cut else b"", b"")


def test_every_flipped_bit_is_detected() -> None:
    key = aead.generate_key()
    blob = aead.encrypt(key, b"abc", b"ctx")
    for index in range(len(blob)):
        for bit in range(8):
            tampered = bytearray(blob)
            tampered[index] ^= 1 << bit
            with pytest.raises(AuthenticationError):
                aead.decrypt(key, bytes(tampered), b"ctx")


def test_appended_bytes_are_detected() -> None:
    key = aead.generate_key()
    blob = aead.encrypt(key, b"abc", b"")
    with pytest.raises(AuthenticationError):
        aead.decrypt(key, blob + b"\x00", b"")


def test_error_carries_no_secret() -> None:
    key = aead.generate_key()
    plaintext = b"top secret plaintext"
    blob = aead.encrypt(key, plaintext, b"")
    with pytest.raises(AuthenticationError) as info:
        aead.decrypt(aead.generate_key(), blob, b"")
    text = str(info.value) + repr(info.value)
    assert text == "message authentication failed" + "AuthenticationError('message authentication failed')"
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__
