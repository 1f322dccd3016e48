"""The request and response that pass between the router and the engines.

This is vaultd's counterpart of Vault's ``logical.Request``/``Response``: the
HTTP layer builds a :class:`Request`, the core checks the token and policy and
hands it to the engine mounted at the path, and the engine answers with a
:class:`Response`.  No Flask types cross this line, so engines can be tested
without a web server.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Operation(enum.StrEnum):
    """Vault's logical operations.  HTTP methods map onto them in the API layer:
    GET→READ, POST/PUT→CREATE or UPDATE, DELETE→DELETE, LIST (or GET
    ?list=true)→LIST, PATCH→PATCH."""

    READ = "read"
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    LIST = "list"
    PATCH = "patch"


@dataclass
class Request:
    operation: Operation
    path: str
    """Path relative to the mount, without a leading slash (``data/foo``)."""
    data: dict[str, Any] = field(default_factory=dict)
    """The decoded JSON body (POST/PUT/PATCH); empty for reads."""
    query: dict[str, str] = field(default_factory=dict)
    """Query parameters (``version=2`` on a KV v2 read)."""
    mount_path: str = ""
    """The mount the request was routed to, with trailing slash (``secret/``)."""
    client_token_accessor: str = ""
    display_name: str = ""
    remote_addr: str = ""
    """The client's address, for CIDR-bound logins; empty when unknown."""
    client_token_hash: str = ""
    """The authenticated token's storage hash (never the token): the key to
    its cubbyhole.  Set by the core, never by a client."""


@dataclass
class Auth:
    """What an auth method's login asks the core to issue a token for (a
    login never makes the token itself: it has no access to the token store,
    so the core applies the mount's TTL limits in one place)."""

    policies: list[str] = field(default_factory=list)
    display_name: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    ttl: int = 0
    max_ttl: int = 0
    period: int = 0
    explicit_max_ttl: int = 0
    num_uses: int = 0
    bound_cidrs: list[str] = field(default_factory=list)
    no_default_policy: bool = False
    renewable: bool = True


@dataclass
class Response:
    """What an engine returns.

    ``data is None`` and no ``auth`` means HTTP 204.  ``status`` overrides the
    code (KV v2 answers 404 *with* a body for a deleted version).
    """

    data: dict[str, Any] | None = None
    warnings: list[str] | None = None
    status: int | None = None
    auth: dict[str, Any] | None = None
    lease_duration: int = 0
    renewable: bool = False
    raw: dict[str, Any] | None = None
    """A body sent as-is, without Vault's envelope (``sys/seal-status``)."""
    login: Auth | None = None
    """Set by an auth method's login: the core issues the token and fills
    ``auth`` with Vault's auth block."""


def clean_path(path: str) -> str:
    """``//``, ``.`` and ``..`` resolved (``..`` never above the root), a
    trailing ``/`` kept: what Vault's HTTP layer does to every path before
    routing.  The core cleans once, before authorising, so the policy check
    and the engine always see the same path (``kv/data/../config`` is
    ``kv/config`` for both, and needs a grant there)."""
    parts: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if parts:
                parts.pop()
            continue
        parts.append(segment)
    cleaned = "/".join(parts)
    if cleaned and path.endswith("/"):
        cleaned += "/"
    return cleaned

