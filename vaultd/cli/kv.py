"""``kv put|get|delete|list`` and ``kv metadata get``, for KV v1 and v2.

The user writes ``secret/foo`` whichever version the mount is; like Vault's
CLI, each command first asks ``sys/internal/ui/mounts/<path>`` which mount
the path is in and its version, then uses ``<mount>/data/<rest>`` (v2) or the
plain path (v1).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from vaultd.cli.base import Command, Context, Failure
from vaultd.cli.client import ApiError, ClientError
from vaultd.cli.flags import EXIT_API, EXIT_USAGE, Flag, UsageError, expect_args
from vaultd.cli.output import heading, kv_table, out, print_json, table

MOUNT_FLAG = Flag("mount", str, None, "The KV mount, when PATH is the path inside it (secret + foo).")


@dataclass(frozen=True)
class KvPath:
    """A user path split into its mount and the rest, with the mount's KV
    version.  ``mount`` keeps its trailing slash; it is empty when the server
    predates the preflight endpoint (then the path is used as given, v1)."""

    mount: str
    rest: str
    version: int

    def api(self, segment: str) -> str:
        """The API path: ``secret/data/foo`` for v2, ``kv1/foo`` for v1."""
        if self.version == 2:
            return f"{self.mount}{segment}/{self.rest}"
        return f"{self.mount}{self.rest}"


def resolve(ctx: Context, path: str) -> KvPath:
    """Ask the server which KV version serves ``path``."""
    mount_flag = ctx.flag("mount")
    if mount_flag:
        mount_hint = str(mount_flag).strip("/") + "/"
        full = mount_hint + path.lstrip("/")
        probe = mount_hint
    else:
        full = path.lstrip("/")
        probe = full
    try:
        resp = ctx.client.request("GET", f"sys/internal/ui/mounts/{probe}")
    except ApiError as exc:
        if exc.status == 404:  # no preflight endpoint: an old server, KV v1
            return KvPath("", full, 1)
        raise Failure(str(exc), EXIT_API) from None
    except ClientError as exc:
        raise Failure(str(exc), EXIT_API) from None
    data = (resp.body or {}).get("data") or {}
    mount = data.get("path") or ""
    options = data.get("options") or {}
    version = 2 if isinstance(options, dict) and str(options.get("version") or "") == "2" else 1
    if mount and not mount.endswith("/"):
        mount += "/"
    if full.startswith(mount):
        rest = full[len(mount):]
    elif full + "/" == mount:
        rest = ""
    else:
        mount, rest = "", full
    return KvPath(mount, rest, version)


def _read(ctx: Context, api_path: str, params: dict[str, str] | None = None) -> dict[str, object] | None:
    """GET that answers None for "nothing there".  A KV v2 404 that still
    carries ``data`` (a deleted or destroyed version) is a result, as in
    Vault: its metadata says what happened."""
    resp = ctx.call(f"reading {api_path}", "GET", api_path, params=params, ok_statuses=(404,))
    body = resp.body
    if resp.status == 404 and not (body and body.get("data") is not None):
        return None
    return body


def _not_found(api_path: str) -> Failure:
    return Failure(f"No value found at {api_path}", EXIT_API)


# -- put ------------------------------------------------------------------


def parse_data(args: list[str]) -> dict[str, object]:
    """Vault's ``k=v`` arguments: ``k=@file`` is the file's contents,
    ``k=-`` is stdin, a lone ``-`` or ``@file.json`` is a JSON object.

    Messages never quote an argument: it may be a secret typed wrongly.
    """
    data: dict[str, object] = {}
    stdin_used = False

    def stdin() -> str:
        nonlocal stdin_used
        if stdin_used:
            raise UsageError("Failed to parse K=V data: stdin (-) can only be used once")
        stdin_used = True
        return sys.stdin.read()

    for number, arg in enumerate(args, 1):
        if arg == "-" or (arg.startswith("@") and "=" not in arg):
            text = stdin() if arg == "-" else _read_file(arg[1:])
            try:
                obj = json.loads(text)
            except ValueError:
                raise UsageError(f"Failed to parse K=V data: argument {number} is not a JSON object") from None
            if not isinstance(obj, dict):
                raise UsageError(f"Failed to parse K=V data: argument {number} is not a JSON object")
            data.update(obj)
            continue
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise UsageError(
                f"Failed to parse K=V data: invalid key/value pair (argument {number}): format must be key=value"
            )
        if value.startswith("@"):
            value = _read_file(value[1:])
        elif value == "-":
            value = stdin()
        data[key] = value
    return data


def _read_file(name: str) -> str:
    try:
        return Path(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"Error reading file {name}: {getattr(exc, 'strerror', None) or exc}") from None


def run_put(ctx: Context) -> int:
    expect_args(ctx.args, 1, None, ">1")
    if len(ctx.args) == 1:
        raise Failure("Must supply data", EXIT_USAGE)
    data = parse_data(ctx.args[1:])
    kv = resolve(ctx, ctx.args[0])
    cas = ctx.flag("cas")
    if kv.version == 2:
        api_path = kv.api("data")
        body: dict[str, object] = {"data": data}
        if isinstance(cas, int) and cas >= 0:
            body["options"] = {"cas": cas}
    else:
        api_path, body = kv.api(""), data
    resp = ctx.call(f"writing data to {api_path}", "PUT", api_path, body)
    if resp.body is None:
        if not ctx.json:
            out(f"Success! Data written to: {api_path}")
        return 0
    if ctx.json:
        print_json(resp.body)
        return 0
    out(heading("Secret Path"))
    out(api_path)
    out()
    out(heading("Metadata"))
    out(kv_table(resp.body.get("data") or {}))
    return 0


# -- get ------------------------------------------------------------------


def run_get(ctx: Context) -> int:
    expect_args(ctx.args, 1, 1)
    kv = resolve(ctx, ctx.args[0])
    version = ctx.flag("version")
    params = None
    if kv.version == 2 and isinstance(version, int) and version > 0:
        params = {"version": str(version)}
    api_path = kv.api("data")
    body = _read(ctx, api_path, params)
    if body is None:
        raise _not_found(api_path)
    outer = body.get("data") or {}
    if kv.version == 2:
        secret = outer.get("data") if isinstance(outer, dict) else None
        metadata = outer.get("metadata") if isinstance(outer, dict) else None
    else:
        secret, metadata = outer, None
    field = ctx.flag("field")
    if field:
        return _print_field(ctx, secret or {}, str(field))
    if ctx.json:
        print_json(body)
        return 0
    if kv.version == 2:
        out(heading("Secret Path"))
        out(api_path)
        out()
        out(heading("Metadata"))
        out(kv_table(metadata or {}))
    if secret:
        if kv.version == 2:
            out()
        out(heading("Data"))
        out(kv_table(secret))
    return 0


def _print_field(ctx: Context, secret: dict[str, object], field: str) -> int:
    """One value, raw, for scripts; no newline when piped, as Vault does."""
    if field not in secret:
        raise Failure(f'Field "{field}" not present in secret', EXIT_USAGE)
    value = secret[field]
    text = value if isinstance(value, str) and not ctx.json else json.dumps(value)
    out(text, end="\n" if sys.stdout.isatty() else "")
    return 0


# -- delete, list, metadata ------------------------------------------------


def run_delete(ctx: Context) -> int:
    expect_args(ctx.args, 1, 1)
    raw_versions = ctx.flag("versions")
    try:
        versions = [int(v) for v in raw_versions] if isinstance(raw_versions, list) else []
    except ValueError:
        raise UsageError("-versions must be a comma-separated list of version numbers") from None
    kv = resolve(ctx, ctx.args[0])
    if versions and kv.version != 2:
        raise UsageError("-versions is only supported on KV version 2 mounts")
    if versions:
        ctx.call(f"deleting {kv.api('data')}", "POST", kv.api("delete"), {"versions": versions})
    else:
        ctx.call(f"deleting {kv.api('data')}", "DELETE", kv.api("data"))
    out(f"Success! Data deleted (if it existed) at: {kv.api('data')}")
    return 0


def run_list(ctx: Context) -> int:
    expect_args(ctx.args, 1, 1)
    kv = resolve(ctx, ctx.args[0])
    api_path = kv.api("metadata")
    resp = ctx.call(f"listing {api_path}", "GET", api_path, params={"list": "true"}, ok_statuses=(404,))
    keys = ((resp.body or {}).get("data") or {}).get("keys") if resp.status != 404 else None
    if not isinstance(keys, list):
        raise _not_found(api_path)
    if ctx.json:
        print_json(keys)
    else:
        out(table([(k,) for k in keys], header=("Keys",)))
    return 0


def run_metadata_get(ctx: Context) -> int:
    expect_args(ctx.args, 1, 1)
    kv = resolve(ctx, ctx.args[0])
    if kv.version != 2:
        raise Failure("Metadata not supported on KV Version 1", EXIT_USAGE)
    api_path = kv.api("metadata")
    body = _read(ctx, api_path)
    if body is None:
        raise _not_found(api_path)
    if ctx.json:
        print_json(body)
        return 0
    data = dict(body.get("data") or {})
    versions = data.pop("versions", None) or {}
    out(heading("Metadata Path"))
    out(api_path)
    out()
    out(heading("Metadata"))
    out(kv_table(data))
    for number in sorted(versions, key=lambda v: int(v) if str(v).isdigit() else 0):
        out()
        out(heading(f"Version {number}"))
        out(kv_table(versions[number]))
    return 0


COMMANDS = [
    Command(
        ("kv", "put"),
        "Write a secret: KEY=VALUE, KEY=@file, KEY=- (stdin), or - (a JSON object on stdin).",
        "[options] PATH KEY=VALUE...",
        (
            Flag("cas", int, -1, "Check-and-set: write only if the current version is this (0: only if absent)."),
            MOUNT_FLAG,
        ),
        run_put,
    ),
    Command(
        ("kv", "get"),
        "Read a secret.",
        "[options] PATH",
        (
            Flag("version", int, 0, "Version to read (KV v2); default the latest."),
            Flag("field", str, None, "Print only this field's value."),
            MOUNT_FLAG,
        ),
        run_get,
    ),
    Command(
        ("kv", "delete"),
        "Delete the latest version of a secret, or the given versions (KV v2, undeletable).",
        "[options] PATH",
        (Flag("versions", list, [], "Comma-separated versions to delete (KV v2)."), MOUNT_FLAG),
        run_delete,
    ),
    Command(("kv", "list"), "List the keys under a path.", "[options] PATH", (MOUNT_FLAG,), run_list),
    Command(
        ("kv", "metadata", "get"),
        "Show a secret's metadata and versions (KV v2).",
        "[options] PATH",
        (MOUNT_FLAG,),
        run_metadata_get,
    ),
]
