"""Vault's encoding of a generated root token: base64 (unpadded) of the
token XOR'd byte for byte with a one-time password of the same length.

Shared by the server (which encodes) and ``vaultctl`` (which decodes
locally, as the Vault CLI does, so the token never crosses the wire).
"""

from __future__ import annotations

import base64
import binascii
import secrets
import string

_BASE62 = string.ascii_letters + string.digits


def random_otp(length: int) -> str:
    return "".join(secrets.choice(_BASE62) for _ in range(length))


def encode_token(token: str, otp: str) -> str:
    if len(token.encode()) != len(otp.encode()):
        raise ValueError("the token and the OTP differ in length")
    mixed = bytes(a ^ b for a, b in zip(token.encode(), otp.encode(), strict=True))
    return base64.b64encode(mixed).decode().rstrip("=")


def decode_token(encoded: str, otp: str) -> str:
    """``ValueError`` with a message fit for an operator if it cannot."""
    try:
        mixed = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("error decoding base64'd token") from None
    if len(mixed) != len(otp.encode()):
        raise ValueError("the encoded token and the OTP differ in length")
    try:
        return bytes(a ^ b for a, b in zip(mixed, otp.encode(), strict=True)).decode()
    except UnicodeDecodeError:
        raise ValueError("the OTP does not decode this token") from None
