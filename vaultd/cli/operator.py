"""``operator init|unseal|seal`` and ``status``: the seal lifecycle.

Unseal keys are secrets: when not given as an argument (where they would
land in shell history) they are read with ``getpass`` so they are not
echoed.  ``init`` is the one place key shares and the root token are
printed, because showing them once is its purpose.
"""

from __future__ import annotations

import getpass

from vaultd.cli.base import Command, Context, Failure
from vaultd.cli.client import ClientError
from vaultd.cli.flags import EXIT_USAGE, Flag, expect_args
from vaultd.cli.output import err, out, print_json, table, wrap_at_length

EXIT_SEALED = 2
EXIT_ERROR = 1


def seal_status_rows(status: dict[str, object], ha_enabled: bool | None,
                     leader: dict[str, object] | None = None) -> list[tuple[str, object]]:
    """Vault's ``status`` rows; progress only while sealed, as Vault does;
    with HA, the node's mode and the active node (``leader``: sys/leader)."""
    recovery = bool(status.get("recovery_seal"))
    rows: list[tuple[str, object]] = [("Seal Type", status.get("type", ""))]
    if recovery:
        rows.append(("Recovery Seal Type", status.get("recovery_seal_type", "shamir")))
    rows += [
        ("Initialized", status.get("initialized")),
        ("Sealed", status.get("sealed")),
        ("Total Recovery Shares" if recovery else "Total Shares", status.get("n")),
        ("Threshold", status.get("t")),
    ]
    if status.get("sealed"):
        rows.append(("Unseal Progress", f"{status.get('progress', 0)}/{status.get('t', 0)}"))
        rows.append(("Unseal Nonce", status.get("nonce") or "n/a"))
    if status.get("migration"):
        rows.append(("Seal Migration in Progress", True))
    rows.append(("Version", status.get("version", "")))
    for key, label in (("build_date", "Build Date"), ("commit_date", "Commit Date")):
        if status.get(key):
            rows.append((label, status[key]))
    rows.append(("Storage Type", status.get("storage_type") or "n/a"))
    if status.get("cluster_name") and status.get("cluster_id"):
        rows.append(("Cluster Name", status["cluster_name"]))
        rows.append(("Cluster ID", status["cluster_id"]))
    if ha_enabled is not None:
        rows.append(("HA Enabled", ha_enabled))
    if ha_enabled and leader and not status.get("sealed"):
        if leader.get("leader_cluster_address"):
            rows.append(("HA Cluster", leader["leader_cluster_address"]))
        if leader.get("is_self"):
            rows += [("HA Mode", "active"), ("Active Since", leader.get("active_time", ""))]
        else:
            rows += [("HA Mode", "standby"), ("Active Node Address", leader.get("leader_address") or "<none>")]
    return rows


def _leader(ctx: Context) -> dict[str, object]:
    """``sys/leader``, or {} if it cannot be had (not worth failing a
    status check over)."""
    try:
        body = ctx.client.request("GET", "sys/leader").body or {}
    except ClientError:
        return {}
    return body if isinstance(body, dict) else {}


def _show_seal_status(ctx: Context, status: dict[str, object]) -> None:
    leader = _leader(ctx)
    value = leader.get("ha_enabled")
    ha = value if isinstance(value, bool) else None
    if ctx.json:
        print_json({**status, **({"ha_enabled": ha} if ha is not None else {})})
    else:
        out(table(seal_status_rows(status, ha, leader)))


def run_status(ctx: Context) -> int:
    expect_args(ctx.args, 0, 0)
    try:
        status = ctx.client.request("GET", "sys/seal-status").body or {}
    except ClientError as exc:
        raise Failure(f"Error checking seal status: {exc}", EXIT_ERROR) from None
    _show_seal_status(ctx, status)
    return EXIT_SEALED if status.get("sealed") else 0


def run_init(ctx: Context) -> int:
    expect_args(ctx.args, 0, 0)
    if ctx.flag("status"):
        return _init_status(ctx)
    status = ctx.call("checking seal status", "GET", "sys/seal-status").body or {}
    auto = bool(status.get("recovery_seal"))
    body: dict[str, object] = {}
    pairs = (
        ("secret_shares", "key-shares", not auto),
        ("secret_threshold", "key-threshold", not auto),
        ("recovery_shares", "recovery-shares", auto),
        ("recovery_threshold", "recovery-threshold", auto),
    )
    for field, flag, applies in pairs:
        value = ctx.flag(flag)
        if value is None and applies:
            value = 5 if field.endswith("shares") else 3
        if value is not None:
            body[field] = value
    if ctx.flag("stored-shares") is not None:
        body["stored_shares"] = ctx.flag("stored-shares")
    result = ctx.call("initializing", "PUT", "sys/init", body).body or {}
    for warning in result.get("warnings") or []:
        err(wrap_at_length(f"WARNING! {warning}") + "\n")
    if ctx.json:
        print_json(_init_json(result, body))
    else:
        out(_init_text(result, body))
    return 0


def _init_status(ctx: Context) -> int:
    body = ctx.call("checking initialization status", "GET", "sys/init").body or {}
    if body.get("initialized"):
        out("Vault is initialized")
        return 0
    out("Vault is not initialized")
    return EXIT_SEALED


def _init_json(result: dict[str, object], sent: dict[str, object]) -> dict[str, object]:
    """The JSON shape of ``vault operator init -format=json``.  With no
    unseal keys back the seal stores the one key: 1 share, threshold 1."""
    keys_b64 = result.get("keys_base64") or []
    recovery_b64 = result.get("recovery_keys_base64") or []
    return {
        "unseal_keys_b64": keys_b64,
        "unseal_keys_hex": result.get("keys") or [],
        "unseal_shares": sent.get("secret_shares", 0) if keys_b64 else 1,
        "unseal_threshold": sent.get("secret_threshold", 0) if keys_b64 else 1,
        "recovery_keys_b64": recovery_b64,
        "recovery_keys_hex": result.get("recovery_keys") or [],
        "recovery_keys_shares": len(recovery_b64) if recovery_b64 else sent.get("recovery_shares", 0),
        "recovery_keys_threshold": sent.get("recovery_threshold", 0),
        "root_token": result.get("root_token", ""),
    }


def _init_text(result: dict[str, object], sent: dict[str, object]) -> str:
    """Vault's text, paragraph for paragraph and wrapped as Vault wraps it:
    scripts and runbooks written against Vault look for these lines."""
    keys = _strings(result.get("keys_base64"))
    recovery = _strings(result.get("recovery_keys_base64"))
    lines = [f"Unseal Key {i}: {key}" for i, key in enumerate(keys, 1)]
    lines += [f"Recovery Key {i}: {key}" for i, key in enumerate(recovery, 1)]
    lines += ["", f"Initial Root Token: {result.get('root_token', '')}", ""]
    if keys:
        threshold = sent.get("secret_threshold")
        lines += [
            wrap_at_length(
                f"Vault initialized with {len(keys)} key shares and a key threshold of {threshold}. Please "
                "securely distribute the key shares printed above. When the Vault is re-sealed, restarted, "
                f"or stopped, you must supply at least {threshold} of these keys to unseal it before it can "
                "start servicing requests."
            ),
            "",
            wrap_at_length(
                f"Vault does not store the generated root key. Without at least {threshold} keys to "
                "reconstruct the root key, Vault will remain permanently sealed!"
            ),
        ]
    else:
        lines.append("Success! Vault is initialized")
    if recovery:
        lines += [
            "",
            wrap_at_length(
                f"Recovery key initialized with {len(recovery)} key shares and a key threshold of "
                f"{sent.get('recovery_threshold')}. Please securely distribute the key shares printed above."
            ),
        ]
    return "\n".join(lines)


def _strings(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def run_unseal(ctx: Context) -> int:
    expect_args(ctx.args, 0, 1)
    body: dict[str, object]
    if ctx.flag("reset"):
        if ctx.args:
            raise Failure("Too many arguments (expected 0 with -reset, got 1)", EXIT_USAGE)
        body, action = {"reset": True}, "resetting unseal process"
    else:
        key = ctx.args[0] if ctx.args else _prompt_key()
        body, action = {"key": key.strip()}, "unsealing"
        if ctx.flag("migrate"):
            body["migrate"] = True
    status = ctx.call(action, "PUT", "sys/unseal", body).body or {}
    _show_seal_status(ctx, status)
    return 0


def _prompt_key() -> str:
    try:
        key = getpass.getpass("Unseal Key (will be hidden): ")
    except (EOFError, KeyboardInterrupt):
        raise Failure("No unseal key given", EXIT_USAGE) from None
    if not key.strip():
        raise Failure("No unseal key given", EXIT_USAGE)
    return key


def run_seal(ctx: Context) -> int:
    expect_args(ctx.args, 0, 0)
    ctx.call("sealing", "PUT", "sys/seal")
    out("Success! Vault is sealed.")
    return 0


COMMANDS = [
    Command(
        ("operator", "init"),
        "Initialize the server: create the root key and print the key shares and root token.",
        "[options]",
        (
            Flag("key-shares", int, None, "Number of unseal key shares (default 5)."),
            Flag("key-threshold", int, None, "Shares needed to unseal (default 3)."),
            Flag("recovery-shares", int, None, "Number of recovery key shares, auto-unseal only (default 5)."),
            Flag("recovery-threshold", int, None, "Recovery shares needed for quorum operations (default 3)."),
            Flag("stored-shares", int, None, "Shares the seal stores, auto-unseal only: 1 (Vault 1.0's flag)."),
            Flag("status", bool, False, "Only report whether the server is initialized (exit 0 yes, 2 no)."),
        ),
        run_init,
    ),
    Command(
        ("operator", "unseal"),
        "Provide one unseal key share; prompts for it without echo when KEY is omitted.",
        "[options] [KEY]",
        (
            Flag("reset", bool, False, "Discard the shares provided so far."),
            Flag("migrate", bool, False, "Use the share for a seal migration."),
        ),
        run_unseal,
    ),
    Command(
        ("operator", "seal"),
        "Seal the server: it forgets its root key until unsealed again.",
        "[options]",
        (),
        run_seal,
    ),
    Command(
        ("status",),
        "Print the seal status.  Exit 0 unsealed, 2 sealed, 1 on error.",
        "[options]",
        (),
        run_status,
    ),
]
