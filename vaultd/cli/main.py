"""``vaultctl``: find the command in argv, run it, turn failures into exits.

Exit codes are the Vault CLI's: 0 success, 1 a local mistake (flags,
arguments, files), 2 an error from the server or the connection, 127 an
unknown command; ``status`` uses 2 for "sealed" and 1 for errors.
"""

from __future__ import annotations

import sys

from vaultd.cli import generate_root, kv, operator, rekey, secrets, snapshot, token
from vaultd.cli.base import Command, Context, Failure
from vaultd.cli.flags import EXIT_USAGE, UsageError, parse
from vaultd.cli.output import err, out

EXIT_UNKNOWN = 127

COMMANDS: dict[tuple[str, ...], Command] = {
    c.path: c
    for c in (*operator.COMMANDS, *generate_root.COMMANDS, *rekey.COMMANDS, *snapshot.COMMANDS, *kv.COMMANDS,
              *secrets.COMMANDS, *token.COMMANDS)
}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    words = []
    for arg in args:
        if arg.startswith("-"):
            break
        words.append(arg)
    command = _longest_match(words)
    if command is None:
        return _no_command(words, args)
    rest = args[len(command.path):]
    try:
        parsed = parse(command.all_flags, rest)
        if parsed.values.get("help") or parsed.values.get("h"):
            out(command.help_text())
            return 0
        for warning in parsed.warnings:
            err(warning)
        ctx = Context(command, parsed)
        _ = ctx.format  # reject a bad -format before anything is sent
        return command.run(ctx)
    except UsageError as exc:
        err(str(exc))
        return EXIT_USAGE
    except Failure as exc:
        err(exc.message)
        return exc.code
    except KeyboardInterrupt:
        return 130


def _longest_match(words: list[str]) -> Command | None:
    for n in range(min(len(words), 3), 0, -1):
        command = COMMANDS.get(tuple(words[:n]))
        if command is not None:
            return command
    return None


def _no_command(words: list[str], args: list[str]) -> int:
    """Help for ``vaultctl``, ``vaultctl kv`` and ``-h``; 127 for a typo."""
    prefix = tuple(words)
    while prefix and not any(path[: len(prefix)] == prefix for path in COMMANDS):
        prefix = prefix[:-1]
    asked_help = any(a in ("-h", "-help", "--help") for a in args)
    if len(prefix) < len(words):
        err(f"Unknown command: vaultctl {' '.join(words)}\n")
        err(_overview(prefix))
        return EXIT_UNKNOWN
    text = _overview(prefix)
    if asked_help:
        out(text)
        return 0
    err(text)
    return EXIT_USAGE


def _overview(prefix: tuple[str, ...]) -> str:
    lines = [f"Usage: vaultctl {' '.join(prefix) + ' ' if prefix else ''}<command> [options] [args]", ""]
    for path, command in sorted(COMMANDS.items()):
        if path[: len(prefix)] == prefix:
            lines.append(f"    {' '.join(path):<22} {command.synopsis}")
    lines += ["", "Environment: VAULT_ADDR, VAULT_TOKEN, VAULT_CACERT, VAULT_SKIP_VERIFY, VAULT_FORMAT."]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
