"""The configuration banner the master prints at start, as Vault does.

Operators following Vault's guides check the start against this block
(``Seal Type: awskms``, the KMS key and region, storage, listener, version,
mlock) before they look anywhere else, and it is the first thing in the
journal of every start.  It is built from a fixed list of fields, never by
walking the config: the seal stanza holds credentials (``access_key``,
``secret_key``, ``session_token``) that must not reach stdout or the journal.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

from vaultd import __version__
from vaultd.config import Config, ListenerConfig
from vaultd.seal.base import AutoSeal

PADDING = 24
"""Width the keys are right-aligned to (Vault's ``%24s``)."""

DEFAULT_AWS_REGION = "us-east-1"


def banner_info(
    config: Config, seal: AutoSeal | None, workers: int, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Key → value of every line.  ``seal`` is the seal the server built
    (its key id and endpoint already filled in from the environment)."""
    env = os.environ if environ is None else environ
    info: dict[str, str] = {}
    if seal is None:
        info["Seal Type"] = "shamir"
    else:
        info["Seal Type"] = seal.type
        info.update(_awskms_info(config, seal, env) if seal.type == "awskms" else {})
    if config.api_addr:
        info["api address"] = config.api_addr
    if config.cluster_name:
        info["cluster name"] = config.cluster_name
    for number, listener in enumerate(config.listeners, 1):
        info[f"listener {number}"] = _listener(listener)
    info["log level"] = config.log_level
    info["mlock"] = f"supported: {str(sys.platform.startswith('linux')).lower()}, enabled: " + (
        "false" if config.disable_mlock else "true"
    )
    info["python version"] = platform.python_version()
    info["storage"] = config.storage.type
    info["version"] = f"vaultd v{__version__}"
    info["workers"] = f"{workers} ({config.threads} threads each)"
    return info


def _awskms_info(config: Config, seal: AutoSeal, env: Mapping[str, str]) -> dict[str, str]:
    """The lines Vault's awskms seal adds.  The region is worked out here as
    the seal does (stanza, then AWS_REGION, then AWS_DEFAULT_REGION) rather
    than asked of the seal: asking may import boto3 to read a profile, which
    the master must not do (every worker would inherit it)."""
    options = config.seal.options if config.seal else {}
    region = next(
        (v.strip() for v in (options.get("region"), env.get("AWS_REGION"), env.get("AWS_DEFAULT_REGION"))
         if v and v.strip()),
        "",
    )
    info = {
        "AWS KMS KeyID": str(getattr(seal, "kms_key_id", "") or ""),
        "AWS KMS Region": region or f"{DEFAULT_AWS_REGION} (unless the AWS profile names one)",
    }
    endpoint = str(getattr(seal, "endpoint", "") or "")
    if endpoint:
        info["AWS KMS Endpoint"] = _without_userinfo(endpoint)
    return info


def _without_userinfo(url: str) -> str:
    """An endpoint URL could carry ``user:password@``; the banner shows the
    host only."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def _listener(listener: ListenerConfig) -> str:
    size = "unlimited" if listener.max_request_size is None else str(listener.max_request_size)
    tls = "disabled" if listener.tls_disable else "enabled"
    return f'tcp (addr: "{listener.address}", max_request_size: "{size}", tls: "{tls}")'


def _title(key: str) -> str:
    return " ".join(word[:1].upper() + word[1:] for word in key.split(" "))


def render(info: Mapping[str, str]) -> str:
    """Vault's layout: keys sorted as Go sorts strings (capitalised seal
    keys first), title-cased, right-aligned."""
    lines = ["==> vaultd server configuration:", ""]
    for key in sorted(info):
        lines.append(f"{_title(key):>{PADDING}}: {info[key]}")
    lines += ["", "==> vaultd server started! Log data will stream in below:", ""]
    return "\n".join(lines)


def show(config: Config, seal: AutoSeal | None, workers: int) -> None:
    """Print the banner on stdout (the journal under systemd)."""
    sys.stdout.write(render(banner_info(config, seal, workers)) + "\n")
    sys.stdout.flush()
