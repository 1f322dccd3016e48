"""Shamir secret sharing over GF(2^8), share-compatible with HashiCorp Vault.

The unseal key is split so that no single operator can unseal alone.  Vault's
share layout is kept byte for byte (one y-value per secret byte, then a single
x-coordinate byte at the end, field polynomial 0x11b) so that shares printed
by Vault/OpenBao tooling and by vaultd are interchangeable, and operators'
runbooks keep working.

One deliberate difference from Vault: Vault re-draws a polynomial until its
top coefficient is non-zero, which makes a single share with threshold 2 rule
out one secret value (``y == secret`` can never happen).  Here every
coefficient is uniform, so ``threshold - 1`` shares are independent of the
secret.  Shares stay valid both ways: combining does not care how they were
drawn.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

_FIELD_POLY = 0x11B
_GENERATOR = 0x03


def _build_tables() -> tuple[bytes, bytes]:
    """Exp/log tables for generator 3, computed rather than pasted so they
    cannot carry a typo; tests cross-check entries against Vault's tables."""
    exp = bytearray(256)
    log = bytearray(256)
    value = 1
    for power in range(255):
        exp[power] = value
        log[value] = power
        # value *= 3, i.e. value ^ (value * 2) reduced by the field polynomial.
        doubled = value << 1
        if doubled & 0x100:
            doubled ^= _FIELD_POLY
        value ^= doubled
    exp[255] = exp[0]
    return bytes(exp), bytes(log)


_EXP, _LOG = _build_tables()


def _build_mul_rows() -> tuple[bytes, ...]:
    """A full 256x256 product table: splitting 255 shares evaluates millions
    of products, and one indexing operation per product keeps that fast."""
    rows = []
    for a in range(256):
        if a == 0:
            rows.append(bytes(256))
            continue
        log_a = _LOG[a]
        rows.append(bytes([0] + [_EXP[(log_a + _LOG[b]) % 255] for b in range(1, 256)]))
    return tuple(rows)


_MUL = _build_mul_rows()


def add(a: int, b: int) -> int:
    """Addition (and subtraction) in GF(2^8)."""
    return a ^ b


def mult(a: int, b: int) -> int:
    """Multiplication in GF(2^8) modulo the AES polynomial."""
    return _MUL[a][b]


def inverse(a: int) -> int:
    if a == 0:
        raise ZeroDivisionError("zero has no inverse in GF(2^8)")
    return _EXP[(255 - _LOG[a]) % 255]


def div(a: int, b: int) -> int:
    """Division in GF(2^8); ``div(0, b)`` is 0, dividing by zero raises."""
    return _MUL[a][inverse(b)]


def _evaluate(coefficients: Sequence[int], x: int) -> int:
    """Horner's rule; ``coefficients[0]`` is the intercept (the secret byte)."""
    row = _MUL[x]
    out = 0
    for coeff in reversed(coefficients):
        out = row[out] ^ coeff
    return out


def _make_shares(secret: bytes, xs: Sequence[int], coefficients: Sequence[bytes]) -> list[bytes]:
    """Shares for ``secret`` at ``xs``; ``coefficients[i]`` holds the
    ``threshold - 1`` non-constant coefficients of byte ``i``'s polynomial.

    Kept free of randomness so tests can enumerate every polynomial and show
    that fewer than threshold shares say nothing about the secret.
    """
    shares = [bytearray(len(secret) + 1) for _ in xs]
    for share, x in zip(shares, xs, strict=True):
        share[-1] = x
    for idx, byte in enumerate(secret):
        poly = (byte, *coefficients[idx])
        for share, x in zip(shares, xs, strict=True):
            share[idx] = _evaluate(poly, x)
    return [bytes(share) for share in shares]


def _random_x_coordinates(parts: int) -> list[int]:
    """Distinct non-zero x-coordinates in random order, as Vault draws them
    (a random permutation of 1..255), so a share's x says nothing about its
    position in the list an operator was given."""
    return secrets.SystemRandom().sample(range(1, 256), parts)


def split(secret: bytes, parts: int, threshold: int) -> list[bytes]:
    """Split ``secret`` into ``parts`` shares, any ``threshold`` of which recover it."""
    if not isinstance(secret, (bytes, bytearray)):
        raise TypeError("secret must be bytes")
    if isinstance(parts, bool) or isinstance(threshold, bool):
        raise TypeError("parts and threshold must be integers")
    if not secret:
        raise ValueError("cannot split an empty secret")
    if threshold < 2:
        raise ValueError("threshold must be at least 2")
    if parts < threshold:
        raise ValueError("parts cannot be less than threshold")
    if parts > 255:
        raise ValueError("parts cannot exceed 255")
    secret = bytes(secret)
    xs = _random_x_coordinates(parts)
    width = threshold - 1
    pool = secrets.token_bytes(len(secret) * width)
    coefficients = [pool[i * width:(i + 1) * width] for i in range(len(secret))]
    return _make_shares(secret, xs, coefficients)


def _basis_at_zero(xs: Sequence[int]) -> list[int]:
    """Lagrange basis values at x=0, shared by every byte of the secret."""
    basis = []
    for i, xi in enumerate(xs):
        value = 1
        for j, xj in enumerate(xs):
            if i != j:
                # (0 - xj) / (xi - xj) with subtraction being XOR.
                value = mult(value, div(xj, xi ^ xj))
        basis.append(value)
    return basis


def combine(shares: Sequence[bytes]) -> bytes:
    """Recover the secret from at least ``threshold`` shares.

    Given fewer shares than the threshold the result is a random-looking
    wrong value, not an error: shares carry no threshold (as in Vault), so the
    caller must check the result, e.g. by decrypting something with it.
    """
    if len(shares) < 2:
        raise ValueError("less than two shares cannot be used to reconstruct the secret")
    for share in shares:
        if not isinstance(share, (bytes, bytearray)):
            raise TypeError("shares must be bytes")
    length = len(shares[0])
    if length < 2:
        raise ValueError("shares must be at least two bytes")
    if any(len(share) != length for share in shares):
        raise ValueError("all shares must be the same length")
    xs = [share[-1] for share in shares]
    if 0 in xs:
        raise ValueError("invalid share: x-coordinate is zero")
    if len(set(xs)) != len(xs):
        raise ValueError("duplicate share detected")
    basis = _basis_at_zero(xs)
    secret = bytearray(length - 1)
    for idx in range(length - 1):
        value = 0
        for share, weight in zip(shares, basis, strict=True):
            value ^= _MUL[share[idx]][weight]
        secret[idx] = value
    return bytes(secret)
