"""The test tree itself: its directories have no ``__init__.py`` (pytest's
rootdir-relative "rootdir" import mode is not used), so two test files with
one basename in different directories collide at collection and stop the
whole run.  Caught here, in a second, instead of by a failed CI run."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_every_test_module_has_its_own_basename() -> None:
    names = Counter(path.name for path in TESTS.rglob("test_*.py") if "node_modules" not in path.parts)
    assert [name for name, count in names.items() if count > 1] == []
