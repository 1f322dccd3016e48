"""The token store through the core: TTLs, children, limited uses."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from vaultd.core.core import Core, CoreSettings
from vaultd.core.lifecycle import InitRequest
from vaultd.core.seal_state import SharedSealState
from vaultd.errors import BadRequest, PermissionDenied
from vaultd.logical import Operation
from vaultd.storage.inmem import InmemStorage


@pytest.fixture
def two_workers() -> tuple[Core, Core, str]:
    storage, shared = InmemStorage(), SharedSealState.create(lock_memory=False)
    first, second = Core(storage, shared, CoreSettings()), Core(storage, shared, CoreSettings())
    result = first.init(InitRequest(secret_shares=1, secret_threshold=1))
    first.lifecycle.submit_share(bytes.fromhex(result["keys"][0]))
    return first, second, result["root_token"]


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
