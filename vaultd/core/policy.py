"""The one authorisation check every request passes through.

The HTTP handlers, the fast read path and the engines' routing all call
:func:`authorize` with the compiled ACL of the caller's policies (see
``policy_store.py`` for where it comes from and ``acl.py`` for how it
matches), so there is exactly one place that says yes or no.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vaultd.core.acl import ACL
from vaultd.errors import PermissionDenied
from vaultd.logical import Operation

CAPABILITY_OF = {
    Operation.READ: "read",
    Operation.CREATE: "create",
    Operation.UPDATE: "update",
    Operation.DELETE: "delete",
    Operation.LIST: "list",
    Operation.PATCH: "patch",
}


def authorize(
    acl: ACL,
    path: str,
    operation: Operation,
    *,
    sudo: bool = False,
    data: Mapping[str, Any] | None = None,
    wrap_ttl: int | None = None,
) -> None:
    """Raise :class:`PermissionDenied` unless the ACL allows ``operation`` on
    ``path`` with these parameters (and ``sudo`` on it when the endpoint is
    root-protected, as Vault's ``sys/seal`` or ``sys/mounts/*`` are)."""
    decision = acl.check(path, CAPABILITY_OF[operation], data=data, wrap_ttl=wrap_ttl)
    if not decision.allowed or (sudo and not decision.sudo):
        raise PermissionDenied()
