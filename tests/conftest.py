"""Shared test set-up: the KMS emulator fixtures (tests/kms_fixtures.py) and a
real PostgreSQL (tests/postgres_fixtures.py)."""

import sys
from pathlib import Path

# Helpers are imported as ``tests.*``; make the repository root importable
# also when pytest runs as the bare ``pytest`` script (not ``python -m``).
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

pytest_plugins = ["tests.kms_fixtures", "tests.postgres_fixtures"]
