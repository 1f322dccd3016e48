#!/usr/bin/python3
"""``ExecCondition=`` of vaultd-unsealer.service: is there anything to unseal?

Installed as ``/usr/libexec/vaultd/has-auto-seal``.  Exit 0 when the config
has a ``seal "awskms"`` stanza, so the agent starts; exit 1 when it has none
(the shamir seal, the shipped default), so systemd skips the agent instead
of showing it failed.  A file that cannot be read or parsed also gives 0: the
agent then starts and reports the problem with its own exit code, which is
better than skipping it silently.
"""

from __future__ import annotations

import sys

HAS_AUTO_SEAL = 0
NO_AUTO_SEAL = 1


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: has-auto-seal CONFIG", file=sys.stderr)
        return HAS_AUTO_SEAL
    try:
        from vaultd.config import load_config

        config = load_config(argv[1])
    except Exception as exc:  # any failure: let the agent say what is wrong
        print(f"has-auto-seal: cannot judge {argv[1]} ({type(exc).__name__}); starting the agent", file=sys.stderr)
        return HAS_AUTO_SEAL
    if config.seal is not None and config.seal.type == "awskms":
        return HAS_AUTO_SEAL
    print(f'has-auto-seal: {argv[1]} has no seal "awskms" stanza; the unsealer agent is not needed', file=sys.stderr)
    return NO_AUTO_SEAL


if __name__ == "__main__":
    sys.exit(main(sys.argv))
