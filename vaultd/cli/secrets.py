"""``secrets enable`` and ``secrets list``: the mount table."""

from __future__ import annotations

from vaultd.cli.base import Command, Context
from vaultd.cli.flags import Flag, expect_args
from vaultd.cli.output import out, print_json, table


def run_enable(ctx: Context) -> int:
    expect_args(ctx.args, 1, 1)
    engine = ctx.args[0]
    options: dict[str, str] = {}
    version = ctx.flag("version")
    # ``kv-v2`` is Vault's shorthand; spelt out here so the server only ever
    # sees type "kv" with a version option.
    if engine == "kv-v2":
        engine, options["version"] = "kv", "2"
    if isinstance(version, int) and version > 0:
        options["version"] = str(version)
    path = str(ctx.flag("path") or ctx.args[0]).strip("/")
    body: dict[str, object] = {"type": engine}
    if ctx.flag("description"):
        body["description"] = ctx.flag("description")
    if options:
        body["options"] = options
    ctx.call("enabling", "POST", f"sys/mounts/{path}", body)
    out(f"Success! Enabled the {engine} secrets engine at: {path}/")
    return 0


def run_list(ctx: Context) -> int:
    expect_args(ctx.args, 0, 0)
    body = ctx.call("listing secrets engines", "GET", "sys/mounts").body or {}
    # Vault answers with the mounts both at the top level and under "data".
    mounts = body.get("data") if isinstance(body.get("data"), dict) else body
    mounts = {k: v for k, v in mounts.items() if isinstance(v, dict) and "type" in v}
    if ctx.json:
        print_json(mounts)
        return 0
    rows = [
        (path, m.get("type", ""), m.get("accessor", ""), m.get("description") or "n/a")
        for path, m in sorted(mounts.items())
    ]
    out(table(rows, header=("Path", "Type", "Accessor", "Description")))
    return 0


COMMANDS = [
    Command(
        ("secrets", "enable"),
        "Mount a secrets engine (kv, or kv-v2 for a versioned KV).",
        "[options] TYPE",
        (
            Flag("path", str, None, "Where to mount it; default the engine type."),
            Flag("version", int, 0, "KV version (1 or 2)."),
            Flag("description", str, None, "Free text shown by secrets list."),
        ),
        run_enable,
    ),
    Command(("secrets", "list"), "List mounted secrets engines.", "[options]", (), run_list),
]
