"""``check_key`` is ``split_key``'s verdict, taken faster: the two must agree
on every string, or a backend using one would accept what another refuses."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vaultd.storage.keys import check_key, split_key

KEY_TEXT = st.text(alphabet=st.sampled_from(["a", "/", ".", "é", "\ud800", "-"]), max_size=12)


def verdict(check: object, key: object) -> type[BaseException] | None:
    try:
        check(key)  # type: ignore[operator]
    except (ValueError, TypeError) as exc:
        return type(exc)
    return None


@given(KEY_TEXT)
def test_check_key_agrees_with_split_key(key: str) -> None:
    assert verdict(check_key, key) == verdict(split_key, key)


@pytest.mark.parametrize(
    ("key", "valid"),
    [("a", True), ("a/b", True), ("a..b", True), ("a/../b", False), ("..", False), ("/a", False),
     ("a/", False), ("a//b", False), ("", False), ("é/ü", True), ("a/\ud800", False)],
)
def test_check_key_examples(key: str, valid: bool) -> None:
    assert (verdict(check_key, key) is None) is valid


def test_check_key_refuses_non_strings() -> None:
    with pytest.raises(TypeError):
        check_key(b"a")  # type: ignore[arg-type]
