from __future__ import annotations

import itertools
import secrets

import pytest

from vaultd.crypto import shamir

# Values from HashiCorp Vault's shamir/tables.go (generator 0xe5, polynomial
# 0x11b): expTable[0..7] and a few logTable entries.  Our tables use generator
# 3, so matching these checks the field itself, not a copied table.
VAULT_EXP_E5 = [0x01, 0xE5, 0x4C, 0xB5, 0xFB, 0x9F, 0xFC, 0x12]
VAULT_LOG_E5 = {0x02: 0xC8, 0x03: 0x08, 0x04: 0x91, 0x07: 0x36, 0x10: 0x23, 0xFF: 0x38}


def power(base: int, exponent: int) -> int:
    out = 1
    for _ in range(exponent):
        out = shamir.mult(out, base)
    return out


def test_field_matches_vault_test_vectors() -> None:
    # shamir_test.go: TestField_Add, TestField_Mult, TestField_Divide.
    assert shamir.add(16, 16) == 0
    assert shamir.add(3, 4) == 7
    assert shamir.mult(3, 7) == 9
    assert shamir.mult(3, 0) == 0
    assert shamir.mult(0, 3) == 0
    assert shamir.div(0, 7) == 0
    assert shamir.div(3, 3) == 1
    assert shamir.div(6, 3) == 2


def test_field_matches_vault_tables() -> None:
    for exponent, expected in enumerate(VAULT_EXP_E5):
        assert power(0xE5, exponent) == expected
    for value, log in VAULT_LOG_E5.items():
        assert power(0xE5, log) == value


def test_field_is_aes_field() -> None:
    # FIPS-197 section 4.2: {57} * {83} = {c1}, {57} * {13} = {fe}.
    assert shamir.mult(0x57, 0x83) == 0xC1
    assert shamir.mult(0x57, 0x13) == 0xFE
    for a in range(1, 256):
        assert shamir.mult(a, shamir.inverse(a)) == 1
        assert shamir.div(shamir.mult(a, 0x1D), 0x1D) == a
    with pytest.raises(ZeroDivisionError):
        shamir.div(1, 0)


def test_share_layout() -> None:
    secret = secrets.token_bytes(32)
    shares = shamir.split(secret, 5, 3)
    assert len(shares) == 5
    assert all(len(share) == 33 for share in shares)
    xs = [share[-1] for share in shares]
    assert 0 not in xs
    assert len(set(xs)) == 5


@pytest.mark.parametrize(
    ("parts", "threshold"), [(2, 2), (3, 2), (5, 3), (6, 6), (10, 2), (255, 2), (255, 255)]
)
def test_any_threshold_subset_recovers(parts: int, threshold: int) -> None:
    secret = secrets.token_bytes(32)
    shares = shamir.split(secret, parts, threshold)
    subsets = [shares[:threshold], shares[-threshold:], list(reversed(shares))[:threshold]]
    subsets.append(secrets.SystemRandom().sample(shares, threshold))
    subsets.append(shares)  # more than threshold also works
    for subset in subsets:
        assert shamir.combine(subset) == secret


def test_every_combination_recovers() -> None:
    # As Vault's TestCombine: all ordered choices of 3 of 5.
    secret = b"test"
    shares = shamir.split(secret, 5, 3)
    for subset in itertools.permutations(shares, 3):
        assert shamir.combine(list(subset)) == secret


def test_fewer_than_threshold_does_not_recover() -> None:
    secret = secrets.token_bytes(32)
    shares = shamir.split(secret, 5, 3)
    assert shamir.combine(shares[:2]) != secret


def test_shares_differ_across_calls() -> None:
    secret = secrets.token_bytes(32)
    first = shamir.split(secret, 3, 2)
    second = shamir.split(secret, 3, 2)
    assert set(first).isdisjoint(second)


def test_one_share_is_independent_of_the_secret_threshold_2() -> None:
    # Enumerate every degree-1 polynomial: for each secret byte the share at
    # any x takes every value exactly once, so a share says nothing.
    for x in (1, 0x53, 255):
        for secret in range(256):
            ys = {shamir._make_shares(bytes([secret]), [x], [bytes([a])])[0][0] for a in range(256)}
            assert len(ys) == 256


def test_two_shares_are_independent_of_the_secret_threshold_3() -> None:
    xs = [7, 200]
    for secret in (0, 1, 0x80, 0xFF):
        pairs = set()
        for a, b in itertools.product(range(256), repeat=2):
            s1, s2 = shamir._make_shares(bytes([secret]), xs, [bytes([a, b])])
            pairs.add((s1[0], s2[0]))
        assert len(pairs) == 256 * 256


def test_threshold_minus_one_shares_fit_every_secret() -> None:
    # With t-1 real shares fixed, every possible secret byte is consistent
    # with some t-th share: an attacker holding t-1 shares learns nothing.
    shares = shamir.split(b"\x42", 4, 3)
    known = shares[:2]
    free_x = next(x for x in range(1, 256) if x not in {s[-1] for s in known})
    reachable = {shamir.combine([*known, bytes([y, free_x])]) for y in range(256)}
    assert reachable == {bytes([v]) for v in range(256)}


def test_top_coefficient_may_be_zero() -> None:
    # Vault forces a non-zero top coefficient, so with threshold 2 a share
    # never equals the secret.  Uniform coefficients make y == secret happen
    # with probability 1/256; over 6000 splits missing it has odds ~1e-10.
    hits = sum(1 for _ in range(6000) if shamir.split(b"\x00", 2, 2)[0][0] == 0)
    assert hits > 0


@pytest.mark.parametrize(
    ("secret", "parts", "threshold"),
    [
        (b"test", 0, 0),
        (b"test", 2, 3),
        (b"test", 1000, 3),
        (b"test", 256, 256),
        (b"test", 10, 1),
        (b"", 3, 2),
    ],
)
def test_split_rejects_bad_input(secret: bytes, parts: int, threshold: int) -> None:
    with pytest.raises(ValueError):
        shamir.split(secret, parts, threshold)


def test_split_rejects_non_bytes() -> None:
    with pytest.raises(TypeError):
        shamir.split("test", 3, 2)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "shares",
    [
        [],
        [b"foo"],
        [b"foo", b"ba"],
        [b"f", b"b"],
        [b"foo", b"foo"],
        [b"ab\x01", b"cd\x01", b"ef\x02"],
        [b"ab\x00", b"cd\x01"],
    ],
)
def test_combine_rejects_bad_input(shares: list[bytes]) -> None:
    with pytest.raises(ValueError):
        shamir.combine(shares)


def test_errors_do_not_echo_shares() -> None:
    share = secrets.token_bytes(33)
    with pytest.raises(ValueError) as info:
        shamir.combine([share, share])
    assert share.hex() not in str(info.value)
    assert repr(share) not in str(info.value)
