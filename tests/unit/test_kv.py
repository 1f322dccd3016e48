"""The KV engine (vaultd/engines/kv.py) against Vault's observable behaviour.

Expected statuses, keys and messages are what OpenBao 2.7.2 returned for the
same requests.  The engines run over a real in-memory storage seen through
the mount's StorageView, as the router hands it to them.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from vaultd.engines.base import MountSettings
from vaultd.engines.kv import KVv1, KVv2, clean_path, create_kv, merge_patch, rfc3339
from vaultd.errors import StorageError, VaultError
from vaultd.logical import Operation, Request, Response
from vaultd.storage.base import Op, Put, Storage
from vaultd.storage.inmem import InmemStorage
from vaultd.storage.sqlite import SqliteStorage
from vaultd.storage.view import StorageView

R, C, U, D, L, P = (Operation.READ, Operation.CREATE, Operation.UPDATE, Operation.DELETE, Operation.LIST,
                    Operation.PATCH)
T0 = 1_795_874_871_755_926_423  # 2026-11-28T14:07:51.755926423Z
SECOND = 1_000_000_000
VERSION_INFO_KEYS = {"created_time", "custom_metadata", "deletion_time", "destroyed", "version"}
METADATA_KEYS = {
    "cas_required", "created_time", "current_metadata_version", "current_version", "custom_metadata",
    "delete_version_after", "max_versions", "metadata_cas_required", "oldest_version", "updated_time", "versions",
}
INVALID_INT = "'' cannot parse value as 'int': strconv.ParseInt: invalid syntax"
CLI_HINT = ("Invalid path for a versioned K/V secrets engine. See the API docs for the appropriate API endpoints "
            "to use. If using the Vault CLI, use 'vault kv {}' for this operation.")


class StepClock:
    """Time that moves only when told to (plus 1 µs per reading, so two
    events never share a timestamp), so tests need no sleeping."""

    def __init__(self, start: int = T0) -> None:
        self.now = start

    def __call__(self) -> int:
        self.now += 1000
        return self.now

    def advance(self, seconds: int) -> None:
        self.now += seconds * SECOND


class LockRecordingStorage(InmemStorage):
    """A real in-memory storage that also records which locks were held at
    each write, so tests can check that every read-modify-write is locked."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[str] = []
        self.writes: list[tuple[str, str, tuple[str, ...]]] = []

    @contextlib.contextmanager
    def lock(self, name: str = "") -> Iterator[None]:
        with super().lock(name):
            self.held.append(name)
            try:
                yield
            finally:
                self.held.remove(name)

    def put(self, key: str, value: bytes) -> None:
        self.writes.append(("put", key, tuple(self.held)))
        super().put(key, value)

    def delete(self, key: str) -> None:
        self.writes.append(("delete", key, tuple(self.held)))
        super().delete(key)


PREFIX = "logical/0f3e/"


def make(version: str | None, backing: Storage | None = None, **mount: Any) -> Any:
    options = {} if version is None else {"version": version}
    view = StorageView(backing or InmemStorage(), PREFIX)
    return create_kv(view, MountSettings(path="secret/", options=options, **mount))


@pytest.fixture
def kv1() -> KVv1:
    return make(None)


@pytest.fixture
def clock() -> StepClock:
    return StepClock()


@pytest.fixture
def kv2(clock: StepClock) -> KVv2:
    engine = make("2")
    engine.clock = clock
    return engine


def call(engine: Any, op: Operation, path: str, data: dict[str, Any] | None = None,
         query: dict[str, str] | None = None) -> Response:
    return engine.handle(Request(operation=op, path=path, data=data or {}, query=query or {}))


def fails(engine: Any, op: Operation, path: str, data: dict[str, Any] | None = None,
          query: dict[str, str] | None = None) -> VaultError:
    with pytest.raises(VaultError) as info:
        call(engine, op, path, data, query)
    return info.value


def assert_error(err: VaultError, status: int, *messages: str) -> None:
    assert (err.status, err.messages) == (status, list(messages))


def raw(engine: Any, key: str) -> Any:
    value = engine.storage.get(key)
    return None if value is None else json.loads(value)


# --------------------------------------------------------------------------- factory and helpers


@pytest.mark.parametrize(("options", "cls"), [({}, KVv1), ({"version": ""}, KVv1), ({"version": "1"}, KVv1),
                                              ({"version": "2"}, KVv2)])
def test_factory_chooses_by_version(options: dict[str, str], cls: type) -> None:
    assert type(create_kv(InmemStorage(), MountSettings(path="kv/", options=options))) is cls


@pytest.mark.parametrize("version", ["3", "abc", "v2"])
def test_factory_rejects_unknown_versions(version: str) -> None:
    with pytest.raises(VaultError) as info:
        create_kv(InmemStorage(), MountSettings(path="kv/", options={"version": version}))
    assert_error(info.value, 400, 'nil backend of type "kv" returned from factory')


@pytest.mark.parametrize(
    ("path", "op", "cleaned"),
    [("a/b", R, "a/b"), ("a//b", R, "a/b"), ("a/./b/", R, "a/b/"), ("a/../b", R, "b"), ("../../x", R, "x"),
     ("", R, ""), ("a", L, "a/"), ("", L, ""), ("data/..", R, "")],
)
def test_clean_path(path: str, op: Operation, cleaned: str) -> None:
    assert clean_path(path, op) == cleaned


def test_rfc3339_matches_go() -> None:
    assert rfc3339(T0) == "2026-11-28T14:07:51.755926423Z"
    assert rfc3339(1_795_874_871_766_624_060) == "2026-11-28T14:07:51.76662406Z"
    assert rfc3339(1_795_874_871 * SECOND) == "2026-11-28T14:07:51Z"
    assert rfc3339(None) == ""


@pytest.mark.parametrize(
    ("target", "patch", "result"),
    [  # RFC 7386 appendix A
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
        ({"a": 1}, None, None),
    ],
)
def test_merge_patch_rfc7386(target: Any, patch: Any, result: Any) -> None:
    assert merge_patch(target, patch) == result


# --------------------------------------------------------------------------- KV v1


def test_v1_write_read_with_system_default_lease(kv1: KVv1) -> None:
    assert call(kv1, U, "foo", {"a": "b", "n": 1}) == Response()
    resp = call(kv1, R, "foo")
    assert (resp.data, resp.lease_duration, resp.renewable, resp.status) == ({"a": "b", "n": 1}, 2764800, False, None)


def test_v1_stores_plain_json_at_the_secret_path(kv1: KVv1) -> None:
    call(kv1, C, "a/b/c", {"x": 1})
    assert raw(kv1, "a/b/c") == {"x": 1}


def test_v1_lease_uses_mount_default() -> None:
    engine = make("1", default_lease_ttl=3600)
    call(engine, U, "foo", {"a": "b"})
    assert call(engine, R, "foo").lease_duration == 3600


@pytest.mark.parametrize(
    ("data", "lease"),
    [({"ttl": "1h"}, 3600), ({"ttl": 30}, 30), ({"ttl": "12"}, 12), ({"ttl": "1.5h"}, 5400),
     ({"ttl": "9999h"}, 35996400), ({"lease": "2m"}, 120), ({"ttl": "-5s"}, -5), ({"ttl": ""}, 0), ({"ttl": "0"}, 0),
     ({"ttl": "bogus"}, 2764800), ({"ttl": True}, 2764800), ({"ttl": 1.7}, 2764800)],
)
def test_v1_lease_follows_ttl_key(kv1: KVv1, data: dict[str, Any], lease: int) -> None:
    call(kv1, U, "foo", {"a": "b", **data})
    resp = call(kv1, R, "foo")
    assert resp.lease_duration == lease
    assert resp.data == {"a": "b", **data}


def test_v1_write_errors(kv1: KVv1) -> None:
    assert_error(fails(kv1, U, "foo", {}), 400, "missing data fields")
    assert_error(fails(kv1, C, "foo/", {"a": 1}), 400, "cannot write to a path ending in '/'")
    assert_error(fails(kv1, U, "", {"a": 1}), 400, "cannot write to a path ending in '/'")
    assert_error(fails(kv1, P, "foo", {"a": 1}), 405, "unsupported operation")


def test_v1_missing_and_folder_reads_are_404_with_no_message(kv1: KVv1) -> None:
    call(kv1, U, "a/b", {"x": 1})
    for path in ("nothing", "a", "a/", ""):
        assert_error(fails(kv1, R, path), 404)


def test_v1_delete(kv1: KVv1) -> None:
    call(kv1, U, "foo", {"a": 1})
    assert call(kv1, D, "foo") == Response()
    assert_error(fails(kv1, R, "foo"), 404)
    assert call(kv1, D, "foo") == Response()
    assert call(kv1, D, "foo/") == Response()
    assert call(kv1, D, "") == Response()


def test_v1_list(kv1: KVv1) -> None:
    for path in ("foo", "a/b/c", "x/y"):
        call(kv1, U, path, {"v": 1})
    assert call(kv1, L, "").data == {"keys": ["a/", "foo", "x/"]}
    assert call(kv1, L, "a").data == {"keys": ["b/"]}
    assert call(kv1, L, "a/").data == {"keys": ["b/"]}
    assert_error(fails(kv1, L, "nope/"), 404)
    assert_error(fails(kv1, L, "foo"), 404)


def test_v1_empty_mount_lists_404(kv1: KVv1) -> None:
    assert_error(fails(kv1, L, ""), 404)


def test_v1_paths_are_cleaned(kv1: KVv1) -> None:
    call(kv1, U, "x//y", {"a": 1})
    assert call(kv1, R, "x/y").data == {"a": 1}
    assert call(kv1, L, "x//").data == {"keys": ["y"]}


def test_v1_exists(kv1: KVv1) -> None:
    call(kv1, U, "foo", {"a": 1})
    assert kv1.exists(Request(operation=U, path="foo"))
    assert not kv1.exists(Request(operation=U, path="bar"))
    assert not kv1.exists(Request(operation=U, path="foo/"))


# --------------------------------------------------------------------------- KV v2: data/


def test_v2_write_then_read(kv2: KVv2) -> None:
    written = call(kv2, C, "data/foo", {"data": {"a": "1"}})
    assert written.data == {"created_time": "2026-11-28T14:07:51.755927423Z", "custom_metadata": None,
                            "deletion_time": "", "destroyed": False, "version": 1}
    assert (written.status, written.warnings, written.lease_duration) == (None, None, 0)
    read = call(kv2, R, "data/foo")
    assert read.data == {"data": {"a": "1"}, "metadata": written.data}
    assert read.status is None


def test_v2_versions_and_version_query(kv2: KVv2) -> None:
    call(kv2, U, "data/foo", {"data": {"a": "1"}})
    call(kv2, U, "data/foo", {"data": {"a": "2"}})
    assert call(kv2, R, "data/foo").data["data"] == {"a": "2"}
    assert call(kv2, R, "data/foo", query={"version": "1"}).data["data"] == {"a": "1"}
    for current in ("0", "-1", ""):
        assert call(kv2, R, "data/foo", query={"version": current}).data["metadata"]["version"] == 2
    assert_error(fails(kv2, R, "data/foo", query={"version": "99"}), 404)
    for bad in ("abc", "1.0", " 1"):
        assert_error(fails(kv2, R, "data/foo", query={"version": bad}), 400,
                     f'Field validation failed: error converting input for field "version": {INVALID_INT}')


def test_v2_read_missing_is_bare_404(kv2: KVv2) -> None:
    assert_error(fails(kv2, R, "data/nothere"), 404)
    assert_error(fails(kv2, R, "data/"), 404)


def test_v2_trailing_slash_reads_the_same_secret(kv2: KVv2) -> None:
    call(kv2, U, "data/b", {"data": {"x": 1}})
    assert call(kv2, R, "data/b/").data["data"] == {"x": 1}
    assert call(kv2, R, "metadata/b/").data["current_version"] == 1


def test_v2_check_and_set(kv2: KVv2) -> None:
    assert call(kv2, U, "data/foo", {"data": {"a": 1}, "options": {"cas": 0}}).data["version"] == 1
    assert_error(fails(kv2, U, "data/foo", {"data": {"a": 2}, "options": {"cas": 0}}), 400,
                 "check-and-set parameter did not match the current version")
    assert call(kv2, U, "data/foo", {"data": {"a": 2}, "options": {"cas": 1}}).data["version"] == 2
    assert call(kv2, U, "data/foo", {"data": {"a": 3}, "options": {"cas": "02"}}).data["version"] == 3
    for weak in (None, "", True, False, -1):
        assert_error(fails(kv2, U, "data/foo", {"data": {}, "options": {"cas": weak}}), 400,
                     "check-and-set parameter did not match the current version")
    for bad in ("x", 2.0, [1]):
        assert_error(fails(kv2, U, "data/foo", {"data": {}, "options": {"cas": bad}}), 400,
                     "error parsing check-and-set parameter")
    assert call(kv2, R, "data/foo").data["data"] == {"a": 3}


def test_v2_cas_required_by_config_and_by_key(kv2: KVv2) -> None:
    call(kv2, U, "config", {"cas_required": True})
    assert_error(fails(kv2, U, "data/bar", {"data": {"x": 1}}), 400, "check-and-set parameter required for this call")
    assert_error(fails(kv2, U, "data/bar", {"data": {"x": 1}, "options": {}}), 400,
                 "check-and-set parameter required for this call")
    assert call(kv2, U, "data/bar", {"data": {"x": 1}, "options": {"cas": 0}}).data["version"] == 1
    call(kv2, U, "config", {"cas_required": False})
    call(kv2, U, "metadata/bar", {"cas_required": True})
    assert_error(fails(kv2, U, "data/bar", {"data": {"x": 2}}), 400, "check-and-set parameter required for this call")
    assert call(kv2, U, "data/bar", {"data": {"x": 2}, "options": {"cas": 1}}).data["version"] == 2


def test_v2_write_input_errors(kv2: KVv2) -> None:
    assert_error(fails(kv2, U, "data/bar", {"nodata": {"x": 1}}), 400, "no data provided")
    assert_error(fails(kv2, U, "data/bar", {"data": "str"}), 400,
                 "error converting input for field \"data\": '' expected type 'map[string]interface {}', "
                 "got unconvertible type 'string'")
    assert_error(fails(kv2, U, "data/bar", {"data": [1]}), 400,
                 "error converting input for field \"data\": '[0]' expected type 'map[string]interface {}', "
                 "got unconvertible type 'json.Number'")
    assert_error(fails(kv2, U, "data/bar", {"data": {}, "options": "str"}), 400,
                 "error converting input for field \"options\": '' expected type 'map[string]interface {}', "
                 "got unconvertible type 'string'")
    assert_error(fails(kv2, U, "data/", {"data": {}}), 400, "cannot write to a path ending in '/'")
    assert_error(fails(kv2, C, "data/bar/", {"data": {}}), 400, "cannot write to a path ending in '/'")
    assert_error(fails(kv2, L, "data/"), 405, "unsupported operation")
    assert_error(fails(kv2, L, "data/bar"), 405, "unsupported operation")


def test_v2_lenient_data_shapes(kv2: KVv2) -> None:
    call(kv2, U, "data/n", {"data": None})
    assert call(kv2, R, "data/n").data["data"] is None
    call(kv2, U, "data/n", {"data": [{"a": 1}, {"b": 2}, None]})
    assert call(kv2, R, "data/n").data["data"] == {"a": 1, "b": 2}
    call(kv2, U, "data/n", {"data": {}, "options": None})
    assert call(kv2, R, "data/n").data["data"] == {}


def test_v2_warns_about_unknown_parameters(kv2: KVv2) -> None:
    resp = call(kv2, U, "data/n", {"data": {"a": 1}, "x": 1, "b": 2, "version": 5})
    assert resp.warnings == ["Endpoint ignored these unrecognized parameters: [b x]"]
    assert call(kv2, R, "data/n", query={"extra": "1"}).warnings == [
        "Endpoint ignored these unrecognized parameters: [extra]"
    ]
    assert call(kv2, R, "data/n").warnings is None


def test_v2_soft_delete_answers_404_with_metadata(kv2: KVv2) -> None:
    call(kv2, U, "data/foo", {"data": {"a": 1}})
    assert call(kv2, D, "data/foo") == Response()
    resp = call(kv2, R, "data/foo")
    assert resp.status == 404
    assert resp.data is not None and resp.data["data"] is None
    assert set(resp.data["metadata"]) == VERSION_INFO_KEYS
    assert resp.data["metadata"]["deletion_time"].endswith("Z")
    first = resp.data["metadata"]["deletion_time"]
    call(kv2, D, "data/foo")  # already deleted: nothing changes
    assert call(kv2, R, "data/foo").data["metadata"]["deletion_time"] == first
    assert call(kv2, D, "data/nothing") == Response()


def test_v2_delete_of_a_new_version_leaves_older_ones(kv2: KVv2) -> None:
    call(kv2, U, "data/foo", {"data": {"a": 1}})
    call(kv2, U, "data/foo", {"data": {"a": 2}})
    call(kv2, D, "data/foo", query={"version": "1"})  # the version parameter is ignored
    assert call(kv2, R, "data/foo", query={"version": "1"}).data["data"] == {"a": 1}
    assert call(kv2, R, "data/foo").status == 404


def test_v2_root_and_unknown_paths(kv2: KVv2) -> None:
    root = ["Non-listing operations on the root of a K/V v2 mount are not supported."]
    for op, path in ((R, "data"), (U, "metadata"), (D, "data"), (R, "destroy"), (U, "delete"), (P, "undelete")):
        resp = call(kv2, op, path, {"versions": [1]} if op is U else None)
        assert (resp.status, resp.data, resp.warnings) == (404, None, root)
    for op, path, verb in ((R, "", "get"), (L, "", "list"), (U, "nothing/foo", "put"), (R, "config/", "get"),
                           (L, "config", "list"), (R, "subkeys", "get"), (P, "foo", "patch"), (D, "x/y", "delete"),
                           (R, "detailed-metadata/x", "get"), (U, "data/../z", "put")):
        resp = call(kv2, op, path, {"data": {}} if op in (U, P) else None)
        assert (resp.status, resp.data, resp.warnings) == (404, None, [CLI_HINT.format(verb)])
    assert_error(fails(kv2, U, "", {"a": 1}), 400, "cannot write to a path ending in '/'")
    for op, path in ((L, "delete"), (L, "subkeys"), (D, "config"), (P, "config")):
        assert_error(fails(kv2, op, path, {"a": 1}), 405, "unsupported operation")


def test_v2_exists(kv2: KVv2) -> None:
    call(kv2, U, "data/foo", {"data": {}})
    assert kv2.exists(Request(operation=U, path="data/foo"))
    assert kv2.exists(Request(operation=U, path="metadata/foo"))
    assert not kv2.exists(Request(operation=U, path="data/bar"))
    assert not kv2.exists(Request(operation=U, path="metadata/bar"))
    assert not kv2.exists(Request(operation=U, path="data/"))
    assert kv2.exists(Request(operation=U, path="delete/bar"))
    assert kv2.exists(Request(operation=U, path="config"))


def test_v2_storage_layout(kv2: KVv2) -> None:
    call(kv2, U, "data/a/b", {"data": {"pw": "x"}})
    assert raw(kv2, "versions/a/b/1") == {"pw": "x"}
    meta = raw(kv2, "meta/a/b")
    assert meta["current_version"] == 1 and "pw" not in json.dumps(meta)


# --------------------------------------------------------------------------- KV v2: PATCH


def test_v2_patch_merges_into_a_new_version(kv2: KVv2) -> None:
    call(kv2, U, "data/p", {"data": {"a": 1, "b": {"c": 2, "d": 3}, "e": [1, 2]}})
    resp = call(kv2, P, "data/p", {"data": {"a": None, "b": {"c": None, "x": 9}, "e": [3], "n": None}})
    assert set(resp.data) == VERSION_INFO_KEYS and resp.data["version"] == 2
    assert call(kv2, R, "data/p").data["data"] == {"b": {"d": 3, "x": 9}, "e": [3]}
    assert call(kv2, R, "data/p", query={"version": "1"}).data["data"]["a"] == 1


def test_v2_patch_errors(kv2: KVv2) -> None:
    assert_error(fails(kv2, P, "data/none", {"data": {"a": 1}}), 404)
    call(kv2, U, "data/p", {"data": {"a": 1}})
    assert_error(fails(kv2, P, "data/p", {}), 400, "no data provided")
    assert_error(fails(kv2, P, "data/p", {"data": "str"}), 400,
                 "Field validation failed: error converting input for field \"data\": '' expected type "
                 "'map[string]interface {}', got unconvertible type 'string'")
    assert_error(fails(kv2, P, "data/p", {"data": {"z": 1}, "options": {"cas": 0}}), 400,
                 "check-and-set parameter did not match the current version")
    assert_error(fails(kv2, P, "data/p", {"data": {"z": 1}, "options": {"cas": "x"}}), 400,
                 "error parsing check-and-set parameter")
    assert call(kv2, P, "data/p", {"data": {"z": 1}, "options": {"cas": 1}}).data["version"] == 2
    call(kv2, U, "config", {"cas_required": True})
    assert_error(fails(kv2, P, "data/p", {"data": {"z": 2}}), 400, "check-and-set parameter required for this call")
    assert_error(fails(kv2, P, "data/p/", {"data": {"z": 2}}), 400, "cannot write to a path ending in '/'")


def test_v2_patch_needs_a_live_current_version(kv2: KVv2) -> None:
    call(kv2, U, "metadata/empty", {"max_versions": 3})
    assert_error(fails(kv2, P, "data/empty", {"data": {"a": 1}}), 404)
    call(kv2, U, "data/p", {"data": {"a": 1}})
    call(kv2, D, "data/p")
    resp = call(kv2, P, "data/p", {"data": {"a": 2}})
    assert resp.status == 404 and set(resp.data) == VERSION_INFO_KEYS and resp.data["deletion_time"]
    call(kv2, U, "destroy/p", {"versions": [1]})
    resp = call(kv2, P, "data/p", {"data": {"a": 2}})
    assert resp.status == 404 and resp.data["destroyed"] is True
    assert call(kv2, R, "metadata/p").data["current_version"] == 1


def test_v2_patch_with_null_data_and_after(kv2: KVv2) -> None:
    call(kv2, U, "data/p", {"data": {"a": 1}})
    assert call(kv2, P, "data/p", {"data": None}).data["version"] == 2
    assert call(kv2, R, "data/p").data["data"] is None
    assert_error(fails(kv2, P, "data/p", {"data": {}}), 500, "resource does not exist")


# --------------------------------------------------------------------------- KV v2: delete/ undelete/ destroy/


def write_versions(engine: KVv2, key: str, count: int) -> None:
    for i in range(count):
        call(engine, U, f"data/{key}", {"data": {"i": i}})


def deletion_times(engine: KVv2, key: str) -> dict[str, str]:
    return {n: v["deletion_time"] for n, v in call(engine, R, f"metadata/{key}").data["versions"].items()}


def test_v2_delete_undelete_versions(kv2: KVv2) -> None:
    write_versions(kv2, "d", 4)
    assert call(kv2, U, "delete/d", {"versions": "1,2"}) == Response()
    call(kv2, U, "delete/d", {"versions": ["3", -1, 0, 99]})
    times = deletion_times(kv2, "d")
    assert all(times[n] for n in ("1", "2", "3")) and times["4"] == ""
    resp = call(kv2, R, "data/d", query={"version": "1"})
    assert resp.status == 404 and resp.data["data"] is None
    call(kv2, U, "delete/d", {"versions": [1]})
    assert deletion_times(kv2, "d")["1"] == times["1"]  # already deleted: untouched
    assert call(kv2, U, "undelete/d", {"versions": [1, 2]}) == Response()
    assert call(kv2, R, "data/d", query={"version": "1"}).data["data"] == {"i": 0}
    assert deletion_times(kv2, "d")["2"] == ""


def test_v2_destroy_removes_data_for_good(kv2: KVv2) -> None:
    write_versions(kv2, "d", 3)
    call(kv2, U, "delete/d", {"versions": [3]})
    assert call(kv2, U, "destroy/d", {"versions": [3, 3, 2]}) == Response()
    assert raw(kv2, "versions/d/3") is None and raw(kv2, "versions/d/2") is None
    assert raw(kv2, "versions/d/1") == {"i": 0}
    call(kv2, U, "undelete/d", {"versions": [3]})
    resp = call(kv2, R, "data/d", query={"version": "3"})
    assert resp.status == 404
    assert resp.data["metadata"]["destroyed"] is True and resp.data["metadata"]["deletion_time"] != ""
    assert call(kv2, R, "data/d").status == 404
    assert call(kv2, D, "data/d") == Response()  # current is destroyed: nothing to do


def test_v2_version_endpoint_errors(kv2: KVv2) -> None:
    write_versions(kv2, "d", 1)
    for path in ("delete/d", "undelete/d"):
        assert_error(fails(kv2, U, path, {}), 400, "No version number provided")
        assert_error(fails(kv2, U, path, {"versions": []}), 400, "No version number provided")
        assert_error(fails(kv2, U, path, {"versions": None}), 400, "No version number provided")
    assert_error(fails(kv2, U, "destroy/d", {}), 400, "no version number provided")
    prefix = 'Field validation failed: error converting input for field "versions": decoding failed due to the ' \
             "following error(s):\n\n"
    assert_error(fails(kv2, U, "delete/d", {"versions": "x"}), 400,
                 prefix + "'[0]' cannot parse value as 'int': strconv.ParseInt: invalid syntax")
    assert_error(fails(kv2, U, "undelete/d", {"versions": "1, 2"}), 400,
                 prefix + "'[1]' cannot parse value as 'int': strconv.ParseInt: invalid syntax")
    assert_error(fails(kv2, U, "destroy/d", {"versions": {"a": 1}}), 400,
                 prefix + "'[0]' expected type 'int', got unconvertible type 'map[string]interface {}'")
    for op in (R, D, L, P):
        for path in ("delete/d", "undelete/d", "destroy/d"):
            assert_error(fails(kv2, op, path, {"versions": [1]}), 405, "unsupported operation")
    assert_error(fails(kv2, U, "delete/", {"versions": [1]}), 400, "cannot write to a path ending in '/'")


def test_v2_version_endpoints_on_missing_keys_do_nothing(kv2: KVv2) -> None:
    for path in ("delete/none", "undelete/none", "destroy/none"):
        assert call(kv2, U, path, {"versions": [1]}) == Response()
    assert raw(kv2, "meta/none") is None


# --------------------------------------------------------------------------- KV v2: metadata/


def test_v2_metadata_read_shape(kv2: KVv2, clock: StepClock) -> None:
    write_versions(kv2, "foo", 2)
    data = call(kv2, R, "metadata/foo").data
    assert set(data) == METADATA_KEYS
    assert data["current_version"] == 2 and data["oldest_version"] == 0
    assert data["current_metadata_version"] == 0 and data["custom_metadata"] is None
    assert data["delete_version_after"] == "0s" and data["max_versions"] == 0
    assert data["created_time"] == data["versions"]["1"]["created_time"]
    assert data["updated_time"] == data["versions"]["2"]["created_time"]
    assert data["versions"]["1"] == {"created_time": rfc3339(T0 + 1000), "deletion_time": "", "destroyed": False}
    assert call(kv2, R, "metadata/foo").warnings is None
    assert call(kv2, R, "metadata/foo", query={"foo": "1", "limit": "2"}).warnings == [
        "Endpoint ignored these unrecognized parameters: [foo]"
    ]
    assert_error(fails(kv2, R, "metadata/nothing"), 404)
    assert_error(fails(kv2, R, "metadata/"), 404)


def test_v2_metadata_write_creates_and_updates(kv2: KVv2) -> None:
    assert call(kv2, U, "metadata/m", {}) == Response()
    assert call(kv2, U, "metadata/m", {"bogus": 1, "metadata_cas": 0}) == Response()
    assert_error(fails(kv2, R, "metadata/m"), 404)  # nothing settable: nothing written
    call(kv2, U, "metadata/m", {"max_versions": 3})
    first = call(kv2, R, "metadata/m").data
    assert (first["max_versions"], first["current_version"], first["versions"]) == (3, 0, {})
    assert first["current_metadata_version"] == 1 and first["created_time"] == first["updated_time"]
    call(kv2, U, "metadata/m", {"cas_required": "true", "delete_version_after": "1h30m"})
    second = call(kv2, R, "metadata/m").data
    assert (second["cas_required"], second["delete_version_after"], second["max_versions"]) == (True, "1h30m0s", 3)
    assert second["current_metadata_version"] == 2
    assert second["created_time"] == first["created_time"] and second["updated_time"] > first["updated_time"]
    assert_error(fails(kv2, R, "data/m"), 404)


@pytest.mark.parametrize(
    ("field", "value", "shown"),
    [("max_versions", -1, 4294967295), ("max_versions", "4", 4), ("max_versions", True, 1),
     ("max_versions", "0x10", 16), ("max_versions", None, 0),
     ("cas_required", 1, True), ("cas_required", "t", True), ("cas_required", None, False),
     ("delete_version_after", 3600, "1h0m0s"), ("delete_version_after", "1d", "24h0m0s"),
     ("delete_version_after", "", "0s"), ("delete_version_after", "-0s", "0s")],
)
def test_v2_metadata_field_decoding(kv2: KVv2, field: str, value: Any, shown: Any) -> None:
    call(kv2, U, "metadata/m", {field: value})
    assert call(kv2, R, "metadata/m").data[field] == shown


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"max_versions": "abc"}, f'error converting input for field "max_versions": {INVALID_INT}'),
        ({"max_versions": 2.0}, f'error converting input for field "max_versions": {INVALID_INT}'),
        ({"max_versions": []}, "error converting input for field \"max_versions\": '' expected type 'int', "
                               "got unconvertible type '[]interface {}'"),
        ({"cas_required": "yes"}, "error converting input for field \"cas_required\": '' cannot parse value as "
                                  "'bool': strconv.ParseBool: invalid syntax"),
        ({"delete_version_after": "-1s"},
         "error converting input for field \"delete_version_after\": cannot provide negative value '-1'"),
        ({"delete_version_after": "bogus"},
         'error converting input for field "delete_version_after": time: invalid duration "bogus"'),
        ({"delete_version_after": True},
         'error converting input for field "delete_version_after": could not parse duration from input'),
        ({"custom_metadata": "str"}, "error converting input for field \"custom_metadata\": '' expected type "
                                     "'map[string]interface {}', got unconvertible type 'string'"),
        ({"metadata_cas": "x", "max_versions": 1}, f'error converting input for field "metadata_cas": {INVALID_INT}'),
    ],
)
def test_v2_metadata_write_field_errors(kv2: KVv2, body: dict[str, Any], message: str) -> None:
    assert_error(fails(kv2, U, "metadata/m", body), 400, message)
    assert_error(fails(kv2, R, "metadata/m"), 404)


def cm_error(*details: str) -> str:
    lines = [f"custom_metadata validation failed: {d}" for d in details]
    if len(lines) == 1:
        return f"1 error occurred:\n\t* {lines[0]}\n\n"
    return f"{len(lines)} errors occurred:\n\t" + "\n\t".join(f"* {x}" for x in lines) + "\n\n"


@pytest.mark.parametrize(
    ("custom", "message"),
    [
        ({"a": ""}, cm_error('length of value for key "a" is 0 but must be 0 < len(value) <= 512')),
        ({"c": None}, cm_error('length of value for key "c" is 0 but must be 0 < len(value) <= 512')),
        ({"": "x"}, cm_error('length of key "" is 0 but must be 0 < len(key) <= 128')),
        ({"k": "x" * 513}, cm_error('length of value for key "k" is 513 but must be 0 < len(value) <= 512')),
        ({"k" * 129: "x"}, cm_error(f'length of key "{"k" * 129}" is 129 but must be 0 < len(key) <= 128')),
        ({"é" * 65: "y"}, cm_error(f'length of key "{"é" * 65}" is 130 but must be 0 < len(key) <= 128')),
        ({f"k{i}": "v" for i in range(65)}, cm_error("payload must contain at most 64 keys, provided 65")),
        ({"k": "a\x01b"}, cm_error('value for key "k" contains unprintable characters')),
        ({"t\tk": "v"}, cm_error('key "t\\tk" (t\tk) contains unprintable characters')),
        ({"z": "tab\there", "": "v"}, cm_error('value for key "z" contains unprintable characters',
                                               'length of key "" is 0 but must be 0 < len(key) <= 128')),
        ({"k": [1, 2]}, "custom_metadata validation failed: '' expected type 'string', "
                        "got unconvertible type '[]interface {}'"),
        ({"k": {"x": 1}}, "custom_metadata validation failed: '' expected type 'string', "
                          "got unconvertible type 'map[string]interface {}'"),
    ],
)
def test_v2_custom_metadata_validation(kv2: KVv2, custom: dict[str, Any], message: str) -> None:
    assert_error(fails(kv2, U, "metadata/m", {"custom_metadata": custom}), 400, message)


def test_v2_custom_metadata_limits_are_inclusive_and_values_coerced(kv2: KVv2) -> None:
    custom = {f"k{i}": "v" for i in range(62)} | {"long": "x" * 512, "é" * 64: "y"}
    call(kv2, U, "metadata/m", {"custom_metadata": custom})
    assert call(kv2, R, "metadata/m").data["custom_metadata"] == custom
    call(kv2, U, "metadata/m", {"custom_metadata": {"n": 1, "b": True, "f": 1.5, "s": "ok"}})
    assert call(kv2, R, "metadata/m").data["custom_metadata"] == {"n": "1", "b": "1", "f": "1.5", "s": "ok"}
    call(kv2, U, "metadata/m", {"custom_metadata": [{"a": "b"}]})
    assert call(kv2, R, "metadata/m").data["custom_metadata"] == {"a": "b"}
    for empty in ({}, None):
        call(kv2, U, "metadata/m", {"custom_metadata": empty})
        assert call(kv2, R, "metadata/m").data["custom_metadata"] is None


def test_v2_custom_metadata_shows_in_data_responses(kv2: KVv2) -> None:
    call(kv2, U, "data/foo", {"data": {"a": 1}})
    call(kv2, U, "metadata/foo", {"custom_metadata": {"owner": "me"}})
    assert call(kv2, R, "data/foo").data["metadata"]["custom_metadata"] == {"owner": "me"}
    assert call(kv2, U, "data/foo", {"data": {"a": 2}}).data["custom_metadata"] == {"owner": "me"}
    call(kv2, D, "data/foo")
    assert call(kv2, R, "data/foo").data["metadata"]["custom_metadata"] == {"owner": "me"}


def test_v2_metadata_cas_required_false_under_config_warns(kv2: KVv2) -> None:
    call(kv2, U, "config", {"cas_required": True})
    warning = '"cas_required" set to false, but is mandated by backend config. This value will be ignored.'
    resp = call(kv2, U, "metadata/w", {"cas_required": False})
    assert (resp.status, resp.data, resp.warnings) == (200, None, [warning])
    resp = call(kv2, P, "metadata/w", {"cas_required": False})
    assert (resp.status, resp.data, resp.warnings) == (200, None, [warning])
    assert call(kv2, U, "metadata/w", {"cas_required": True}) == Response()


def test_v2_metadata_check_and_set(kv2: KVv2) -> None:
    mismatch = "metadata check-and-set parameter does not match the current version"
    required = "metadata check-and-set parameter required for this call"
    call(kv2, U, "metadata/mc", {"max_versions": 3})
    assert_error(fails(kv2, U, "metadata/mc", {"metadata_cas": 0, "max_versions": 4}), 400, mismatch)
    assert_error(fails(kv2, U, "metadata/mc", {"metadata_cas": None, "max_versions": 4}), 400, mismatch)
    call(kv2, U, "metadata/mc", {"metadata_cas": 1, "metadata_cas_required": True})
    assert_error(fails(kv2, U, "metadata/mc", {"metadata_cas_required": False}), 400, required)
    assert_error(fails(kv2, P, "metadata/mc", {"max_versions": 9}), 400, required)
    assert_error(fails(kv2, P, "metadata/mc", {"max_versions": 9, "metadata_cas": 7}), 400, mismatch)
    # Nothing settable in a patch means nothing to check-and-set either.
    assert call(kv2, P, "metadata/mc", {"bogus": 1, "metadata_cas": 0}) == Response()
    call(kv2, P, "metadata/mc", {"max_versions": 9, "metadata_cas": 2})
    data = call(kv2, R, "metadata/mc").data
    assert (data["max_versions"], data["current_metadata_version"], data["metadata_cas_required"]) == (9, 3, True)
    call(kv2, U, "data/mc", {"data": {"a": 1}})  # data writes need no metadata cas
    assert call(kv2, R, "metadata/mc").data["current_metadata_version"] == 3


def test_v2_metadata_cas_required_by_config(kv2: KVv2) -> None:
    call(kv2, U, "config", {"metadata_cas_required": True})
    assert_error(fails(kv2, U, "metadata/new", {"max_versions": 3}), 400,
                 "metadata check-and-set parameter required for this call")
    call(kv2, U, "metadata/new", {"max_versions": 3, "metadata_cas": 0})
    call(kv2, U, "metadata/new", {"max_versions": 4, "metadata_cas": 1})
    assert call(kv2, R, "metadata/new").data["max_versions"] == 4


def test_v2_metadata_patch(kv2: KVv2) -> None:
    assert_error(fails(kv2, P, "metadata/none", {"max_versions": 3}), 404)
    call(kv2, U, "data/mp", {"data": {"a": 1}})
    call(kv2, P, "metadata/mp", {"max_versions": 3, "custom_metadata": {"a": "b", "c": "d"}})
    call(kv2, P, "metadata/mp", {"custom_metadata": {"a": None, "e": "f"}, "delete_version_after": "1h"})
    data = call(kv2, R, "metadata/mp").data
    assert data["custom_metadata"] == {"c": "d", "e": "f"}
    assert (data["max_versions"], data["delete_version_after"], data["current_metadata_version"]) == (3, "1h0m0s", 2)
    before = data["updated_time"]
    assert call(kv2, P, "metadata/mp", {"versions": {}, "current_version": 9, "bogus": 1}) == Response()
    data = call(kv2, R, "metadata/mp").data
    assert (data["current_version"], data["current_metadata_version"], data["updated_time"]) == (1, 2, before)
    assert_error(fails(kv2, P, "metadata/mp", {"max_versions": "abc"}), 400,
                 f'Field validation failed: error converting input for field "max_versions": {INVALID_INT}')
    assert_error(fails(kv2, P, "metadata/mp", {"delete_version_after": "-1s"}), 400,
                 "Field validation failed: error converting input for field \"delete_version_after\": "
                 "cannot provide negative value '-1'")
    assert_error(fails(kv2, P, "metadata/mp", {"custom_metadata": {"a": ""}}), 400,
                 cm_error('length of value for key "a" is 0 but must be 0 < len(value) <= 512'))
    call(kv2, P, "metadata/mp", {"custom_metadata": None})
    assert call(kv2, R, "metadata/mp").data["custom_metadata"] is None


def test_v2_metadata_delete_removes_everything(kv2: KVv2) -> None:
    write_versions(kv2, "gone", 3)
    assert call(kv2, D, "metadata/gone") == Response()
    assert_error(fails(kv2, R, "metadata/gone"), 404)
    assert_error(fails(kv2, R, "data/gone"), 404)
    assert [raw(kv2, f"versions/gone/{n}") for n in (1, 2, 3)] == [None, None, None]
    assert raw(kv2, "meta/gone") is None
    assert call(kv2, D, "metadata/gone") == Response()
    assert call(kv2, D, "metadata/") == Response()
    assert call(kv2, U, "data/gone", {"data": {"new": 1}}).data["version"] == 1


def test_v2_metadata_list(kv2: KVv2) -> None:
    for key in ("a", "b/c", "b/d/e", "c", "b"):
        call(kv2, U, f"data/{key}", {"data": {"x": 1}})
    assert call(kv2, L, "metadata/").data == {"keys": ["a", "b", "b/", "c"]}
    assert call(kv2, L, "metadata").data == {"keys": ["a", "b", "b/", "c"]}
    assert call(kv2, L, "metadata/b").data == {"keys": ["c", "d/"]}
    assert call(kv2, L, "metadata/", query={"after": "a"}).data == {"keys": ["b", "b/", "c"]}
    assert call(kv2, L, "metadata/", query={"after": "b", "limit": "1"}).data == {"keys": ["b/"]}
    assert call(kv2, L, "metadata/", query={"limit": "2"}).data == {"keys": ["a", "b"]}
    assert call(kv2, L, "metadata/", query={"limit": "-2"}).data == {"keys": ["a", "b", "b/", "c"]}
    assert_error(fails(kv2, L, "metadata/", query={"limit": "x"}), 400,
                 f'Field validation failed: error converting input for field "limit": {INVALID_INT}')
    assert_error(fails(kv2, L, "metadata/", query={"after": "c"}), 404)
    assert_error(fails(kv2, L, "metadata/zz/"), 404)
    call(kv2, D, "metadata/b/d/e")
    assert call(kv2, L, "metadata/b/").data == {"keys": ["c"]}
    assert_error(fails(kv2, L, "metadata/b/d/"), 404)
    call(kv2, D, "data/a")  # soft-deleted keys are still listed
    assert "a" in call(kv2, L, "metadata/").data["keys"]


def test_v2_empty_mount_lists_404(kv2: KVv2) -> None:
    assert_error(fails(kv2, L, "metadata/"), 404)


# --------------------------------------------------------------------------- KV v2: max_versions


def versions_kept(engine: KVv2, key: str) -> tuple[list[int], int]:
    data = call(engine, R, f"metadata/{key}").data
    return sorted(int(n) for n in data["versions"]), data["oldest_version"]


def test_v2_default_window_is_ten_versions(kv2: KVv2) -> None:
    write_versions(kv2, "k", 10)
    assert versions_kept(kv2, "k") == (list(range(1, 11)), 1)  # Vault moves oldest_version early
    assert call(kv2, R, "data/k", query={"version": "1"}).data["data"] == {"i": 0}
    write_versions(kv2, "k", 1)
    assert versions_kept(kv2, "k") == (list(range(2, 12)), 2)
    assert_error(fails(kv2, R, "data/k", query={"version": "1"}), 404)
    assert raw(kv2, "versions/k/1") is None and raw(kv2, "versions/k/2") == {"i": 1}


def test_v2_window_is_the_larger_of_key_and_mount_settings(kv2: KVv2) -> None:
    call(kv2, U, "config", {"max_versions": 5})
    call(kv2, U, "metadata/k", {"max_versions": 3})
    write_versions(kv2, "k", 7)
    assert versions_kept(kv2, "k") == ([3, 4, 5, 6, 7], 3)
    call(kv2, U, "metadata/k", {"max_versions": 6})
    write_versions(kv2, "k", 1)
    assert versions_kept(kv2, "k") == ([3, 4, 5, 6, 7, 8], 3)


def test_v2_lowering_max_versions_prunes_on_next_write(kv2: KVv2) -> None:
    write_versions(kv2, "k", 5)
    call(kv2, U, "metadata/k", {"max_versions": 2})
    assert versions_kept(kv2, "k") == ([1, 2, 3, 4, 5], 0)
    write_versions(kv2, "k", 1)
    assert versions_kept(kv2, "k") == ([5, 6], 5)
    assert [raw(kv2, f"versions/k/{n}") is None for n in range(1, 7)] == [True] * 4 + [False] * 2


def test_v2_pruning_removes_data_of_destroyed_gaps(kv2: KVv2) -> None:
    call(kv2, U, "metadata/k", {"max_versions": 1})
    write_versions(kv2, "k", 1)
    assert versions_kept(kv2, "k") == ([1], 1)
    call(kv2, U, "metadata/k", {"max_versions": 4})
    write_versions(kv2, "k", 3)
    call(kv2, U, "destroy/k", {"versions": [2]})
    call(kv2, U, "metadata/k", {"max_versions": 1})
    write_versions(kv2, "k", 1)
    assert versions_kept(kv2, "k") == ([5], 5)
    # Vault stops its clean-up at the first missing version (2, destroyed)
    # and would leave version 1 behind; every pruned version is removed here.
    assert [raw(kv2, f"versions/k/{n}") is None for n in range(1, 6)] == [True, True, True, True, False]


def test_v2_config_max_versions_wraps_like_uint32(kv2: KVv2) -> None:
    call(kv2, U, "config", {"max_versions": -2})
    assert call(kv2, R, "config").data["max_versions"] == 4294967294


# --------------------------------------------------------------------------- KV v2: delete_version_after


def test_v2_delete_version_after_schedules_deletion(kv2: KVv2, clock: StepClock) -> None:
    call(kv2, U, "config", {"delete_version_after": "1h"})
    written = call(kv2, U, "data/t", {"data": {"a": 1}}).data
    created = clock.now
    assert written["created_time"] == rfc3339(created)
    assert written["deletion_time"] == rfc3339(created + 3600 * SECOND)
    assert call(kv2, R, "data/t").data["data"] == {"a": 1}  # not yet due
    clock.advance(3601)
    resp = call(kv2, R, "data/t")
    assert resp.status == 404 and resp.data["metadata"]["deletion_time"] == written["deletion_time"]
    call(kv2, U, "undelete/t", {"versions": [1]})
    again = call(kv2, R, "data/t")
    assert again.data["data"] == {"a": 1}
    assert again.data["metadata"]["deletion_time"] == rfc3339(clock.now - 1000 + 3600 * SECOND)


def test_v2_delete_version_after_takes_the_smaller_setting(kv2: KVv2, clock: StepClock) -> None:
    call(kv2, U, "config", {"delete_version_after": "1h"})
    call(kv2, U, "metadata/t", {"delete_version_after": "30m"})
    written = call(kv2, U, "data/t", {"data": {}}).data
    assert written["deletion_time"] == rfc3339(clock.now + 1800 * SECOND)
    call(kv2, U, "metadata/t", {"delete_version_after": "2h"})
    written = call(kv2, U, "data/t", {"data": {}}).data
    assert written["deletion_time"] == rfc3339(clock.now + 3600 * SECOND)


def test_v2_delete_version_after_disabled_by_config(kv2: KVv2) -> None:
    call(kv2, U, "metadata/t", {"delete_version_after": "30m"})
    call(kv2, U, "config", {"delete_version_after": "-5m"})
    assert call(kv2, R, "config").data["delete_version_after"] == "-1s"
    assert call(kv2, U, "data/t", {"data": {}}).data["deletion_time"] == ""
    call(kv2, U, "config", {"delete_version_after": "0"})
    assert call(kv2, R, "config").data["delete_version_after"] == "0s"
    assert call(kv2, U, "data/t", {"data": {}}).data["deletion_time"] != ""


def test_v2_explicit_delete_overrides_a_future_deletion(kv2: KVv2, clock: StepClock) -> None:
    call(kv2, U, "metadata/t", {"delete_version_after": "1h"})
    call(kv2, U, "data/t", {"data": {}})
    call(kv2, D, "data/t")
    assert call(kv2, R, "data/t").status == 404
    assert call(kv2, R, "data/t").data["metadata"]["deletion_time"] < rfc3339(clock.now + SECOND)


# --------------------------------------------------------------------------- KV v2: config


def test_v2_config_read_write(kv2: KVv2) -> None:
    assert call(kv2, R, "config").data == {"cas_required": False, "delete_version_after": "0s", "max_versions": 0,
                                           "metadata_cas_required": False}
    written = call(kv2, U, "config", {"cas_required": True, "max_versions": 3, "delete_version_after": "90m"})
    assert written == Response()
    assert call(kv2, R, "config").data == {"cas_required": True, "delete_version_after": "1h30m0s",
                                           "max_versions": 3, "metadata_cas_required": False}
    assert call(kv2, U, "config", {}) == Response()
    assert call(kv2, U, "config", {"bogus": 1}) == Response()
    assert call(kv2, R, "config").data["max_versions"] == 3
    assert call(kv2, R, "config", query={"x": "1"}).warnings == ["Endpoint ignored these unrecognized parameters: [x]"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"max_versions": "abc"}, f'error converting input for field "max_versions": {INVALID_INT}'),
        ({"cas_required": "abc"}, "error converting input for field \"cas_required\": '' cannot parse value as "
                                  "'bool': strconv.ParseBool: invalid syntax"),
        ({"delete_version_after": "abc"}, 'error converting input for field "delete_version_after": '
                                          'time: invalid duration "abc"'),
    ],
)
def test_v2_config_errors(kv2: KVv2, body: dict[str, Any], message: str) -> None:
    assert_error(fails(kv2, U, "config", body), 400, "Field validation failed: " + message)


# --------------------------------------------------------------------------- KV v2: subkeys/


def test_v2_subkeys(kv2: KVv2) -> None:
    call(kv2, U, "data/s", {"data": {"a": {"b": {"c": {}}}, "l": [{"x": 1}], "n": None}})
    resp = call(kv2, R, "subkeys/s")
    assert set(resp.data) == {"metadata", "subkeys"} and set(resp.data["metadata"]) == VERSION_INFO_KEYS
    assert resp.data["subkeys"] == {"a": {"b": {"c": None}}, "l": None, "n": None}
    assert call(kv2, R, "subkeys/s", query={"depth": "2"}).data["subkeys"] == {"a": {"b": None}, "l": None, "n": None}
    assert call(kv2, R, "subkeys/s", query={"depth": "1"}).data["subkeys"] == {"a": None, "l": None, "n": None}
    assert call(kv2, R, "subkeys/s", query={"depth": "-1"}).data["subkeys"] == {"a": None, "l": None, "n": None}
    call(kv2, U, "data/s", {"data": {"z": 1}})
    assert call(kv2, R, "subkeys/s", query={"version": "1"}).data["subkeys"]["l"] is None
    assert call(kv2, R, "subkeys/s").data["subkeys"] == {"z": None}


def test_v2_subkeys_errors(kv2: KVv2) -> None:
    assert_error(fails(kv2, R, "subkeys/none"), 404)
    assert_error(fails(kv2, R, "subkeys/"), 404)
    call(kv2, U, "data/s", {"data": {"a": 1}})
    assert_error(fails(kv2, R, "subkeys/s", query={"version": "7"}), 404)
    assert_error(fails(kv2, R, "subkeys/s", query={"depth": "x", "version": "y"}), 400,
                 f'Field validation failed: error converting input for field "depth": {INVALID_INT}')
    call(kv2, D, "data/s")
    resp = call(kv2, R, "subkeys/s")
    assert resp.status == 404 and resp.data["subkeys"] is None and resp.data["metadata"]["deletion_time"]
    for op in (U, D, L):
        assert_error(fails(kv2, op, "subkeys/s", {"a": 1}), 405, "unsupported operation")


# --------------------------------------------------------------------------- KV v2: locking


def test_v2_every_read_modify_write_holds_the_key_lock() -> None:
    backing = LockRecordingStorage()
    engine = make("2", backing)
    call(engine, U, "config", {"max_versions": 2})
    write_versions(engine, "s/k", 3)
    call(engine, P, "data/s/k", {"data": {"p": 1}})
    call(engine, D, "data/s/k")
    for path in ("delete/s/k", "undelete/s/k", "destroy/s/k"):
        call(engine, U, path, {"versions": [4]})
    call(engine, U, "metadata/s/k", {"max_versions": 5})
    call(engine, P, "metadata/s/k", {"max_versions": 6})
    call(engine, D, "metadata/s/k")
    assert backing.writes and not backing.held
    for _kind, key, held in backing.writes:
        expected = PREFIX + ("config" if key == PREFIX + "config" else "meta/s/k")
        assert held == (expected,), (key, held)


def test_v2_concurrent_check_and_set_admits_one_writer_per_version() -> None:
    engine = make("2")
    results: list[int] = []
    errors: list[str] = []
    barrier = threading.Barrier(8)

    def writer(n: int) -> None:
        barrier.wait()
        try:
            results.append(call(engine, U, "data/race", {"data": {"n": n}, "options": {"cas": 0}}).data["version"])
        except VaultError as err:
            errors.extend(err.messages)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [1]
    assert errors == ["check-and-set parameter did not match the current version"] * 7
    assert call(engine, R, "metadata/race").data["current_version"] == 1


# --------------------------------------------------------------------------- KV v2: one change, one transaction


class TransactionLog:
    """What a real backend was asked to commit, one entry per call, with
    the keys stripped of the mount's prefix."""

    def __init__(self) -> None:
        self.calls: list[list[tuple[str, str]]] = []

    def record(self, ops: list[Op] | tuple[Op, ...]) -> None:
        self.calls.append([
            ("put" if isinstance(op, Put) else "delete", op.key.removeprefix(PREFIX)) for op in ops
        ])


class LoggedInmem(InmemStorage):
    def __init__(self) -> None:
        super().__init__()
        self.log = TransactionLog()

    def transaction(self, ops: Any) -> None:
        self.log.record(ops)
        super().transaction(ops)

    # inmem's transaction writes its dict directly: any put or delete seen
    # here is a write outside a transaction.
    def put(self, key: str, value: bytes) -> None:
        self.log.calls.append([("loose put", key.removeprefix(PREFIX))])
        super().put(key, value)

    def delete(self, key: str) -> None:
        self.log.calls.append([("loose delete", key.removeprefix(PREFIX))])
        super().delete(key)


class LoggedSqlite(SqliteStorage):
    def __init__(self, path: str) -> None:
        super().__init__(path, background_checkpoints=False)
        self.log = TransactionLog()

    def transaction(self, ops: Any) -> None:
        self.log.record(ops)
        super().transaction(ops)

    # sqlite's put is a one-op transaction (logged above); its delete is not.
    def delete(self, key: str) -> None:
        self.log.calls.append([("loose delete", key.removeprefix(PREFIX))])
        super().delete(key)


@pytest.fixture(params=["inmem", "sqlite"])
def logged(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[LoggedInmem | LoggedSqlite]:
    if request.param == "inmem":
        yield LoggedInmem()
        return
    backing = LoggedSqlite(str(tmp_path / "db"))
    yield backing
    backing.close()


def test_v2_each_logical_change_is_one_transaction(logged: LoggedInmem | LoggedSqlite) -> None:
    """A version and the metadata pointing at it, the versions a write
    prunes, a destroy's data deletes and a key's removal each go to the
    backend as one transaction (all or nothing on sqlite)."""
    engine = make("2", logged)
    engine.clock = StepClock()
    call(engine, U, "config", {"max_versions": 2})
    write_versions(engine, "s/k", 2)
    logged.log.calls.clear()
    call(engine, U, "data/s/k", {"data": {"i": 2}})
    call(engine, P, "data/s/k", {"data": {"p": 1}})
    call(engine, U, "destroy/s/k", {"versions": [3]})
    call(engine, U, "delete/s/k", {"versions": [4]})
    call(engine, U, "undelete/s/k", {"versions": [4]})
    call(engine, U, "metadata/s/k", {"max_versions": 5})
    call(engine, D, "metadata/s/k")
    assert logged.log.calls == [
        [("put", "versions/s/k/3"), ("put", "meta/s/k"), ("delete", "versions/s/k/1")],
        [("put", "versions/s/k/4"), ("put", "meta/s/k"), ("delete", "versions/s/k/2")],
        [("put", "meta/s/k"), ("delete", "versions/s/k/3")],
        [("put", "meta/s/k")],
        [("put", "meta/s/k")],
        [("put", "meta/s/k")],
        [("delete", "meta/s/k"), ("delete", "versions/s/k/3"), ("delete", "versions/s/k/4")],
    ]
    assert logged.get(PREFIX + "meta/s/k") is None and logged.list(PREFIX + "versions/") == []


def test_v2_a_failed_write_leaves_neither_version_nor_metadata(tmp_path: Any) -> None:
    """On sqlite the version and its metadata land together or not at all:
    a fault inside the database when the metadata row goes in (here a
    trigger standing for a full disk) rolls back the version row too, and
    the key reads as it did before."""
    backing = SqliteStorage(str(tmp_path / "db"), background_checkpoints=False)
    engine = make("2", backing)
    engine.clock = StepClock()
    call(engine, U, "data/k", {"data": {"v": 1}})
    before = raw(engine, "meta/k")
    conn = backing._conn()  # the engine's own connection to the real database
    conn.execute(
        "CREATE TEMP TRIGGER no_meta BEFORE INSERT ON kv WHEN NEW.key LIKE '%meta/k' "
        "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
    )
    err = fails(engine, U, "data/k", {"data": {"v": 2}})
    assert isinstance(err, StorageError) and err.status == 500
    conn.execute("DROP TRIGGER no_meta")
    assert raw(engine, "meta/k") == before
    assert backing.get(PREFIX + "versions/k/2") is None
    assert call(engine, R, "data/k").data["data"] == {"v": 1}
    assert call(engine, U, "data/k", {"data": {"v": 2}}).data["version"] == 2
    backing.close()


# --------------------------------------------------------------------------- input bounds (issue 9)

OVERFLOW = "multiplication of durations resulted in overflow, one operand may be too large"


@pytest.mark.parametrize("value", [100000000000000000, 9223372037, "99999999999999d", "106752d"])
def test_v2_metadata_refuses_delete_version_after_beyond_go(kv2: KVv2, value: object) -> None:
    call(kv2, U, "data/k", {"data": {"a": 1}})
    before = raw(kv2, "meta/k")
    assert_error(fails(kv2, U, "metadata/k", {"delete_version_after": value}), 400,
                 f'error converting input for field "delete_version_after": {OVERFLOW}')
    assert raw(kv2, "meta/k") == before
    assert call(kv2, U, "data/k", {"data": {"a": 2}}).data["version"] == 2


def test_v2_config_refuses_delete_version_after_beyond_go(kv2: KVv2) -> None:
    assert_error(fails(kv2, U, "config", {"delete_version_after": "99999999999999d"}), 400,
                 f'Field validation failed: error converting input for field "delete_version_after": {OVERFLOW}')
    assert raw(kv2, "config") is None


def test_v2_largest_delete_version_after_works(kv2: KVv2, clock: StepClock) -> None:
    call(kv2, U, "metadata/k", {"delete_version_after": 9223372036})
    written = call(kv2, U, "data/k", {"data": {"a": 1}}).data
    assert written["deletion_time"].startswith("2319-")  # T0 (2026) plus 292 years, as OpenBao shows
    assert call(kv2, R, "metadata/k").data["delete_version_after"] == "2562047h47m16s"


def test_v2_key_poisoned_before_the_bound_reads_again(kv2: KVv2) -> None:
    """A key whose metadata holds a huge ``delete_version_after`` (stored
    before durations were bounded) must not answer 500 for ever."""
    call(kv2, U, "data/k", {"data": {"a": 1}})
    meta = raw(kv2, "meta/k")
    meta["delete_version_after"] = 10**17
    kv2.storage.put("meta/k", json.dumps(meta).encode())
    written = call(kv2, U, "data/k", {"data": {"a": 2}}).data
    assert written["deletion_time"] == "9999-12-31T23:59:59.999999999Z"
    assert call(kv2, R, "data/k").data["data"] == {"a": 2}


def test_rfc3339_clamps_past_year_9999() -> None:
    assert rfc3339(10**30) == "9999-12-31T23:59:59.999999999Z"


@pytest.mark.parametrize("engine_version", [None, "2"])
@pytest.mark.parametrize("segment", ["a" * 255, "é" * 43, "_" + "a" * 253, "\ud800"])
def test_paths_storage_cannot_hold_are_400(engine_version: str | None, segment: str) -> None:
    engine = make(engine_version)
    prefix = "data/" if engine_version else ""
    for op, data in ((U, {"data": {"a": 1}} if engine_version else {"a": 1}), (R, None), (D, None)):
        err = fails(engine, op, f"{prefix}dir/{segment}", data)
        assert err.status == 400 and err.messages[0].startswith("invalid path")
    assert engine.storage.list("") == []


def test_a_segment_at_the_file_backends_limit_is_fine(kv2: KVv2) -> None:
    call(kv2, U, "data/" + "a" * 254, {"data": {"a": 1}})
    assert call(kv2, R, "data/" + "a" * 254).data["data"] == {"a": 1}


@pytest.mark.parametrize(("field", "value"), [("max_versions", 2**63), ("metadata_cas", 10**30)])
def test_v2_metadata_ints_beyond_int64_are_400(kv2: KVv2, field: str, value: int) -> None:
    err = fails(kv2, U, "metadata/k", {field: value})
    assert err.status == 400 and "value out of range" in err.messages[0]


def test_v2_cas_beyond_int64_is_400(kv2: KVv2) -> None:
    assert_error(fails(kv2, U, "data/k", {"data": {"a": 1}, "options": {"cas": 2**64}}), 400,
                 "error parsing check-and-set parameter")
