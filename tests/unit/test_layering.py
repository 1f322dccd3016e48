"""DESIGN.md's floors: dependencies point down only.

Checked on the import statements themselves (ast), so a lazy import inside a
function counts as much as one at the top of a module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# package -> what it must never import
FORBIDDEN = {
    "vaultd/core": ("flask", "werkzeug", "gunicorn", "vaultd.api", "vaultd.server", "vaultd.cli"),
    "vaultd/engines": ("flask", "werkzeug", "gunicorn", "vaultd.core", "vaultd.api", "vaultd.server"),
    "vaultd/auth": ("flask", "werkzeug", "gunicorn", "vaultd.core", "vaultd.api", "vaultd.server"),
    "vaultd/seal": ("flask", "werkzeug", "gunicorn", "vaultd.core", "vaultd.api", "vaultd.server"),
    "vaultd/storage": ("flask", "werkzeug", "gunicorn", "vaultd.core", "vaultd.engines", "vaultd.api"),
    "vaultd/crypto": ("flask", "werkzeug", "gunicorn", "vaultd.core", "vaultd.storage", "vaultd.api"),
    "vaultd/cli": ("flask", "werkzeug", "gunicorn", "vaultd.core", "vaultd.api", "vaultd.server"),
    "unsealer": ("flask", "werkzeug", "gunicorn", "vaultd.core", "vaultd.api", "vaultd.server"),
}


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_upward_imports(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"{package} has no modules"
    bad = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in files
        for name in imported_modules(path)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[package])
    ]
    assert not bad, "\n".join(bad)
