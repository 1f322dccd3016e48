"""Fixtures every fuzz module shares."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fuzz.fuzz_support import ErrorLog, installed_error_log


@pytest.fixture(scope="module")
def errors() -> Iterator[ErrorLog]:
    """Every ERROR line logged while a module's examples run."""
    yield from installed_error_log()
