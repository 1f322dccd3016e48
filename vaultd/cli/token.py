"""``login`` and ``token create|lookup|revoke``.

``token create`` and ``login`` print the token in the ``token`` row, as
Vault's CLI does (runbooks and the auto-unseal walkthrough read it there;
whoever runs ``login`` just typed it).  ``token lookup`` shows everything
else about a token but drops its ``id``: a lookup of someone else's token
by accessor must not hand the token out.
"""

from __future__ import annotations

import getpass
import os
import sys

from vaultd.cli import tokenfile
from vaultd.cli.base import Command, Context, Failure
from vaultd.cli.flags import EXIT_USAGE, Flag, UsageError, expect_args
from vaultd.cli.output import err, human_duration, json_list, kv_table, out, print_json, table, wrap_at_length

_DURATION_FIELDS = ("creation_ttl", "explicit_max_ttl", "ttl", "period")


def _without_id(data: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in data.items() if k != "id"}


def _token_rows(auth: dict[str, object], *, show_token: bool) -> list[tuple[str, object]]:
    """The rows Vault prints for a fresh token."""
    duration = auth.get("lease_duration", auth.get("ttl", 0))
    duration = duration if isinstance(duration, int) else 0
    rows: list[tuple[str, object]] = []
    if show_token:
        rows.append(("token", auth.get("client_token", "")))
    rows += [
        ("token_accessor", auth.get("accessor", "")),
        ("token_duration", "∞" if not duration else human_duration(duration)),
        ("token_renewable", auth.get("renewable", False)),
        ("token_policies", json_list(auth.get("token_policies", auth.get("policies")))),
        ("identity_policies", json_list(auth.get("identity_policies"))),
        ("policies", json_list(auth.get("policies"))),
    ]
    return rows


# -- login ----------------------------------------------------------------


def run_login(ctx: Context) -> int:
    expect_args(ctx.args, 0, 1)
    if not ctx.args:
        token = _prompt_token()
    elif ctx.args[0] == "-":
        token = sys.stdin.read().strip()
    else:
        token = ctx.args[0].strip()
    if not token:
        raise Failure("No token given", EXIT_USAGE)
    body = ctx.call(
        "authenticating: error looking up token", "GET", "auth/token/lookup-self", token=token
    ).body or {}
    data = body.get("data") or {}
    if not ctx.flag("no-store"):
        try:
            tokenfile.store_token(token)
        except OSError as exc:
            raise Failure(f"Error storing token: {exc.strerror or exc}", EXIT_USAGE) from None
    if os.environ.get("VAULT_TOKEN") and not ctx.flag("no-store"):
        err(
            wrap_at_length(
                "WARNING! The VAULT_TOKEN environment variable is set! The value of this variable will "
                "take precedence; if this is unwanted please unset VAULT_TOKEN or update its value accordingly."
            )
            + "\n"
        )
    lookup = {
        "client_token": token,
        "accessor": data.get("accessor", ""),
        "lease_duration": data.get("ttl", 0),
        "renewable": data.get("renewable", False),
        "policies": data.get("policies") or [],
        "token_policies": data.get("policies") or [],
        "identity_policies": data.get("identity_policies") or [],
    }
    if ctx.json:
        print_json({"auth": lookup})
        return 0
    if ctx.flag("no-store"):
        err(
            wrap_at_length(
                "The token was not stored in token helper. Set the VAULT_TOKEN environment variable or "
                "pass the token below with each request to Vault."
            )
            + "\n"
        )
    else:
        out(
            wrap_at_length(
                "Success! You are now authenticated. The token information displayed below is already "
                'stored in the token helper. You do NOT need to run "vaultctl login" again. Future Vault '
                "requests will automatically use this token."
            )
            + "\n"
        )
    out(table(_token_rows(lookup, show_token=True)))
    return 0


def _prompt_token() -> str:
    try:
        return getpass.getpass("Token (will be hidden): ").strip()
    except (EOFError, KeyboardInterrupt):
        raise Failure("No token given", EXIT_USAGE) from None


# -- token create / lookup / revoke ----------------------------------------


def run_create(ctx: Context) -> int:
    expect_args(ctx.args, 0, 0)
    body: dict[str, object] = {}
    for flag, field in (("ttl", "ttl"), ("explicit-max-ttl", "explicit_max_ttl"), ("period", "period"),
                        ("display-name", "display_name")):
        if ctx.flag(flag):
            body[field] = ctx.flag(flag)
    if ctx.flag("policy"):
        body["policies"] = ctx.flag("policy")
    if ctx.flag("num-uses"):
        body["num_uses"] = ctx.flag("num-uses")
    if ctx.flag("renewable") is False:
        body["renewable"] = False
    path = "auth/token/create-orphan" if ctx.flag("orphan") else "auth/token/create"
    resp = ctx.call("creating token", "POST", path, body).body or {}
    auth = resp.get("auth") or {}
    field = ctx.flag("field")
    if field:
        rows = dict(_token_rows(auth, show_token=True))
        if field not in rows:
            raise Failure(f'Field "{field}" not present in secret', EXIT_USAGE)
        value = rows[field]
        out(value if isinstance(value, str) else str(value).lower(), end="\n" if sys.stdout.isatty() else "")
        return 0
    if ctx.json:
        print_json(resp)
    else:
        out(table(_token_rows(auth, show_token=True)))
    return 0


def run_lookup(ctx: Context) -> int:
    expect_args(ctx.args, 0, 1)
    if ctx.flag("accessor"):
        if not ctx.args:
            raise UsageError("Not enough arguments (expected 1 with -accessor, got 0)")
        resp = ctx.call("looking up token", "POST", "auth/token/lookup-accessor", {"accessor": ctx.args[0]})
    elif ctx.args:
        resp = ctx.call("looking up token", "POST", "auth/token/lookup", {"token": ctx.args[0]})
    else:
        resp = ctx.call("looking up token", "GET", "auth/token/lookup-self")
    body = resp.body or {}
    data = _without_id(body.get("data") or {})
    if ctx.json:
        print_json({**body, "data": data})
    else:
        out(kv_table(data, durations=_DURATION_FIELDS))
    return 0


def run_revoke(ctx: Context) -> int:
    if ctx.flag("self"):
        if ctx.args:
            raise UsageError(f"Too many arguments (expected 0 with -self, got {len(ctx.args)})")
        ctx.call("revoking token", "POST", "auth/token/revoke-self")
    else:
        expect_args(ctx.args, 1, 1, "1 or -self")
        if ctx.flag("accessor"):
            ctx.call("revoking token", "POST", "auth/token/revoke-accessor", {"accessor": ctx.args[0]})
        else:
            ctx.call("revoking token", "POST", "auth/token/revoke", {"token": ctx.args[0]})
    out("Success! Revoked token (if it existed)")
    return 0


COMMANDS = [
    Command(
        ("login",),
        "Check a token and store it in ~/.vault-token (0600); prompts when TOKEN is omitted, - reads stdin.",
        "[options] [TOKEN]",
        (Flag("no-store", bool, False, "Check the token but do not store it."),),
        run_login,
    ),
    Command(
        ("token", "create"),
        "Create a child token (printed once).",
        "[options]",
        (
            Flag("ttl", str, None, "Initial TTL, e.g. 1h."),
            Flag("explicit-max-ttl", str, None, "Hard limit the token can never be renewed past."),
            Flag("period", str, None, "Make a periodic token renewable by this period."),
            Flag("policy", list, [], "Policy to attach; repeat or comma-separate for several."),
            Flag("display-name", str, None, "Name shown in lookups and audit logs."),
            Flag("num-uses", int, 0, "Number of uses before the token is revoked (0: unlimited)."),
            Flag("renewable", bool, True, "Whether the token can be renewed."),
            Flag("orphan", bool, False, "Create the token without a parent."),
            Flag("field", str, None, "Print only this field (e.g. token)."),
        ),
        run_create,
    ),
    Command(
        ("token", "lookup"),
        "Show a token's properties (default: the token in use), without the token itself.",
        "[options] [TOKEN]",
        (Flag("accessor", bool, False, "TOKEN is an accessor."),),
        run_lookup,
    ),
    Command(
        ("token", "revoke"),
        "Revoke a token and its children.",
        "[options] [TOKEN | -self]",
        (
            Flag("self", bool, False, "Revoke the token in use."),
            Flag("accessor", bool, False, "TOKEN is an accessor."),
        ),
        run_revoke,
    ),
]
