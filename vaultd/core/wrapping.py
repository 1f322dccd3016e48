"""Response wrapping: any response can be handed out as a single-use token.

A client asks with ``X-Vault-Wrap-TTL``.  Instead of the response it gets a
wrapping token: an orphan with only the ``response-wrapping`` policy, one
use, and the asked TTL; the response itself is kept in that token's
cubbyhole.  ``sys/wrapping/unwrap`` reads it and revokes the token in one
step under the token store's lock, so a wrapped secret is given out once:
a second unwrap, or a first one by someone who intercepted the token after
its owner used it, fails, and the owner learns of the interception.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from vaultd.durations import rfc3339
from vaultd.engines.cubbyhole import put_response, take_response
from vaultd.errors import BadRequest
from vaultd.logical import Auth

if TYPE_CHECKING:
    from vaultd.core.core import Core
    from vaultd.core.tokens import TokenEntry

WRAPPING_POLICY = "response-wrapping"
MAX_WRAP_TTL = 2**31
INVALID = "wrapping token is not valid or does not exist"

requested_wrap_ttl: ContextVar[int | None] = ContextVar("requested_wrap_ttl", default=None)
"""The wrap TTL the current request asks for (set by the HTTP layer), so the
one authorisation gate can apply a policy's min/max_wrapping_ttl to every
request, system endpoints included."""



class Wrapping:
    def __init__(self, core: Core) -> None:
        self._core = core

    def wrap(self, body: dict[str, Any], ttl: int, creation_path: str, *, wrapped_accessor: str = "") -> dict[str, Any]:
        """Keep ``body`` (a whole response envelope) and return ``wrap_info``."""
        if ttl <= 0 or ttl > MAX_WRAP_TTL:
            raise BadRequest("invalid wrap TTL")
        core = self._core
        token, entry, _ = core.tokens.issue_login(
            Auth(policies=[WRAPPING_POLICY], no_default_policy=True, ttl=ttl, explicit_max_ttl=ttl, num_uses=1,
                 renewable=False),
            path=creation_path,
            display_prefix="response-wrapping",
            default_ttl=ttl,
            max_ttl=ttl,
        )
        put_response(core.cubbyhole.space(entry.id_hash), body)
        return {
            "token": token,
            "accessor": entry.accessor,
            "ttl": ttl,
            "creation_time": rfc3339(entry.creation_time),
            "creation_path": creation_path,
            "wrapped_accessor": wrapped_accessor,
        }

    def _wrapping_entry(self, token: str | None) -> TokenEntry:
        entry = self._core.tokens.lookup(token) if token else None
        if entry is None or WRAPPING_POLICY not in entry.policies:
            raise BadRequest(INVALID)
        return entry

    def unwrap(self, token: str | None) -> dict[str, Any]:
        """The wrapped response; the wrapping token is revoked with it."""
        core = self._core
        entry = self._wrapping_entry(token)
        body = core.tokens.consume(entry, lambda: take_response(core.cubbyhole.space(entry.id_hash)))
        if body is None:
            raise BadRequest(INVALID)
        return body

    def lookup(self, token: str | None) -> dict[str, Any]:
        entry = self._wrapping_entry(token)
        return {
            "creation_path": entry.path,
            "creation_time": rfc3339(entry.creation_time),
            "creation_ttl": entry.creation_ttl,
        }

    def rewrap(self, token: str | None) -> dict[str, Any]:
        """A new wrapping token for the same response and TTL."""
        entry = self._wrapping_entry(token)
        ttl, path = entry.creation_ttl, entry.path
        body = self.unwrap(token)
        return self.wrap(body, ttl, path)
