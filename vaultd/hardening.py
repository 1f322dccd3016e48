"""Process hardening shared by the daemon and the agent."""

from __future__ import annotations

import resource


def disable_core_dumps() -> None:
    """A core dump of either process would hold the root key or the
    unwrapped unseal key.  The systemd units already say ``LimitCORE=0``;
    this covers the same processes started by hand, and children inherit it."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
