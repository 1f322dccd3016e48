"""What every audit device is, and the options they share.

A device only writes whole lines it is given; the core formats them (with
the device's salt) and decides what a failure means.  Options arrive as
Vault sends them, a map of strings (``bao audit enable file mode=0640``),
and are checked when the device is enabled so that a bad one is a 400, not
a device that fails every request later.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

from vaultd.audit.entry import FormatOptions


class OptionError(ValueError):
    """A device option Vault would refuse; the message names it."""


class Device(ABC):
    """One enabled device in one process."""

    @abstractmethod
    def write(self, line: bytes) -> None:
        """Write one whole line or raise OSError; never half a line that
        stays half (see the file device)."""

    def reopen(self) -> None:  # noqa: B027 - most devices have nothing to reopen
        """Open the destination afresh (after log rotation)."""

    def close(self) -> None:  # noqa: B027
        """Let go of what the device holds."""


def parse_bool(options: Mapping[str, str], name: str, default: bool) -> bool:
    """Go's ``strconv.ParseBool``, which Vault uses for these options."""
    raw = options.get(name)
    if raw is None:
        return default
    value = str(raw)
    if value in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if value in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise OptionError(f'strconv.ParseBool: parsing "{value}": invalid syntax')


def format_options(options: Mapping[str, str]) -> FormatOptions:
    """``log_raw``, ``hmac_accessor``, ``prefix`` and ``format`` (json only,
    as in OpenBao, which removed jsonx)."""
    fmt = options.get("format", "json")
    if fmt == "jsonx":
        raise OptionError('jsonx formatting is not supported; set "format" to "json" or leave it out')
    if fmt != "json":
        raise OptionError(f'unknown format type "{fmt}"')
    return FormatOptions(
        log_raw=parse_bool(options, "log_raw", False),
        hmac_accessor=parse_bool(options, "hmac_accessor", True),
        prefix=str(options.get("prefix", "")),
    )


def make_device(type_: str, options: Mapping[str, str]) -> Device:
    """The device for an audit table entry; OptionError for an unknown type
    or a bad option."""
    if type_ == "file":
        from vaultd.audit.file import FileDevice

        return FileDevice(options)
    if type_ == "syslog":
        from vaultd.audit.syslog import SyslogDevice

        return SyslogDevice(options)
    raise OptionError(f'unknown backend type: "{type_}"')
