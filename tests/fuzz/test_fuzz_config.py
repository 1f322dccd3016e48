"""Property-based tests of the config parser (issue 9, item 10): any text,
HCL or JSON, gives a Config or a ConfigError naming the problem, never
another exception (a traceback at start instead of a message)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from tests.fuzz.fuzz_support import any_ints, any_text, durations, json_values
from vaultd.config import Config, ConfigError, load_config, parse_config

TOP_KEYS = ["storage", "backend", "listener", "seal", "unsealer", "api_addr", "cluster_name", "default_lease_ttl",
            "max_lease_ttl", "log_level", "disable_mlock", "ui", "workers", "threads", "junk"]
BLOCK_KEYS = ["path", "address", "tls_disable", "tls_cert_file", "tls_key_file", "max_request_size", "region",
              "kms_key_id", "endpoint", "access_key", "secret_key", "disabled", "junk"]


def _parses(text: str, source: str = "<fuzz>") -> None:
    try:
        config = parse_config(text, source, dev=True)
    except ConfigError as exc:
        assert str(exc)  # a message an operator can act on
    else:
        assert isinstance(config, Config)


def _hcl_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))


hcl_values = st.one_of(durations, any_ints, st.booleans(), any_text).map(_hcl_scalar)
hcl_blocks = st.builds(
    lambda key, label, body: f'{key} "{label}" {{\n' + "".join(f"  {k} = {v}\n" for k, v in body) + "}\n",
    st.sampled_from(["storage", "listener", "seal", "unsealer", "backend"]),
    st.sampled_from(["file", "inmem", "tcp", "awskms", "shamir", "raft", ""]),
    st.lists(st.tuples(st.sampled_from(BLOCK_KEYS), hcl_values), max_size=4),
)
hcl_lines = st.builds(lambda key, value: f"{key} = {value}\n", st.sampled_from(TOP_KEYS), hcl_values)
hcl_files = st.lists(st.one_of(hcl_blocks, hcl_lines), max_size=6).map("".join)


@given(text=hcl_files)
@example(text='default_lease_ttl = "99999999999999d"\n')
@example(text="max_lease_ttl = 9223372037\n")
@example(text="default_lease_ttl = 1e400\n")
@example(text='workers = "' + "9" * 5000 + '"\n')
@example(text="threads = 99999999999999999999\n")
@example(text='listener "tcp" {\n  max_request_size = 1e30\n}\n')
def test_hcl_configs(text: str) -> None:
    _parses(text)


json_configs = st.dictionaries(
    st.sampled_from(TOP_KEYS),
    st.one_of(durations, json_values, st.dictionaries(st.sampled_from(["file", "tcp", "awskms", "inmem"]),
                                                      st.dictionaries(st.sampled_from(BLOCK_KEYS), json_values))),
    max_size=5,
)


@given(config=json_configs)
@example(config={"default_lease_ttl": "106752d"})
@example(config={"storage": {"file": {"path": "\ud800"}}})
@example(config={"max_lease_ttl": float("nan")})
@example(config={"workers": 10**30})
def test_json_configs(config: dict[str, Any]) -> None:
    try:
        text = json.dumps(config)
    except ValueError:
        return
    _parses(text, "fuzz.json")


@given(text=st.one_of(st.text(max_size=200), any_text))
@example(text='{"a": ' + "[" * 5000 + "]" * 5000 + "}")
@example(text='{"a": NaN}')
@example(text='{"a": 1e400}')
@example(text='{"workers": ' + "9" * 5000 + "}")
@example(text="a = " + "[1," * 200 + "]" * 200)
@example(text="a " + "{ b " * 3000 + "}" * 3000)
def test_any_text(text: str) -> None:
    _parses(text)
    _parses(text, "fuzz.json")


@given(raw=st.binary(max_size=200))
@example(raw=b"\xff\xfe")
def test_any_file(tmp_path_factory: Any, raw: bytes) -> None:
    path = Path(tmp_path_factory.mktemp("cfg")) / "vaultd.hcl"
    path.write_bytes(raw)
    try:
        load_config(str(path), dev=True)
    except ConfigError:
        pass
