"""The master's notifier asks for new workers after every seal (issue 9):
the callback the arbiter hangs on it fires once per seal, also for a seal
and an unseal that both fall between two polls, and never for an unseal."""

from __future__ import annotations

from vaultd.core.core import Core, CoreSettings
from vaultd.core.lifecycle import InitRequest
from vaultd.core.seal_state import SharedSealState
from vaultd.server import Notifier
from vaultd.storage.inmem import InmemStorage


def _setup() -> tuple[Core, Notifier, list[int], bytes]:
    shared = SharedSealState.create(lock_memory=False)
    core = Core(InmemStorage(), shared, CoreSettings())
    notifier = Notifier(shared, core, None, workers=4)
    seals: list[int] = []
    notifier.on_seal = lambda: seals.append(shared.generation)
    result = core.init(InitRequest(secret_shares=1, secret_threshold=1))
    return core, notifier, seals, bytes.fromhex(result["keys"][0])


def _unseal(core: Core, key: bytes) -> None:
    core.lifecycle.submit_share(key)
    assert core.shared.unsealed


def test_each_seal_asks_once_and_an_unseal_never() -> None:
    core, notifier, seals, key = _setup()
    notifier.poll_once()  # sealed from the start: nothing to replace
    _unseal(core, key)
    notifier.poll_once()
    notifier.poll_once()
    assert seals == []
    core.lifecycle.seal_now(by_operator=True)
    notifier.poll_once()
    notifier.poll_once()
    assert len(seals) == 1


def test_a_seal_and_unseal_between_two_polls_still_asks() -> None:
    core, notifier, seals, key = _setup()
    _unseal(core, key)
    notifier.poll_once()
    core.lifecycle.seal_now(by_operator=False)
    _unseal(core, key)
    notifier.poll_once()
    assert len(seals) == 1
    notifier.poll_once()
    assert len(seals) == 1


def test_an_unseal_and_seal_between_two_polls_asks() -> None:
    """Unsealed and sealed again before the notifier looked: the workers
    may have served plaintext meanwhile."""
    core, notifier, seals, key = _setup()
    notifier.poll_once()
    _unseal(core, key)
    core.lifecycle.seal_now(by_operator=True)
    notifier.poll_once()
    assert len(seals) == 1
