"""Property-based tests of KV v2's settable fields (issue 9, item 10):
metadata, config, data writes and patches, version operations.  Any value
is a 4xx or a success; a refused one changes nothing; and whatever was
accepted, the key stays readable and writable afterwards (the old failure:
a huge ``delete_version_after`` was stored, and every later write and read
of the key answered 500)."""

from __future__ import annotations

import urllib.parse
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.fuzz.fuzz_support import (
    ErrorLog,
    Harness,
    any_ints,
    any_text,
    check,
    dumps,
    durations,
    json_values,
)


@pytest.fixture(scope="module")
def kv(tmp_path_factory: pytest.TempPathFactory) -> Harness:
    harness = Harness(tmp_path_factory.mktemp("kv"))
    for key in ("app", "other"):
        assert harness.send("POST", f"secret/data/{key}", body=b'{"data": {"a": 1}}',
                            token=harness.root).status_code == 200
    return harness


flags = st.one_of(st.booleans(), json_values)
METADATA_FIELDS: dict[str, Any] = {
    "max_versions": st.one_of(any_ints, json_values), "cas_required": flags,
    "delete_version_after": durations, "custom_metadata": json_values,
    "metadata_cas_required": flags, "metadata_cas": st.one_of(any_ints, json_values),
}
CONFIG_FIELDS: dict[str, Any] = {
    "max_versions": st.one_of(any_ints, json_values), "cas_required": flags,
    "metadata_cas_required": flags, "delete_version_after": durations,
}
extras = st.dictionaries(any_text, json_values, max_size=2)


def _usable(kv: Harness, errors: ErrorLog, key: str) -> None:
    """The key can still be written and read, and the mount's config read.

    A write may be refused for a reason the fuzzed settings give (cas
    required, max_versions...), but never with a 5xx; the read after it must
    be a 200 or a 404 (deleted by ``delete_version_after``)."""
    options = b'{"data": {"a": 2}, "options": {"cas": 0}}'
    meta = kv.send("GET", f"secret/metadata/{key}", token=kv.root)
    assert meta.status_code in (200, 404), meta.get_data(as_text=True)
    if meta.status_code == 200:
        current = meta.get_json()["data"]["current_version"]
        options = dumps({"data": {"a": 2}, "options": {"cas": current}})
    check(kv, errors, "POST", f"secret/data/{key}", body=options, token=kv.root)
    read = kv.send("GET", f"secret/data/{key}", token=kv.root)
    assert read.status_code in (200, 404), read.get_data(as_text=True)
    assert kv.send("GET", "secret/config", token=kv.root).status_code == 200


@given(body=st.fixed_dictionaries({}, optional=METADATA_FIELDS), extra=extras, patch=st.booleans())
@example(body={"delete_version_after": 100000000000000000}, extra={}, patch=False)
@example(body={"delete_version_after": "99999999999999d"}, extra={}, patch=True)
@example(body={"delete_version_after": 9223372036}, extra={}, patch=False)
@example(body={"max_versions": 2**64}, extra={}, patch=False)
@example(body={"max_versions": -1}, extra={}, patch=False)
@example(body={"metadata_cas": 10**30}, extra={}, patch=False)
@example(body={"custom_metadata": {"k": "\ud800"}}, extra={}, patch=False)
@example(body={"custom_metadata": {"k": float("nan")}}, extra={}, patch=False)
@example(body={"max_versions": 3}, extra={"mount_point": "secret"}, patch=False)
def test_metadata_fields(kv: Harness, errors: ErrorLog, body: dict[str, Any], extra: dict[str, Any],
                         patch: bool) -> None:
    payload = dumps({**extra, **body})
    if patch:
        check(kv, errors, "PATCH", "secret/metadata/app", body=payload, token=kv.root,
              headers={"Content-Type": "application/merge-patch+json"})
    else:
        check(kv, errors, "POST", "secret/metadata/app", body=payload, token=kv.root)
    _usable(kv, errors, "app")
    # Put the key back to plain settings so one example cannot hide the next.
    kv.send("DELETE", "secret/metadata/app", token=kv.root)


@given(body=st.fixed_dictionaries({}, optional=CONFIG_FIELDS), extra=extras)
@example(body={"delete_version_after": "99999999999999d"}, extra={})
@example(body={"delete_version_after": "-9223372037"}, extra={})
@example(body={"delete_version_after": "2562047h"}, extra={})
@example(body={"max_versions": "99999999999999999999"}, extra={})
def test_config_fields(kv: Harness, errors: ErrorLog, body: dict[str, Any], extra: dict[str, Any]) -> None:
    check(kv, errors, "POST", "secret/config", body=dumps({**extra, **body}), token=kv.root)
    _usable(kv, errors, "other")
    kv.send("POST", "secret/config", body=b'{"max_versions": 0, "cas_required": false, '
            b'"metadata_cas_required": false, "delete_version_after": 0}', token=kv.root)


DATA_FIELDS: dict[str, Any] = {
    "data": json_values, "options": st.one_of(json_values, st.fixed_dictionaries({}, optional={
        "cas": st.one_of(any_ints, json_values)})),
    "version": st.one_of(any_ints, json_values),
}
VERSION_OPS = ["delete", "undelete", "destroy"]


@given(body=st.fixed_dictionaries({}, optional=DATA_FIELDS), extra=extras,
       op=st.sampled_from(["write", "patch", *VERSION_OPS]),
       versions=st.one_of(json_values, st.lists(any_ints, max_size=3), any_text))
@example(body={"data": {"a": "\ud800"}}, extra={}, op="write", versions=None)
@example(body={"data": {"\udfff": 1}}, extra={}, op="patch", versions=None)
@example(body={"data": {"a": 1}, "options": {"cas": 2**64 + 1}}, extra={}, op="write", versions=None)
@example(body={}, extra={}, op="destroy", versions=[2**63, -1])
def test_data_writes(kv: Harness, errors: ErrorLog, body: dict[str, Any], extra: dict[str, Any], op: str,
                     versions: Any) -> None:
    payload = {**extra, **body}
    if op == "write":
        check(kv, errors, "POST", "secret/data/other", body=dumps(payload), token=kv.root)
    elif op == "patch":
        check(kv, errors, "PATCH", "secret/data/other", body=dumps(payload), token=kv.root,
              headers={"Content-Type": "application/merge-patch+json"})
    else:
        check(kv, errors, "POST", f"secret/{op}/other", body=dumps({**payload, "versions": versions}),
              token=kv.root)
    _usable(kv, errors, "other")


@given(query=st.dictionaries(st.sampled_from(["version", "depth", "list", "after", "limit", "x"]),
                             st.one_of(any_text, any_ints.map(str)), max_size=3),
       section=st.sampled_from(["data", "metadata", "subkeys", "config"]))
@example(query={"version": "9" * 40}, section="data")
@example(query={"depth": str(2**64)}, section="subkeys")
@example(query={"limit": "-" + "9" * 5000}, section="metadata")
@example(query={"list": "1"}, section="config")  # a 404 with warnings, as in Vault: not a failure
def test_reads_with_query(kv: Harness, errors: ErrorLog, query: dict[str, str], section: str) -> None:
    path = "secret/config" if section == "config" else f"secret/{section}/other"
    encoded = urllib.parse.urlencode({k: v.encode("utf-8", "surrogatepass") for k, v in query.items()})
    check(kv, errors, "GET", path, query=encoded, token=kv.root)
