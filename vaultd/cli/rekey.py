"""``operator rekey``: the Vault CLI's flow for replacing the unseal keys
(``-target=barrier``, the default) or the recovery keys
(``-target=recovery``) from a quorum of the current ones.

``-init`` starts an attempt with the new ``-key-shares``/``-key-threshold``
(and ``-verify`` to require the new keys back before they take effect);
each current key holder then runs the command with ``-nonce`` and their
share (prompted without echo when not given, ``-`` reads stdin); the last
one gets the new shares.  With verification, holders of the new shares run
it again with ``-verify`` and the verification nonce.  Output follows
Vault's ``operator rekey``.
"""

from __future__ import annotations

import getpass
import sys

from vaultd.cli.base import Command, Context, Failure
from vaultd.cli.flags import EXIT_USAGE, Flag, expect_args
from vaultd.cli.output import err, out, print_json, table, wrap_at_length

_PREFIX = {"barrier": "sys/rekey", "recovery": "sys/rekey-recovery-key", "hsm": "sys/rekey-recovery-key"}
Status = dict[str, object]


def _target(ctx: Context) -> str:
    target = str(ctx.flag("target") or "barrier").strip().lower()
    if target not in _PREFIX:
        raise Failure(f"Unknown target: {ctx.flag('target')}", EXIT_USAGE)
    return target


def _path(ctx: Context, name: str) -> str:
    return f"{_PREFIX[_target(ctx)]}/{name}"


def _verify_mode(ctx: Context) -> bool:
    return bool(ctx.flag("verify"))


def _print_status(ctx: Context, status: Status, *, verification: bool) -> int:
    if ctx.json:
        print_json(status)
        return 0
    rows: list[tuple[object, ...]]
    if verification:
        rows = [
            ("Started", status.get("started", False)),
            ("New Shares", status.get("n", 0)),
            ("New Threshold", status.get("t", 0)),
            ("Verification Nonce", status.get("nonce", "")),
            ("Verification Progress", f"{status.get('progress', 0)}/{status.get('t', 0)}"),
        ]
    else:
        rows = [("Nonce", status.get("nonce", "")), ("Started", status.get("started", False))]
        if status.get("started"):
            progress, required = status.get("progress", 0), status.get("required", 0)
            suffix = " (verification in progress)" if progress == required else ""
            rows.append(("Progress", f"{progress}/{required}{suffix}"))
            if status.get("n"):
                rows.append(("New Shares", status["n"]))
            if status.get("t"):
                rows.append(("New Threshold", status["t"]))
            rows.append(("Verification Required", status.get("verification_required", False)))
            if status.get("verification_nonce"):
                rows.append(("Verification Nonce", status["verification_nonce"]))
    out(table(rows))
    return 0


def _status(ctx: Context, *, verification: bool, action: str = "reading rekey status") -> Status:
    path = _path(ctx, "verify" if verification else "init")
    return ctx.call(action, "GET", path).body or {}


def run_rekey(ctx: Context) -> int:
    expect_args(ctx.args, 0, 1, "0-1")
    _target(ctx)
    if ctx.flag("pgp-keys") or ctx.flag("backup"):
        raise Failure("Error initializing rekey: -pgp-keys and -backup are not supported by vaultd", EXIT_USAGE)
    if ctx.flag("cancel"):
        return _cancel(ctx)
    if ctx.flag("init"):
        return _init(ctx)
    if ctx.flag("status"):
        verification = _verify_mode(ctx)
        return _print_status(ctx, _status(ctx, verification=verification), verification=verification)
    return _provide(ctx)


def _init(ctx: Context) -> int:
    body = {
        "secret_shares": ctx.flag("key-shares"),
        "secret_threshold": ctx.flag("key-threshold"),
        "require_verification": _verify_mode(ctx),
    }
    status = ctx.call("initializing rekey", "PUT", _path(ctx, "init"), body).body or {}
    if not ctx.json:
        if not status.get("t") and not status.get("n"):
            out()
            out("Rotating barrier root key using recovery shares.")
            out()
        else:
            kind = "unseal" if _target(ctx) == "barrier" else "recovery"
            err(wrap_at_length(
                f"WARNING! If you lose the keys after they are returned, there is no recovery: vaultd shows the "
                f"new {kind} keys once, to whoever gives the last current key, and keeps no copy of them."
            ) + "\n")
    return _print_status(ctx, status, verification=False)


def _cancel(ctx: Context) -> int:
    path = _path(ctx, "verify" if _verify_mode(ctx) else "init")
    ctx.call("canceling rekey", "DELETE", path)
    out("Success! Canceled rekeying (if it was started)")
    return 0


def _read_key(ctx: Context, nonce: str) -> tuple[str, str]:
    """The key (argument, ``-`` for stdin, or a prompt) and the nonce to use."""
    given = str(ctx.flag("nonce") or "")
    if ctx.args and ctx.args[0] != "-":
        return ctx.args[0], given
    if ctx.args:
        return sys.stdin.read(), given
    kind = "Unseal" if _target(ctx) == "barrier" else "Recovery"
    out(f"Rekey operation nonce: {nonce}")
    try:
        key = getpass.getpass(f"{kind} Key (will be hidden): ")
    except (EOFError, KeyboardInterrupt):
        raise Failure("user canceled", EXIT_USAGE) from None
    return key, nonce


def _provide(ctx: Context) -> int:
    verification = _verify_mode(ctx)
    status = _status(ctx, verification=verification, action="getting rekey status")
    if not status.get("started"):
        err(wrap_at_length('No rekey is in progress. Start a rekey process by running '
                           '"vaultctl operator rekey -init".'))
        return 1
    key, nonce = _read_key(ctx, str(status.get("nonce", "")))
    if not nonce:
        raise Failure("Missing nonce value: specify it via the -nonce flag", EXIT_USAGE)
    body = {"key": key.strip(), "nonce": nonce}
    result = ctx.call("posting unseal key", "PUT", _path(ctx, "verify" if verification else "update"), body).body
    result = result or {}
    if not result.get("complete"):
        return _print_status(ctx, _status(ctx, verification=verification), verification=verification)
    if verification:
        out(wrap_at_length("Rekey verification successful. The rekey operation is complete and the new keys are "
                           "now active."))
        return 0
    if ctx.json:
        print_json(result)
        return 0
    out()
    new_keys = result.get("keys_base64") or result.get("keys") or []
    for i, new_key in enumerate(new_keys if isinstance(new_keys, list) else []):
        out(f"Key {i + 1}: {new_key}")
    return _print_outcome(ctx, status, result)


def _print_outcome(ctx: Context, status: Status, result: Status) -> int:
    """After the new keys: what they are, and, with verification, what comes next."""
    if not result.get("keys"):
        out()
        out("Barrier root key rotated using recovery keys.")
        return 0
    if result.get("nonce"):
        out()
        out(f"Operation nonce: {result['nonce']}")
    barrier = _target(ctx) == "barrier"
    n, t = status.get("n", 0), status.get("t", 0)
    out()
    if status.get("verification_required"):
        if barrier:
            out(wrap_at_length(
                f"Vault has created a new unseal key, split into {n} key shares and a key threshold of {t}. These "
                "will not be active until after verification is complete. Please securely distribute the key "
                "shares printed above. When Vault is re-sealed, restarted, or stopped, you must supply at least "
                f"{t} of these keys to unseal it before it can start servicing requests."))
        else:
            out(wrap_at_length(
                f"Vault has created a new recovery key, split into {n} key shares and a key threshold of {t}. "
                "These will not be active until after verification is complete. Please securely distribute the "
                "key shares printed above."))
        out()
        err(wrap_at_length(
            "Again, these key shares are _not_ valid until verification is performed. Do not lose or discard "
            "your current key shares until after verification is complete or you will be unable to "
            f"{'unseal' if barrier else 'authenticate with'} Vault. If you cancel the rekey process or seal Vault "
            "before verification is complete the new shares will be discarded and the current shares will "
            "remain valid."))
        out()
        err(wrap_at_length("The current verification status, including initial nonce, is shown below."))
        out()
        return _print_status(ctx, _status(ctx, verification=True), verification=True)
    if barrier:
        out(wrap_at_length(
            f"Vault unseal keys rekeyed to {n} key shares and a key threshold of {t}. Please securely distribute "
            "the key shares printed above. When Vault is re-sealed, restarted, or stopped, you must supply at "
            f"least {t} of these keys to unseal it before it can start servicing requests."))
    else:
        out(wrap_at_length(
            f"Vault recovery keys rekeyed to {n} key shares and a key threshold of {t}. Please securely "
            "distribute the key shares printed above."))
    return 0


COMMANDS = [
    Command(
        ("operator", "rekey"),
        "Replace the unseal (or recovery) keys from a quorum of the current ones.",
        "[options] [KEY]",
        (
            Flag("init", bool, False, "Start a rekey; set the new shares with -key-shares and -key-threshold."),
            Flag("cancel", bool, False, "Cancel the rekey (with -verify: restart its verification)."),
            Flag("status", bool, False, "Print the status of the rekey (with -verify: of its verification)."),
            Flag("key-shares", int, 5, "Number of new key shares."),
            Flag("key-threshold", int, 3, "Number of new key shares needed to reconstruct the key."),
            Flag("nonce", str, None, "Nonce of the rekey (or, with -verify, of its verification), when KEY is given."),
            Flag("target", str, "barrier", "barrier (the unseal keys) or recovery (an auto seal's recovery keys)."),
            Flag("verify", bool, False, "With -init: require the new keys back before they take effect; "
                                        "otherwise act on that verification."),
            Flag("pgp-keys", str, None, "Not supported: the new keys are shown once, in clear."),
            Flag("backup", bool, False, "Not supported (it needs -pgp-keys)."),
        ),
        run_rekey,
    ),
]
