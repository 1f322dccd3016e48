"""The package's 3-node example: each node's config loads, the three share
one storage stanza and the seal, and differ in their own addresses only; the
package installs them and the PostgreSQL setup text, which the README names."""

from __future__ import annotations

import re
from pathlib import Path

from vaultd.config import load_config

ROOT = Path(__file__).resolve().parents[2]
NODES = [ROOT / "docs" / "ha" / f"vaultd-node{i}.hcl" for i in (1, 2, 3)]
SETUP = ROOT / "docs" / "ha" / "postgresql-setup.md"


def test_the_three_node_configs_load_and_differ_only_in_their_addresses() -> None:
    configs = [load_config(str(path)) for path in NODES]
    for i, config in enumerate(configs, start=1):
        assert config.ha_enabled
        assert config.storage.type == "postgresql"
        assert config.api_addr == f"https://10.0.0.{i}:8200"
        assert config.seal is not None and config.seal.type == "awskms"
    assert len({repr(sorted(c.storage.options.items())) for c in configs}) == 1
    texts = [re.sub(r"10\.0\.0\.\d", "ADDR", re.sub(r"node \d of 3", "", path.read_text())) for path in NODES]
    assert texts[0] == texts[1] == texts[2]


def test_the_package_installs_them_and_the_readme_names_them() -> None:
    rules = (ROOT / "packaging" / "debian" / "rules").read_text()
    for path in NODES:
        assert str(path.relative_to(ROOT)) in rules
    assert "usr/share/vaultd/examples/ha" in rules
    docs = (ROOT / "packaging" / "debian" / "vaultd.docs").read_text().split()
    assert str(SETUP.relative_to(ROOT)) in docs
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Running several nodes"):]
    assert "/usr/share/doc/vaultd/postgresql-setup.md" in section
    assert "/usr/share/vaultd/examples/ha/vaultd-node{1,2,3}.hcl" in section
    assert "/usr/share/vaultd/examples/ha/vaultd-node{1,2,3}.hcl" in SETUP.read_text()
