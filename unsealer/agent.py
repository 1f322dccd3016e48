"""The unsealer loop: watch the daemon, unseal each new run of it once.

Each look at the daemon is one *episode*, retried as a whole with capped
exponential backoff and jitter until it reaches an answer (unsealed, waiting
for init, sealed by an operator); the backoff starts afresh with the next
episode, so a short outage tomorrow is not met with today's long delays.

What heals is retried: the daemon not answering, KMS throttling or failing
inside, the network, the daemon restarting half-way.  The two are retried on
different scales: KMS is remote, metered and throttles, so it gets the
configured backoff (0.5 s doubling to 30 s by default); the daemon is a
local process that comes back within a second of a restart and costs
nothing to ask, so it is asked again after 50 ms, doubling to 100 ms.

Between episodes the agent waits ``poll_interval``, but it also watches the
keep-alive connection its last request left open: when the daemon stops,
that connection closes, and the next episode starts at once rather than at
the end of the interval.  Together these make a restarted daemon unsealed
about as soon as it listens.  What does not heal
(access denied, wrong key, disabled key) ends the agent with an exit code
from :mod:`unsealer.exitcodes` that systemd is told not to restart on, so
nothing hammers KMS or fills the journal.

Two rules come from operators' complaints about sidecar unsealers: the agent
never initialises a daemon, and it never unseals a run of the daemon that an
operator sealed (the ``boot_id`` tells runs apart; a restart is a new run).

During a seal migration (the daemon's state says ``migration``) the agent
follows Vault's rule that nothing auto-unseals, with the exceptions the
daemon needs: from shamir it stands aside (one journald entry per run of
the daemon) and keeps watching, to unseal the next run once the operators
have completed the move; from awskms it unwraps with the old, disabled
stanza's key and hands it over (to shamir the daemon holds it until the
recovery keys come; from key A to key B the daemon re-wraps it and unseals).
Once the daemon uses shamir and this agent's only stanza is the disabled
one, it has nothing left to do: it says so and exits 0, which systemd's
``Restart=on-failure`` does not restart.
"""

from __future__ import annotations

import enum
import logging
import select
import socket
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Protocol

import tenacity

from unsealer import exitcodes
from unsealer.client import DaemonClient, DaemonRefused, DaemonState, DaemonUnavailable, wipe
from unsealer.metrics import AgentMetrics
from unsealer.settings import AgentSettings
from vaultd.agent_channel import UntrustedPeer
from vaultd.logging import log_event
from vaultd.seal.base import SealError, StoredKey

log = logging.getLogger("vaultd.unsealer")


class Unwrapper(Protocol):
    """What the agent needs of a seal stanza: in production a
    :class:`~unsealer.kms_process.KmsProcess` (the AWS SDK in a child that
    lives for one episode), in tests also an
    :class:`~vaultd.seal.awskms.AwsKmsSeal` in this process."""

    type: str

    def unwrap(self, stored: StoredKey) -> bytes | bytearray: ...

    def warm(self) -> None: ...

    def rest(self) -> None: ...


class Outcome(enum.Enum):
    UNSEALED = "unsealed"
    """This episode unsealed the daemon."""
    ALREADY_UNSEALED = "already unsealed"
    UNINITIALIZED = "uninitialized"
    SEALED_BY_OPERATOR = "sealed by operator"
    MIGRATION_PENDING = "seal migration pending"
    """A seal migration waits for the operators' keys; the agent stands aside."""
    STOPPED = "stopped"


class AgentExit(Exception):
    """End the agent with ``code``; the message is logged at ERROR."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class StandAside(Exception):
    """The daemon no longer uses this agent's (disabled) seal: exit 0."""


class BootChanged(Exception):
    """The daemon restarted between reading its state and submitting the key."""


class _Stopping(Exception):
    pass


def backoff_wait(initial: float, cap: float) -> tenacity.wait.wait_base:
    """"Equal jitter": attempt n waits between d/2 and d, d = min(cap,
    initial * 2**(n-1)).  Never above the cap, never zero, and two agents
    (or an agent and KMS's own throttle window) do not stay in step."""
    half_initial, half_cap = initial / 2, cap / 2
    return tenacity.wait_exponential(multiplier=half_initial, max=half_cap) + tenacity.wait_random_exponential(
        multiplier=half_initial, max=half_cap
    )


DAEMON_RETRY_INITIAL = 0.05
"""Seconds before asking an unreachable daemon again (upper bound, doubling)."""
DAEMON_RETRY_CAP = 0.1
"""The most the agent waits between two looks at a daemon that is down."""
STOP_CHECK = 0.25
"""How long one wait on the watched connection lasts before the stop flag is
looked at again."""


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, SealError):
        return not exc.permanent
    return isinstance(exc, (DaemonUnavailable, BootChanged))


class Agent:
    def __init__(
        self,
        client: DaemonClient,
        seal: Unwrapper,
        settings: AgentSettings,
        *,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        metrics: AgentMetrics | None = None,
        old_seal: Unwrapper | None = None,
        retired: bool = False,
    ) -> None:
        """``old_seal``: the stanza marked ``disabled`` beside an enabled one
        (a migration between KMS keys); ``retired``: ``seal`` itself is
        marked ``disabled`` (a migration to shamir)."""
        self.client = client
        self.old_seal = old_seal
        self.retired = retired
        self.metrics = metrics or AgentMetrics(None)
        self.seal = seal
        self.settings = settings
        self.stop_event = stop or threading.Event()
        self._clock = clock
        self._boot_id: str | None = None
        self._sealed_since: float | None = None
        self._said_uninitialized = False
        self._said_operator = False
        self._said_unsealed = False
        self._said_migration = False
        self.attempts = 0
        """KMS-or-daemon attempts made so far, for tests and status."""

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> int:
        """Watch until stopped (exit 0) or a permanent error (its exit code)."""
        log.info("watching %s (seal %s)", self.client.address, self.seal.type)
        try:
            while not self.stop_event.is_set():
                self.run_episode()
                self._pause()
        except StandAside as exc:
            log_event(log, "unsealer_stood_aside", "%s; exiting (code 0): remove the disabled seal stanza from the "
                      "config once the migration is done", exc, seal_migration_from=self.seal.type,
                      seal_migration_to="shamir", boot_id=self._boot_id)
            return exitcodes.OK
        except AgentExit as exc:
            name = exitcodes.NAMES.get(exc.code, "?")
            self.metrics.exiting(name)
            log_event(log, "unseal_failed", "%s; exiting with code %d (%s)", exc, exc.code, name,
                      exit_code=exc.code, exit_name=name)
            return exc.code
        log.info("stopping")
        return exitcodes.OK

    def run_episode(self) -> Outcome:
        """Look at the daemon once and do what its state asks, retrying what
        can heal.  Raises :class:`AgentExit` for what cannot."""
        retrying = tenacity.Retrying(
            wait=_EpisodeWaits(self.settings),
            retry=tenacity.retry_if_exception(is_retryable),
            stop=lambda _state: self.stop_event.is_set(),
            sleep=self._sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            outcome = retrying(self._attempt)
            self.metrics.healthy()
            return outcome
        except _Stopping:
            return Outcome.STOPPED
        except UntrustedPeer as exc:
            # Before any key left: whoever is at the other end is not the daemon.
            log_event(log, "agent_channel_refused", "refusing the daemon's socket: %s", exc,
                      level=logging.ERROR, peer_side="daemon", address=self.client.address)
            raise AgentExit(exitcodes.UNTRUSTED_DAEMON, f"the agent socket is not trustworthy: {exc}") from None
        except (DaemonUnavailable, BootChanged, SealError):
            if self.stop_event.is_set():
                return Outcome.STOPPED
            raise
        finally:
            # However it ended, nothing is unwrapped before the next episode:
            # a KmsProcess ends its child and the SDK's memory goes with it.
            self.seal.rest()
            if self.old_seal is not None:
                self.old_seal.rest()

    # --- one attempt ------------------------------------------------------------

    def _attempt(self) -> Outcome:
        if self.stop_event.is_set():
            raise _Stopping
        self.attempts += 1
        try:
            state = self.client.state()
        except DaemonUnavailable:
            # Down, or restarting: a restarted daemon wants its key as soon as
            # it listens, so the KMS helper starts now, alongside it.
            self.seal.warm()
            raise
        self._observe(state)
        if not state.initialized:
            level = logging.DEBUG if self._said_uninitialized else logging.INFO
            log.log(level, "daemon is not initialised; waiting (the agent never initialises it)")
            self._said_uninitialized = True
            return Outcome.UNINITIALIZED
        if state.migration:
            return self._migration(state)
        if state.seal_type == "shamir" and self.retired:
            raise StandAside(f"the daemon (boot {state.boot_id}) has moved to the shamir seal and this agent's "
                             f"seal {self.seal.type!r} is disabled: there is nothing left for it to unseal")
        if state.seal_type != self.seal.type:
            raise AgentExit(
                exitcodes.CONFIG,
                f"the daemon uses the {state.seal_type!r} seal, this agent unwraps {self.seal.type!r} only",
            )
        if not state.sealed:
            if not self._said_unsealed:
                log.info("daemon (boot %s) is unsealed", state.boot_id)
                self._said_unsealed = True
            return Outcome.ALREADY_UNSEALED
        if state.sealed_by_operator:
            self._warn_operator(state)
            return Outcome.SEALED_BY_OPERATOR
        if self._sealed_since is None:
            self._sealed_since = self._clock()
        return self._unseal(state)

    def _migration(self, state: DaemonState) -> Outcome:
        """What a daemon in seal migration mode needs from the agent."""
        if not state.sealed:
            return Outcome.ALREADY_UNSEALED
        if state.migration_from == "shamir" or state.migration_key_held:
            if not self._said_migration:
                if state.migration_from == "shamir":
                    how = ("operators complete it with operator unseal -migrate and the unseal keys; the agent "
                           "unseals the daemon's next run")
                else:
                    how = "operators complete it with operator unseal -migrate and the recovery keys"
                log_event(log, "unsealer_stood_aside", "the daemon (boot %s) is migrating from the %s seal to %s: "
                          "not unsealing it; %s", state.boot_id, state.migration_from, state.migration_to, how,
                          seal_migration_from=state.migration_from, seal_migration_to=state.migration_to,
                          boot_id=state.boot_id)
                self._said_migration = True
            return Outcome.MIGRATION_PENDING
        if self._sealed_since is None:
            self._sealed_since = self._clock()
        return self._unseal(state)

    def _seals(self, state: DaemonState) -> list[Unwrapper]:
        """The seals to unwrap with, in order: during a migration away from
        awskms the old (disabled) one first; otherwise the enabled one.  The
        other one is the fallback when KMS says the key does not fit (a
        crash right after the switch, an alias that could not be matched)."""
        seals = [self.old_seal, self.seal] if state.migration else [self.seal, self.old_seal]
        return [seal for seal in seals if seal is not None]

    def _unwrap(self, state: DaemonState, stored: StoredKey) -> bytearray:
        seals = self._seals(state)
        for index, seal in enumerate(seals):
            self.metrics.kms_call()
            try:
                plaintext = seal.unwrap(stored)
                # A KmsProcess answers in a bytearray already: copying it
                # would leave a copy nobody wipes.
                return plaintext if isinstance(plaintext, bytearray) else bytearray(plaintext)
            except SealError as exc:
                self.metrics.kms_error(exc.code)
                if exc.permanent and exc.code in exitcodes.WRONG_KEY_CODES and index + 1 < len(seals):
                    log.info("the stored key does not unwrap with %s (%s); trying the other seal stanza",
                             getattr(seal, "kms_key_id", seal.type), exc.code)
                    continue
                if exc.permanent:
                    log_event(log, "kms_error", "KMS refused to unwrap the stored key (%s)", exc.code,
                              level=logging.ERROR, kms_error_code=exc.code, attempt=self.attempts, permanent=True)
                    raise AgentExit(
                        exitcodes.for_seal_error(exc),
                        f"KMS refused to unwrap the stored key ({exc.code}): {exc}",
                    ) from None
                raise
        raise AgentExit(exitcodes.CONFIG, "no seal stanza to unwrap with")

    def _unseal(self, state: DaemonState) -> Outcome:
        try:
            stored = self.client.stored_key()
        except DaemonRefused as exc:
            if exc.status == 403:
                raise AgentExit(
                    exitcodes.CONFIG, f"the daemon refuses the stored key to this agent ({exc})"
                ) from None
            # Initialised a moment ago, restarted, or re-sealed: look again.
            raise DaemonUnavailable(str(exc)) from None
        kek = self._unwrap(state, stored)
        try:
            status = self.client.unseal(kek, state.boot_id)
        except DaemonRefused as exc:
            return self._after_refusal(state, exc)
        finally:
            wipe(kek)
        if status.get("sealed") is not False and state.migration and state.migration_to == "shamir":
            log.info("handed the disabled %s seal's key to the daemon (boot %s) for its migration to shamir",
                     state.migration_from, state.boot_id)
            return Outcome.MIGRATION_PENDING
        if status.get("sealed") is not False:
            raise DaemonUnavailable("the daemon accepted the key but still reports sealed")
        took = self._clock() - (self._sealed_since or self._clock())
        self.metrics.unsealed(took)
        log.info("unsealed the daemon (boot %s) in %.3f s since it was first seen sealed", state.boot_id, took)
        self._said_unsealed = True
        return Outcome.UNSEALED

    def _after_refusal(self, state: DaemonState, refusal: DaemonRefused) -> Outcome:
        """The daemon said no: a restart, an operator, or a wrong key; its
        state tells which without parsing its message."""
        now = self.client.state()
        if now.boot_id != state.boot_id:
            self._observe(now)
            raise BootChanged(f"the daemon restarted (boot {state.boot_id} -> {now.boot_id})")
        if not now.sealed:
            return Outcome.ALREADY_UNSEALED
        if now.sealed_by_operator:
            self._warn_operator(now)
            return Outcome.SEALED_BY_OPERATOR
        raise AgentExit(exitcodes.WRONG_KEY, f"the daemon rejected the key KMS returned ({refusal})")

    # --- bookkeeping ----------------------------------------------------------

    def _observe(self, state: DaemonState) -> None:
        if state.boot_id == self._boot_id:
            return
        if self._boot_id is None:
            log.info("found the daemon (boot %s)", state.boot_id)
        else:
            log.info("the daemon restarted (boot %s, was %s)", state.boot_id, self._boot_id)
        self._boot_id = state.boot_id
        self._sealed_since = None
        self._said_uninitialized = False
        self._said_operator = False
        self._said_unsealed = False
        self._said_migration = False

    def _warn_operator(self, state: DaemonState) -> None:
        if not self._said_operator:
            log.warning(
                "the daemon (boot %s) was sealed by an operator: not unsealing it until it restarts",
                state.boot_id,
            )
            self._said_operator = True

    def _sleep(self, seconds: float) -> None:
        self.stop_event.wait(seconds)

    def _pause(self) -> None:
        """Wait ``poll_interval`` before the next look, or less: until the
        daemon closes the connection the last look left open (it stopped or
        is restarting), or until the agent is stopped."""
        deadline = self._clock() + self.settings.poll_interval
        sock = self.client.idle_socket()
        watch: select.poll | None = None
        if sock is not None:
            # poll, not select: select cannot take descriptors above 1023.
            watch = select.poll()
            try:
                watch.register(sock, select.POLLIN | select.POLLHUP | select.POLLERR)
            except (OSError, ValueError):  # closed under us: look now
                return
        while not self.stop_event.is_set():
            remaining = deadline - self._clock()
            if remaining <= 0:
                return
            if watch is None:
                self.stop_event.wait(min(remaining, STOP_CHECK))
                continue
            if watch.poll(min(remaining, STOP_CHECK) * 1000):
                if _peer_closed(sock):
                    return  # the daemon stopped; the client reconnects next time
                # Bytes the daemon sent unasked (a TLS record, say): not a
                # close.  Wait out the interval rather than spin on them.
                watch = None

    def _log_retry(self, retry_state: tenacity.RetryCallState) -> None:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        delay = retry_state.next_action.sleep if retry_state.next_action else 0.0
        if not isinstance(exc, BootChanged):
            self.metrics.retry("kms" if isinstance(exc, SealError) else "daemon")
        if isinstance(exc, BootChanged):
            level, cause = logging.INFO, str(exc)
        elif isinstance(exc, SealError):
            log_event(log, "kms_error", "attempt %d failed: KMS not available (%s): %s; retrying in %.2f s",
                      retry_state.attempt_number, exc.code, exc, delay, kms_error_code=exc.code,
                      attempt=retry_state.attempt_number, retry_delay_sec=delay, permanent=False)
            return
        else:
            # Asked every 50-100 ms while it is down: say so at the first
            # failures and then at attempts 4, 8, 16..., not ten times a second.
            n = retry_state.attempt_number
            level = logging.WARNING if n & (n - 1) == 0 else logging.DEBUG
            cause = f"daemon not available: {exc}"
        log.log(level, "attempt %d failed: %s; retrying in %.2f s", retry_state.attempt_number, cause, delay)


def _peer_closed(sock: socket.socket) -> bool:
    """Whether the other end closed ``sock``, without consuming anything.
    Peeks at the raw TCP stream, below TLS, which is enough to tell an
    end-of-stream from bytes waiting."""
    try:
        return socket.socket.recv(sock, 1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


class _EpisodeWaits:
    """tenacity ``wait`` for one episode: each kind of failure on its own
    schedule, counted separately, so a daemon that took a while to come up
    does not make the first KMS retry wait as if KMS had failed as often."""

    def __init__(self, settings: AgentSettings) -> None:
        self._kms = backoff_wait(settings.initial_backoff, settings.max_backoff)
        self._daemon = backoff_wait(
            min(DAEMON_RETRY_INITIAL, settings.initial_backoff), min(DAEMON_RETRY_CAP, settings.max_backoff)
        )
        self._failures = {"kms": 0, "daemon": 0}

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        kind = "kms" if isinstance(exc, SealError) else "daemon"
        self._failures[kind] += 1
        schedule = self._kms if kind == "kms" else self._daemon
        # tenacity's waits read only attempt_number from the state.
        return float(schedule(SimpleNamespace(attempt_number=self._failures[kind])))  # type: ignore[arg-type]
