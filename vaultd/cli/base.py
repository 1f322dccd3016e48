"""What every vaultctl command shares: its flags, the client, and failures.

Commands stay short by raising :class:`Failure` (message and exit code) and
letting ``main`` print it; the client is built from Vault's environment
variables (``VAULT_ADDR``, ``VAULT_TOKEN``, ``VAULT_CACERT``,
``VAULT_SKIP_VERIFY``, ``VAULT_FORMAT``) and the matching flags.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

from vaultd.cli import tokenfile
from vaultd.cli.client import DEFAULT_ADDR, Client, ClientError, Response
from vaultd.cli.flags import EXIT_API, EXIT_USAGE, Flag, Parsed, UsageError
from vaultd.cli.output import FORMATS

COMMON_FLAGS = [
    Flag("address", str, None, "Address of the server (VAULT_ADDR)."),
    Flag("ca-cert", str, None, "PEM file of the CA that signed the server's certificate (VAULT_CACERT)."),
    Flag("tls-skip-verify", bool, False, "Do not verify the server's certificate (VAULT_SKIP_VERIFY)."),
    Flag("format", str, None, "Output format: table or json (VAULT_FORMAT)."),
    Flag("help", bool, False, "Show this help."),
    Flag("h", bool, False, "Show this help."),
]

_TRUE = {"1", "t", "T", "TRUE", "true", "True"}


class Failure(Exception):
    """The command failed; ``message`` goes to stderr, ``code`` is the exit."""

    def __init__(self, message: str, code: int = EXIT_API) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True)
class Command:
    path: tuple[str, ...]
    synopsis: str
    usage: str
    flags: tuple[Flag, ...]
    run: Callable[[Context], int]

    @property
    def all_flags(self) -> list[Flag]:
        return [*self.flags, *COMMON_FLAGS]

    def help_text(self) -> str:
        lines = [f"Usage: vaultctl {' '.join(self.path)} {self.usage}".rstrip(), "", f"  {self.synopsis}", ""]
        lines.append("Command options:")
        for flag in self.flags:
            lines.append(f"  -{flag.name}{'' if flag.kind is bool else '=VALUE'}")
            lines.append(f"      {flag.help}")
        lines.append("")
        lines.append("Common options: -address, -ca-cert, -tls-skip-verify, -format=table|json")
        return "\n".join(lines)


class Context:
    """One run of one command."""

    def __init__(self, command: Command, parsed: Parsed) -> None:
        self.command = command
        self.parsed = parsed
        self.args = parsed.args

    def flag(self, name: str) -> object:
        return self.parsed.values[name]

    @cached_property
    def format(self) -> str:
        value = self.flag("format") or os.environ.get("VAULT_FORMAT") or "table"
        value = str(value).lower()
        if value not in FORMATS:
            raise UsageError(f"Invalid output format: {value}")
        return value

    @property
    def json(self) -> bool:
        return self.format == "json"

    @cached_property
    def client(self) -> Client:
        address = self.flag("address") or os.environ.get("VAULT_ADDR") or DEFAULT_ADDR
        verify: bool | str = True
        ca_cert = self.flag("ca-cert") or os.environ.get("VAULT_CACERT") or os.environ.get("VAULT_CAPATH")
        if ca_cert:
            verify = str(ca_cert)
        if self.flag("tls-skip-verify") or os.environ.get("VAULT_SKIP_VERIFY", "") in _TRUE:
            verify = False
            _quiet_insecure_warning()
        token = os.environ.get("VAULT_TOKEN") or tokenfile.read_token()
        return Client(str(address), token, verify)

    def call(
        self,
        action: str | None,
        method: str,
        path: str,
        body: object = None,
        params: dict[str, str] | None = None,
        token: str | None = None,
        ok_statuses: tuple[int, ...] = (),
    ) -> Response:
        """A request whose failure ends the command as Vault reports it:
        ``Error <action>: <details>``, exit 2."""
        try:
            return self.client.request(method, path, body, params, token, ok_statuses)
        except ClientError as exc:
            raise Failure(f"Error {action}: {exc}" if action else str(exc), EXIT_API) from None

    def read_stdin(self) -> str:
        return sys.stdin.read()


def usage_failure(message: str) -> Failure:
    return Failure(message, EXIT_USAGE)


def _quiet_insecure_warning() -> None:
    """The operator asked for no verification; urllib3's per-request warning
    would bury the output."""
    import urllib3

    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
