"""vaultd.banner: Vault's configuration block at start, and no credential in it."""

from __future__ import annotations

import re

from vaultd.banner import banner_info, render
from vaultd.config import parse_config
from vaultd.seal.awskms import AwsKmsSeal

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
SESSION = "FwoGZXIvYXdzEXAMPLESESSIONTOKEN"

# The walkthrough's stanza, plus a session token and an endpoint left empty.
CONFIG = f"""\
storage "file" {{
  path = "/opt/vault/data"
}}
listener "tcp" {{
  address     = "0.0.0.0:8200"
  tls_disable = 1
}}
seal "awskms" {{
  region        = "us-east-1"
  access_key    = "AKIAIOSFODNN7EXAMPLE"
  secret_key    = "{SECRET}"
  session_token = "{SESSION}"
  kms_key_id    = "19ec80b0-dfdd-4d97-8164-c6examplekey"
  endpoint      = ""
}}
cluster_name = "prod"
ui = true
"""


def test_walkthrough_banner_names_the_seal_and_no_credential() -> None:
    config = parse_config(CONFIG, "vaultd.hcl")
    assert config.seal is not None
    env = {"AWS_KMS_ENDPOINT": "https://user:pw@kms.example:4443"}
    seal = AwsKmsSeal(config.seal.options, environ=env)
    text = render(banner_info(config, seal, 4, environ=env))
    lines = text.splitlines()
    assert lines[0] == "==> vaultd server configuration:"
    assert lines[-2:] == ["", "==> vaultd server started! Log data will stream in below:"]
    body = lines[2:-2]
    # Right-aligned at 24 columns, sorted as Go sorts (capitals first).
    assert all(re.fullmatch(r" *[A-Z][^:]*: .+", line) and line.index(":") == 24 for line in body), body
    keys = [line.split(":")[0].strip() for line in body]
    assert keys[:4] == ["AWS KMS Endpoint", "AWS KMS KeyID", "AWS KMS Region", "Seal Type"]
    assert keys[4:] == sorted(keys[4:]) and "Listener 1" in keys and "Python Version" in keys
    info = dict(line.strip().split(": ", 1) for line in body)
    assert info["Seal Type"] == "awskms"
    assert info["AWS KMS KeyID"] == "19ec80b0-dfdd-4d97-8164-c6examplekey"
    assert info["AWS KMS Region"] == "us-east-1"
    assert info["AWS KMS Endpoint"] == "https://kms.example:4443"  # the env's, without its userinfo
    assert info["Storage"] == "file" and info["Cluster Name"] == "prod"
    assert info["Listener 1"] == 'tcp (addr: "0.0.0.0:8200", max_request_size: "33554432", tls: "disabled")'
    assert info["Mlock"] == "supported: true, enabled: true"
    assert info["Workers"] == "4 (8 threads each)" and info["Version"].startswith("vaultd v")
    for secret in (SECRET, SESSION, "AKIAIOSFODNN7EXAMPLE", "pw@"):
        assert secret not in text


def test_shamir_banner_and_region_fallbacks() -> None:
    config = parse_config('storage "inmem" {}\nlistener "tcp" {\n  tls_disable = true\n}\ndisable_mlock = true\n')
    info = banner_info(config, None, 1, environ={})
    assert info["Seal Type"] == "shamir" and "AWS KMS KeyID" not in info
    assert info["mlock"] == "supported: true, enabled: false"
    kms = parse_config('storage "inmem" {}\nlistener "tcp" {\n  tls_disable = true\n}\n'
                       'seal "awskms" {\n  kms_key_id = "alias/vaultd"\n}\n')
    assert kms.seal is not None
    env = {"AWS_DEFAULT_REGION": "eu-west-1"}
    info = banner_info(kms, AwsKmsSeal(kms.seal.options, environ=env), 1, environ=env)
    assert info["AWS KMS Region"] == "eu-west-1" and "AWS KMS Endpoint" not in info
    info = banner_info(kms, AwsKmsSeal(kms.seal.options, environ={}), 1, environ={})
    assert info["AWS KMS Region"].startswith("us-east-1 ")
