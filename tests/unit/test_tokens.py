"""The token store through the core: TTLs, children, limited uses."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from pathlib import Path

import pytest

from vaultd.core.core import Core, CoreSettings
from vaultd.core.lifecycle import InitRequest
from vaultd.core.seal_state import SharedSealState
from vaultd.core.tokens import TokenEntry
from vaultd.durations import human_duration
from vaultd.errors import BadRequest, PermissionDenied
from vaultd.logical import Operation
from vaultd.storage.base import Storage
from vaultd.storage.file import FileStorage
from vaultd.storage.inmem import InmemStorage


def _workers(storage: Storage, settings: CoreSettings | None = None) -> tuple[Core, Core, str]:
    """Two cores over one storage and one shared seal state: two gunicorn workers."""
    shared = SharedSealState.create(lock_memory=False)
    settings = settings or CoreSettings()
    first, second = Core(storage, shared, settings), Core(storage, shared, settings)
    result = first.init(InitRequest(secret_shares=1, secret_threshold=1))
    first.lifecycle.submit_share(bytes.fromhex(result["keys"][0]))
    return first, second, result["root_token"]


@pytest.fixture
def two_workers() -> tuple[Core, Core, str]:
    return _workers(InmemStorage())


@pytest.fixture
def file_workers(tmp_path: Path) -> tuple[Core, Core, str]:
    """As two_workers, over the file backend and its flock-striped locks."""
    return _workers(FileStorage(str(tmp_path / "data")))


def test_limited_use_tokens_are_revoked_after_their_last_use_in_any_worker(two_workers) -> None:
    first, second, root = two_workers
    token, entry = first.tokens.create(first.authenticate(root), {"num_uses": 3, "policies": ["default"]})
    assert entry.num_uses == 3
    first.check(token, "auth/token/lookup-self", Operation.READ)
    looked = second.check(token, "auth/token/lookup-self", Operation.READ)
    assert looked.num_uses == 1  # two used, one left
    first.check(token, "auth/token/lookup-self", Operation.READ)  # the last use still works
    for core in (first, second):
        with pytest.raises(PermissionDenied):
            core.authenticate(token)


def test_unlimited_tokens_are_not_counted(two_workers) -> None:
    first, _, root = two_workers
    token, _ = first.tokens.create(first.authenticate(root), {"policies": ["default"]})
    for _ in range(5):
        assert first.authenticate(token).num_uses == 0


def test_revoking_a_parent_revokes_its_children_but_not_orphans(two_workers) -> None:
    first, second, root = two_workers
    parent_token, parent = first.tokens.create(first.authenticate(root), {"policies": ["default"], "ttl": 3600})
    child_token, _ = first.tokens.create(parent, {"policies": ["default"], "ttl": 60})
    orphan_token, _ = first.tokens.create(first.authenticate(root), {"policies": ["default"], "no_parent": True})
    first.tokens.revoke(parent)
    for token in (parent_token, child_token):
        with pytest.raises(PermissionDenied):
            second.authenticate(token)
    assert second.authenticate(orphan_token).orphan


def test_a_child_never_outlives_its_parent(two_workers) -> None:
    first, _, root = two_workers
    _, parent = first.tokens.create(first.authenticate(root), {"policies": ["default"], "ttl": 60})
    _, child = first.tokens.create(parent, {"policies": ["default"], "ttl": 7200})
    assert child.expire_time is not None and parent.expire_time is not None
    assert child.expire_time <= parent.expire_time


def test_non_root_parents_cannot_mint_root_or_wider_tokens(two_workers) -> None:
    first, _, root = two_workers
    _, parent = first.tokens.create(first.authenticate(root), {"policies": ["default"]})
    with pytest.raises(PermissionDenied):
        first.tokens.create(parent, {"policies": ["root"]})
    with pytest.raises(PermissionDenied):
        first.tokens.create(parent, {"policies": ["admin"]})


def test_root_tokens_are_not_renewable(two_workers) -> None:
    first, _, root = two_workers
    with pytest.raises(BadRequest):
        first.tokens.renew(first.authenticate(root), 3600)


def test_one_http_request_spends_one_use(two_workers) -> None:
    """auth/token/* handlers check the token in a before_request gate and
    again in the handler: only one of the two may count."""
    from vaultd.api.app import create_app

    first, _, root = two_workers
    token, _ = first.tokens.create(first.authenticate(root), {"num_uses": 2, "policies": ["default"]})
    client = create_app(first).test_client()
    headers = {"X-Vault-Token": token}
    assert client.get("/v1/auth/token/lookup-self", headers=headers).status_code == 200
    assert client.get("/v1/auth/token/lookup-self", headers=headers).status_code == 200
    assert client.get("/v1/auth/token/lookup-self", headers=headers).status_code == 403


def test_tokens_are_stored_under_their_hmac_sha256_and_never_in_clear(two_workers) -> None:
    """The storage layout: changing how the id is hashed would orphan every
    token of an existing server."""
    first, _, root = two_workers
    salt = first.tokens.storage.get("salt")
    expected = hmac.new(salt, root.encode(), hashlib.sha256).hexdigest()
    for _ in range(2):  # the keyed state is reused, not consumed
        assert first.tokens.hash_token(root) == expected
    assert first.tokens.storage.get(f"id/{expected}") is not None
    names = first.physical.list("sys/token/id/")
    assert names == [expected]
    assert root.encode() not in first.physical.get(f"sys/token/id/{expected}")


# -- every change starts from the entry as stored now ---------------------------------


def _child(core: Core, parent: TokenEntry, **params: object) -> tuple[str, TokenEntry]:
    return core.tokens.create(parent, {"policies": ["default"], "ttl": 3600, **params})


def test_a_renewal_from_a_stale_entry_gives_no_spent_use_back(two_workers) -> None:
    first, second, root = two_workers
    token, _ = _child(first, first.authenticate(root), num_uses=5)
    stale = first.authenticate(token)  # 4 left, as this request saw it
    for _ in range(3):
        second.authenticate(token)  # another worker spends 3 more: 1 left
    renewed, _ = first.tokens.renew(stale, 600)
    assert renewed.num_uses == 1
    second.authenticate(token)  # the last use
    with pytest.raises(PermissionDenied):
        first.authenticate(token)


def test_a_renewal_from_a_stale_entry_keeps_children_made_since(two_workers) -> None:
    first, second, root = two_workers
    parent_token, _ = _child(first, first.authenticate(root), policies=["root"])
    stale = first.authenticate(parent_token)
    child_tokens = [_child(second, second.authenticate(parent_token))[0] for _ in range(3)]
    first.tokens.renew(stale, 600)
    second.tokens.revoke(second.authenticate(parent_token))
    for token in [parent_token, *child_tokens]:
        for core in (first, second):
            with pytest.raises(PermissionDenied):
                core.authenticate(token)


def test_a_renewal_cannot_bring_a_revoked_token_back(two_workers) -> None:
    first, second, root = two_workers
    token, _ = _child(first, first.authenticate(root))
    stale = first.authenticate(token)
    second.tokens.revoke(second.authenticate(token))
    with pytest.raises(PermissionDenied):
        first.tokens.renew(stale, 600)
    assert first.tokens.lookup(token) is None


def test_a_revoked_parent_mints_nothing(two_workers) -> None:
    first, second, root = two_workers
    parent_token, _ = _child(first, first.authenticate(root), policies=["root"])
    stale = first.authenticate(parent_token)
    second.tokens.revoke(second.authenticate(parent_token))
    with pytest.raises(BadRequest, match="no parent found"):
        _child(first, stale)
    assert first.tokens.storage.list("id/") == [first.tokens.hash_token(root)]


def test_a_child_whose_parent_entry_is_gone_is_dead(two_workers) -> None:
    """Validity follows the ancestor chain, not only the parent index: a
    child left behind (an older vaultd's lost index entry, a crash) dies."""
    first, second, root = two_workers
    _, parent = _child(first, first.authenticate(root), policies=["root"])
    child_token, child = _child(first, parent)
    grandchild_token, _ = _child(first, child)
    first.tokens.storage.delete(f"id/{parent.id_hash}")  # as if its revocation had lost the index
    for token in (child_token, grandchild_token):
        with pytest.raises(PermissionDenied):
            second.authenticate(token)
    assert first.tokens.storage.list("id/") == [first.tokens.hash_token(root)]


def test_a_child_dies_when_its_parent_expires_early(two_workers) -> None:
    """A parent renewed down to a short TTL expires before the expiry its
    child was capped to at creation: the child goes with it."""
    first, _, root = two_workers
    parent_token, parent = _child(first, first.authenticate(root), policies=["root"])
    child_token, _ = _child(first, parent)
    first.tokens.renew(first.authenticate(parent_token), 1)
    time.sleep(1.2)
    with pytest.raises(PermissionDenied):
        first.authenticate(child_token)


def test_revocation_takes_the_whole_tree_and_its_indexes(two_workers) -> None:
    first, _, root = two_workers
    _, parent = _child(first, first.authenticate(root), policies=["root"])
    _, child = _child(first, parent)
    _child(first, child)
    orphan_token, _ = _child(first, parent, no_parent=True)
    first.tokens.revoke(parent)
    store = first.tokens.storage
    hashed = first.tokens.hash_token
    assert sorted(store.list("id/")) == sorted([hashed(root), hashed(orphan_token)])
    assert store.list("parent/") == []
    assert len(store.list("accessor/")) == 2


def test_trees_from_older_entries_with_inline_children_are_revoked(two_workers) -> None:
    """vaultd used to keep the parent index in the parent's entry."""
    first, _, root = two_workers
    store = first.tokens
    _, parent = _child(first, first.authenticate(root), policies=["root"])
    child_token, child = _child(first, parent)
    store.storage.delete(f"parent/{parent.id_hash}/{child.id_hash}")
    legacy = store._load(parent.id_hash)
    assert legacy is not None
    legacy.children.append(child.id_hash)
    store._save(legacy)
    store.revoke(legacy)
    assert store.storage.get(f"id/{child.id_hash}") is None
    assert store.lookup(child_token) is None


@pytest.mark.parametrize("fixture", ["two_workers", "file_workers"])
def test_concurrent_creates_and_renewals_lose_no_child(request: pytest.FixtureRequest, fixture: str) -> None:
    """The issue's race, across threads of two workers: every child made
    while the parent renews itself dies with the parent."""
    first, second, root = request.getfixturevalue(fixture)
    parent_token, _ = _child(first, first.authenticate(root), policies=["root"])
    children: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(16)

    def create(core: Core) -> None:
        start.wait()
        try:
            for _ in range(3):
                children.append(_child(core, core.authenticate(parent_token))[0])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def renew(core: Core) -> None:
        start.wait()
        try:
            for _ in range(3):
                core.tokens.renew(core.authenticate(parent_token), 3600)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=create, args=((first, second)[i % 2],)) for i in range(8)]
    threads += [threading.Thread(target=renew, args=((second, first)[i % 2],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(children) == 24
    first.tokens.revoke(first.authenticate(parent_token))
    alive = [token for token in children if second.tokens.lookup(token) is not None]
    assert alive == []


@pytest.mark.parametrize("fixture", ["two_workers", "file_workers"])
def test_concurrent_uses_and_renewals_spend_each_use_once(request: pytest.FixtureRequest, fixture: str) -> None:
    first, second, root = request.getfixturevalue(fixture)
    token, _ = _child(first, first.authenticate(root), num_uses=10)
    answered: list[int] = []
    start = threading.Barrier(12)

    def work(core: Core, renew: bool) -> None:
        start.wait()
        for _ in range(3):
            try:
                entry = core.authenticate(token)
                answered.append(1)
                if renew:  # 403 when another thread spent the last use meanwhile
                    core.tokens.renew(entry, 600)
            except PermissionDenied:
                pass

    threads = [threading.Thread(target=work, args=((first, second)[i % 2], i % 3 == 0)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(answered) == 10
    assert first.tokens.lookup(token) is None


# -- a token's whole lifetime is capped ----------------------------------------------


@pytest.fixture
def short_max() -> tuple[Core, Core, str]:
    return _workers(InmemStorage(), CoreSettings(default_lease_ttl=4, max_lease_ttl=6))


def test_creation_caps_the_ttl_at_max_lease_ttl_with_vaults_warning(short_max) -> None:
    first, _, root = short_max
    _, entry, warnings = first.tokens.mint(first.authenticate(root), {"policies": ["default"], "ttl": 100})
    assert entry.ttl == 6
    assert warnings == ['TTL of "1m40s" exceeded the effective max_ttl of "6s"; TTL value is capped accordingly']
    _, _, warnings = first.tokens.mint(first.authenticate(root), {"policies": ["default"], "ttl": 5})
    assert warnings == []


def test_renewals_never_pass_creation_plus_max_lease_ttl(short_max) -> None:
    first, _, root = short_max
    token, created = first.tokens.create(first.authenticate(root), {"policies": ["default"]})
    deadline = created.creation_time + 6
    entry, warnings = first.tokens.renew(first.authenticate(token), 100)
    assert entry.expire_time is not None and entry.expire_time <= deadline
    assert len(warnings) == 1 and "exceeded the effective max_ttl" in warnings[0]
    again, _ = first.tokens.renew(first.authenticate(token), 0)  # the creation TTL, within the deadline too
    assert again.expire_time is not None and again.expire_time <= deadline


def test_explicit_max_ttl_caps_renewals_below_the_system_max(two_workers) -> None:
    first, _, root = two_workers
    token, created = first.tokens.create(
        first.authenticate(root), {"policies": ["default"], "ttl": 60, "explicit_max_ttl": 120}
    )
    entry, warnings = first.tokens.renew(first.authenticate(token), 3600)
    assert entry.expire_time == created.creation_time + 120
    assert warnings and '"1h"' in warnings[0]


def test_a_token_past_its_lifetime_is_not_renewed(two_workers) -> None:
    """An entry from before the cap (or a max_lease_ttl lowered since) whose
    lifetime is spent: revoked, as Vault cannot renew it either."""
    first, _, root = two_workers
    token, _ = _child(first, first.authenticate(root))
    store = first.tokens
    entry = store._load(store.hash_token(token))
    assert entry is not None
    entry.creation_time -= store.max_ttl + 10
    store._save(entry)
    with pytest.raises(PermissionDenied):
        store.renew(first.authenticate(token), 60)
    assert store.lookup(token) is None


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (6, "6s"), (60, "1m"), (100, "1m40s"), (3600, "1h"), (3601, "1h0m1s"), (3660, "1h1m"),
     (2764800, "768h")],
)
def test_durations_read_as_go_prints_them(seconds: int, text: str) -> None:
    assert human_duration(seconds) == text


# -- limited-use tokens mint nothing ----------------------------------------------------


@pytest.mark.parametrize("params", [{}, {"no_parent": True}])
def test_limited_use_tokens_cannot_create_tokens(two_workers, params: dict) -> None:
    first, _, root = two_workers
    token, _ = first.tokens.create(first.authenticate(root), {"policies": ["root"], "num_uses": 3})
    before = first.tokens.storage.list("id/")
    with pytest.raises(BadRequest, match=r"^restricted use token cannot generate child tokens$"):
        first.tokens.create(first.authenticate(token), {"policies": ["default"], **params})
    assert first.tokens.storage.list("id/") == before


def test_a_single_use_token_on_its_last_use_has_no_parent_left(two_workers) -> None:
    first, _, root = two_workers
    token, _ = first.tokens.create(first.authenticate(root), {"policies": ["root"], "num_uses": 1})
    with pytest.raises(BadRequest, match="parent token lookup failed: no parent found"):
        first.tokens.create(first.authenticate(token), {"policies": ["default"]})


def test_limited_use_tokens_cannot_mint_over_http(two_workers) -> None:
    from vaultd.api.app import create_app

    first, _, root = two_workers
    token, _ = first.tokens.create(first.authenticate(root), {"policies": ["root"], "num_uses": 5})
    client = create_app(first).test_client()
    for path in ("create", "create-orphan"):
        response = client.post(f"/v1/auth/token/{path}", json={}, headers={"X-Vault-Token": token})
        assert response.status_code == 400
        assert response.get_json() == {"errors": ["restricted use token cannot generate child tokens"]}
