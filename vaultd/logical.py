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
