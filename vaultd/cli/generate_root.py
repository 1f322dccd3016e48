"""``operator generate-root``: the Vault CLI's flow for minting a root token
from a quorum of unseal (or recovery) key shares.

``-init`` starts an attempt (the server makes the OTP unless ``-otp`` is
given), each key holder runs the command with ``-nonce`` and their share
(prompted without echo when not given), and ``-decode`` with ``-otp`` turns
the encoded token of the last answer into the token, locally.
"""

from __future__ import annotations

import getpass

from vaultd.cli.base import Command, Context, Failure
from vaultd.cli.flags import EXIT_USAGE, Flag, expect_args
from vaultd.cli.output import err, out, print_json, table, wrap_at_length
from vaultd.crypto.roottoken import decode_token, random_otp

_ATTEMPT = "sys/generate-root/attempt"


def _print_status(ctx: Context, status: dict[str, object]) -> int:
    if ctx.json:
        print_json(status)
        return 0
    rows: list[tuple[object, ...]] = [
        ("Nonce", status.get("nonce", "")),
        ("Started", status.get("started", False)),
        ("Progress", f"{status.get('progress', 0)}/{status.get('required', 0)}"),
        ("Complete", status.get("complete", False)),
    ]
    if status.get("encoded_token"):
        rows.append(("Encoded Token", status["encoded_token"]))
    elif status.get("encoded_root_token"):
        rows.append(("Encoded Root Token", status["encoded_root_token"]))
    if status.get("otp"):
        err(wrap_at_length("A One-Time-Password has been generated for you and is shown in the OTP field. You "
                           "will need this value to decode the resulting root token, so keep it safe."))
        rows.append(("OTP", status["otp"]))
    if status.get("otp_length"):
        rows.append(("OTP Length", status["otp_length"]))
    out(table(rows, header=None))
    return 0


def _status(ctx: Context) -> dict[str, object]:
    return ctx.call("getting root generation status", "GET", _ATTEMPT).body or {}


def run_generate_root(ctx: Context) -> int:
    expect_args(ctx.args, 0, 1)
    if ctx.flag("generate-otp"):
        otp = random_otp(int(_status(ctx).get("otp_length") or 26))
        if ctx.json:
            print_json({"otp": otp, "otp_length": len(otp)})
        else:
            out(otp)
        return 0
    if ctx.flag("decode"):
        otp = str(ctx.flag("otp") or "")
        if not otp:
            raise Failure("Missing otp: use -otp to supply it", EXIT_USAGE)
        try:
            token = decode_token(str(ctx.flag("decode")), otp)
        except ValueError as exc:
            raise Failure(f"Error decoding root token: {exc}", EXIT_USAGE) from None
        if ctx.json:
            print_json({"token": token})
        else:
            out(token)
        return 0
    if ctx.flag("cancel"):
        ctx.call("canceling root token generation", "DELETE", _ATTEMPT)
        out("Success! Root token generation canceled (if it was started)")
        return 0
    if ctx.flag("init"):
        if ctx.flag("pgp-key"):
            raise Failure("Error initializing: -pgp-key is not supported by vaultd; use -otp or neither",
                          EXIT_USAGE)
        body = {"otp": str(ctx.flag("otp") or "")}
        status = ctx.call("initializing root token generation", "PUT", _ATTEMPT, body).body or {}
        return _print_status(ctx, status)
    if ctx.flag("status"):
        return _print_status(ctx, _status(ctx))
    return _provide(ctx)


def _provide(ctx: Context) -> int:
    status = _status(ctx)
    if not status.get("started"):
        err(wrap_at_length('No root generation is in progress. Start a root generation by running '
                           '"vaultctl operator generate-root -init".'))
        return 1
    nonce = str(ctx.flag("nonce") or "")
    if ctx.args:
        key = ctx.args[0]
    else:
        nonce = nonce or str(status.get("nonce", ""))
        out(f"Operation nonce: {nonce}")
        try:
            key = getpass.getpass("Unseal Key (will be hidden): ")
        except (EOFError, KeyboardInterrupt):
            raise Failure("No unseal key given", EXIT_USAGE) from None
    if not nonce:
        raise Failure("Missing nonce value: specify it via the -nonce flag", EXIT_USAGE)
    body = {"key": key.strip(), "nonce": nonce}
    result = ctx.call("posting unseal key", "PUT", "sys/generate-root/update", body).body or {}
    return _print_status(ctx, result)


COMMANDS = [
    Command(
        ("operator", "generate-root"),
        "Generate a new root token from a quorum of unseal (or recovery) key shares.",
        "[options] [KEY]",
        (
            Flag("init", bool, False, "Start a root token generation attempt."),
            Flag("otp", str, None, "OTP to encode the token with (-init), or to decode it (-decode)."),
            Flag("generate-otp", bool, False, "Print a fresh OTP of the right length, locally."),
            Flag("decode", str, None, "Decode this encoded token with -otp, locally."),
            Flag("nonce", str, None, "Nonce of the attempt, when KEY is given."),
            Flag("status", bool, False, "Print the status of the attempt."),
            Flag("cancel", bool, False, "Cancel the attempt, discarding the shares given."),
            Flag("pgp-key", str, None, "Not supported: use an OTP."),
        ),
        run_generate_root,
    ),
]
