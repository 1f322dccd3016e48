"""Go-style flags, as the Vault CLI parses them.

Operators' scripts and muscle memory use Vault's spelling: one dash for long
flags (``-key-shares=5``), ``-flag value`` for non-booleans, flags before the
positional arguments (a ``-x`` after the first argument is an argument, with
a warning, exactly as Vault does).  argparse cannot be bent into all of
that, so this small parser does it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Exit codes of the Vault CLI: local mistakes (flags, arguments) are 1,
# anything the server or the connection did is 2.
EXIT_USAGE = 1
EXIT_API = 2

_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


class UsageError(Exception):
    """The command line is wrong; nothing was sent to the server."""


@dataclass(frozen=True)
class Flag:
    """One flag.  ``kind`` is ``str``, ``int``, ``bool`` or ``list`` (a
    repeatable string flag whose values may also be comma-separated)."""

    name: str
    kind: type
    default: object = None
    help: str = ""


@dataclass
class Parsed:
    values: dict[str, object]
    args: list[str]
    warnings: list[str] = field(default_factory=list)

    def __getitem__(self, name: str) -> object:
        return self.values[name]


def parse(flags: list[Flag], argv: list[str]) -> Parsed:
    """Split ``argv`` into flag values and positional arguments."""
    by_name = {f.name: f for f in flags}
    values: dict[str, object] = {
        f.name: (list(f.default) if isinstance(f.default, list) else f.default) for f in flags
    }
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        name, has_value, value = arg.lstrip("-").partition("=")
        spec = by_name.get(name)
        if spec is None or arg.startswith("---") or not name:
            raise UsageError(f"flag provided but not defined: -{name}")
        if spec.kind is bool:
            values[name] = _boolean(name, value) if has_value else True
        else:
            if not has_value:
                i += 1
                if i >= len(argv):
                    raise UsageError(f"flag needs an argument: -{name}")
                value = argv[i]
            values[name] = _convert(spec, value, values[name])
        i += 1
    args = argv[i:]
    warnings = []
    stray = [a for a in args if a.startswith("-") and a.lstrip("-").partition("=")[0] in by_name]
    if stray:
        warnings.append(
            "Command flags must be provided before positional arguments. The following "
            f"arguments will not be parsed as flags: [{' '.join(stray)}]"
        )
    return Parsed(values, args, warnings)


def _boolean(name: str, value: str) -> bool:
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise UsageError(f'invalid boolean value "{value}" for flag -{name}')


def _convert(spec: Flag, value: str, current: object) -> object:
    if spec.kind is int:
        try:
            return int(value, 10)
        except ValueError:
            raise UsageError(f'invalid value "{value}" for flag -{spec.name}: not an integer') from None
    if spec.kind is list:
        items = list(current) if isinstance(current, list) else []
        items.extend(v.strip() for v in value.split(",") if v.strip())
        return items
    return value


def expect_args(args: list[str], minimum: int, maximum: int | None, what: str | None = None) -> None:
    """Vault's wording for a wrong number of positional arguments."""
    expected = what or (str(minimum) if maximum == minimum else f"at least {minimum}")
    if len(args) < minimum:
        raise UsageError(f"Not enough arguments (expected {expected}, got {len(args)})")
    if maximum is not None and len(args) > maximum:
        raise UsageError(f"Too many arguments (expected {what or maximum}, got {len(args)})")
