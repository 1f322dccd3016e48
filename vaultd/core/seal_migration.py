"""Seal migration: shamir -> awskms, awskms -> shamir, awskms key A -> key B.

As in Vault, a migration is asked for in the config and completed by an
unseal: the operator adds a ``seal "awskms"`` stanza to a shamir server (or
marks the stanza ``disabled = "true"``, or puts a new stanza beside the old,
disabled one) and restarts.  The daemon compares the stored seal with the
configured one (:func:`detect`) and, when they differ, is in *migration
mode*: ``seal-status`` says ``migration: true``, nothing auto-unseals, and a
plain unseal is refused.  What completes it:

shamir -> awskms
    ``operator unseal -migrate`` with the unseal keys.  The combined key
    opens the root key; a fresh KEK is made, wrapped with ``kms:Encrypt``
    (the daemon's right) and stored; the root key is re-encrypted under it;
    the old unseal shares become the recovery keys (their verifiers and a
    check of the combined key are kept, so generate-root and rekey accept
    them).  A fresh KEK rather than the old one, because the old shares must
    not go on unsealing: recovery keys authorise, they do not unseal.

awskms -> shamir
    The daemon may not call ``kms:Decrypt``, and without break-glass the
    recovery key opens nothing: it is only checked against a hash.  So the
    agent, whose config keeps the old stanza (disabled), still unwraps the
    stored key and hands it over as at every start; in migration mode the
    daemon does not unseal with it but keeps the root key it opens in the
    shared, locked seal state and stays sealed.  A quorum of recovery keys
    given with ``-migrate`` then authorises the switch: the root key is
    re-encrypted under the recovery key itself, so the recovery shares are
    from then on the unseal shares (Vault's outcome), and the stored key is
    deleted.  Re-splitting the agent's KEK into new shares was the other
    choice; it would hand out new keys nobody asked for, and the issue wants
    the recovery keys to become the unseal keys.  With break-glass the
    recovery key *is* the KEK, so no agent is needed.

awskms key A -> key B
    No operator keys (the issue's rule; Vault asks for recovery keys here):
    the agent unwraps with A (its config lists both stanzas), the daemon
    wraps the same KEK with B and stores it.  If B cannot wrap, the daemon
    still unseals with A's key and logs the failure; the next start retries.

Crash safety: every switch is one :meth:`Storage.transaction` whose first
operation writes a redo record (:data:`PENDING`, every operation that
follows) and whose last removes it.  On sqlite the whole is one SQLite
transaction, so the record is never seen.  On the file backend, whose
transactions are applied one operation at a time, a ``kill -9`` part-way
leaves the record, and :func:`recover` (run before anything reads the seal
config) replays it: the store is in the old state until the record is
durable and in the new one from then on, never between.  Before the switch
nothing is written at all (unseal progress and the held root key live in
memory only), so a crash there leaves the old seal working.
"""

from __future__ import annotations

import base64
import dataclasses
import hmac
import json
import logging
from dataclasses import dataclass
from typing import Any

from vaultd.core.lifecycle import (
    ROOT_KEY,
    SEAL_CONFIG,
    STORED_KEY,
    Lifecycle,
    SealConfig,
    _record_recovery_hash,
    is_known_share,
    is_recovery_key,
)
from vaultd.core.seal_state import CEREMONY_SEAL_MIGRATION, EPOCH_INIT
from vaultd.crypto import aead, shamir
from vaultd.errors import BadRequest
from vaultd.logging import log_event
from vaultd.seal.base import AutoSeal, SealError, StoredKey
from vaultd.storage.base import Delete, Op, Put, Storage

log = logging.getLogger("vaultd.core")

PENDING = "core/seal-migration"
"""The redo record of a switch under way (see the module docstring)."""

SHAMIR_TO_AUTO = "shamir-to-auto"
AUTO_TO_SHAMIR = "auto-to-shamir"
AUTO_TO_AUTO = "auto-to-auto"

_CONTEXT_KEY = "vaultd:cluster_id"


@dataclass(frozen=True)
class Migration:
    """A migration the config asks for and the store has not had yet."""

    from_type: str
    to_type: str

    @property
    def kind(self) -> str:
        if self.from_type == "shamir":
            return SHAMIR_TO_AUTO
        return AUTO_TO_SHAMIR if self.to_type == "shamir" else AUTO_TO_AUTO


def seal_key_id(seal: AutoSeal | None) -> str:
    """The key the seal wraps with, as configured (for awskms, ``kms_key_id``)."""
    return str(getattr(seal, "kms_key_id", "") or "")


def _wrapped_by(config: SealConfig, seal: AutoSeal, stored_key_id: str) -> bool:
    """Whether the stored key was wrapped by ``seal``'s key, judged without
    KMS: by the configured key id recorded at the last wrap, else (servers
    initialised before it was recorded) by the ARN KMS returned then.  An
    alias cannot be matched to an ARN offline; it counts as "not yet", which
    is safe: the agent falls back to the new key and the daemon re-wraps."""
    want = seal_key_id(seal)
    if config.seal_key_id:
        return hmac.compare_digest(config.seal_key_id, want)
    return bool(want) and (stored_key_id == want or stored_key_id.endswith(("/" + want, ":" + want)))


def detect(config: SealConfig, seal: AutoSeal | None, disabled_seal_type: str, stored_key_id: str) -> Migration | None:
    """The migration the config asks for, or None.  ``seal`` is the enabled
    auto seal (None: shamir), ``disabled_seal_type`` the type of a stanza
    marked ``disabled`` ("" if none).  A finished migration whose config
    still names the old seal (disabled) is not one: the stored seal already
    is the configured one."""
    stored = config.type
    if seal is None:
        if stored != "shamir" and disabled_seal_type == stored:
            return Migration(stored, "shamir")
        return None
    if stored == "shamir":
        return Migration("shamir", seal.type)
    if stored == seal.type and disabled_seal_type == stored and not _wrapped_by(config, seal, stored_key_id):
        return Migration(stored, seal.type)
    return None


def quorum(config: SealConfig, migration: Migration) -> tuple[int, int]:
    """(shares, threshold) of the keys that authorise the migration: the
    unseal keys leaving shamir, the recovery keys leaving awskms, none
    between two KMS keys."""
    if migration.kind == SHAMIR_TO_AUTO:
        return config.secret_shares, config.secret_threshold
    if migration.kind == AUTO_TO_SHAMIR:
        return config.recovery_shares, config.recovery_threshold
    return 0, 0


# -- the redo record -----------------------------------------------------------


def commit(physical: Storage, ops: list[Op]) -> None:
    """Apply ``ops`` as one transaction framed by the redo record."""
    record = json.dumps(
        [
            {"put": op.key, "value": base64.b64encode(op.value).decode()} if isinstance(op, Put) else {"delete": op.key}
            for op in ops
        ]
    ).encode()
    physical.transaction([Put(PENDING, record), *ops, Delete(PENDING)])


def recover(physical: Storage) -> bool:
    """Finish a switch a crash interrupted (file backend); True if one was."""
    blob = physical.get(PENDING)
    if blob is None:
        return False
    ops: list[Op] = []
    for entry in json.loads(blob):
        if "put" in entry:
            ops.append(Put(str(entry["put"]), base64.b64decode(entry["value"])))
        else:
            ops.append(Delete(str(entry["delete"])))
    physical.transaction([*ops, Delete(PENDING)])
    log.warning("finished a change of seal or keys (a seal migration or a rekey) that a crash interrupted "
                "(replayed %d writes)", len(ops))
    return True


def announce(lifecycle: Lifecycle) -> None:
    """Say at start that the daemon is in migration mode, and why."""
    migration = lifecycle.migration()
    if migration is None:
        return
    if migration.kind == AUTO_TO_AUTO:
        how = "the unsealer agent completes it (it unwraps with the disabled seal's key)"
    elif migration.kind == SHAMIR_TO_AUTO:
        how = "complete it with operator unseal -migrate and the unseal keys"
    else:
        how = "the agent hands over the old key; complete it with operator unseal -migrate and the recovery keys"
    log_event(log, "seal_migration_pending", "seal migration mode: stored seal %s, configured seal %s; %s",
              migration.from_type, migration.to_type, how, seal_migration_from=migration.from_type,
              seal_migration_to=migration.to_type, boot_id=lifecycle.shared.boot_id)


def key_held(lifecycle: Lifecycle) -> bool:
    with lifecycle.shared.locked():
        return lifecycle.shared.ceremony(CEREMONY_SEAL_MIGRATION) is not None


# -- operator keys (sys/unseal with migrate=true) --------------------------------


def submit_share(lifecycle: Lifecycle, config: SealConfig, migration: Migration | None, key: bytes,
                 migrate: bool) -> None:
    """One key share towards a migration (Vault's messages for the misuses)."""
    if migration is None:
        raise BadRequest("can't perform a seal migration, no migration seal found")
    if lifecycle.shared.unsealed:
        return
    if not migrate:
        raise BadRequest("migrate option not provided and seal migration is pending")
    if migration.kind == AUTO_TO_AUTO:
        raise BadRequest("a migration between two awskms keys takes no keys: the unsealer agent completes it "
                         "(it unwraps with the disabled seal's key, the daemon wraps with the new one)")
    shares, threshold = quorum(config, migration)
    expected = 32 if shares == 1 else 33
    if len(key) != expected:
        raise BadRequest(f"invalid key: expected {expected} bytes, got {len(key)}")
    if shares > 1 and not is_known_share(config, key):
        raise BadRequest("invalid key: this key share does not belong to this server")
    if migration.kind == AUTO_TO_SHAMIR and not config.break_glass:
        if not config.recovery_hash:
            raise BadRequest("this server was initialised before vaultd kept a check of its recovery key, so the "
                             "recovery keys cannot authorise a migration; rekey the recovery keys first")
        if not key_held(lifecycle):
            raise BadRequest('the unsealer agent has not handed over the key of the disabled seal "awskms" yet: '
                             "keep that stanza (disabled) in the agent's config and let it run, then submit the "
                             "recovery keys again")
    shared = lifecycle.shared
    with shared.locked():
        if shared.unsealed:
            return
        parts = shared.parts()
        if any(hmac.compare_digest(p, key) for p in parts):
            raise BadRequest("this key share was already submitted in this unseal attempt")
        shared.add_part(key)
        parts.append(key)
        if len(parts) < threshold:
            return
        shared.reset_progress()
    secret = key if shares == 1 else shamir.combine(parts)
    with lifecycle.physical.lock("core/init"):
        if lifecycle.physical.get(SEAL_CONFIG) != config.to_json():
            raise BadRequest("the seal configuration changed during the migration; look at seal-status again")
        if migration.kind == SHAMIR_TO_AUTO:
            _shamir_to_auto(lifecycle, config, migration, secret)
        else:
            _auto_to_shamir(lifecycle, config, migration, secret)


def _open_root_key(lifecycle: Lifecycle, migration: Migration, kek: bytes) -> bytes:
    blob = lifecycle.physical.get(ROOT_KEY)
    try:
        if blob is None:
            raise aead.AuthenticationError("no root key")
        return aead.decrypt(kek, blob, ROOT_KEY.encode())
    except (aead.AuthenticationError, ValueError):
        _failed(lifecycle, migration, "the keys given do not make this server's key")
        raise BadRequest("Error unsealing: the key does not decrypt this server's root key; the seal migration "
                         "did not start") from None


def _failed(lifecycle: Lifecycle, migration: Migration, why: str, code: str = "") -> None:
    log_event(log, "seal_migration_failed", "seal migration %s -> %s failed: %s; nothing was changed",
              migration.from_type, migration.to_type, why, seal_migration_from=migration.from_type,
              seal_migration_to=migration.to_type, kms_error_code=code or None, boot_id=lifecycle.shared.boot_id)


def _wrap(lifecycle: Lifecycle, config: SealConfig, migration: Migration, kek: bytes) -> StoredKey:
    seal = lifecycle.seal
    assert seal is not None
    try:
        seal.describe_key()
        return seal.wrap(kek, {_CONTEXT_KEY: config.cluster_id})
    except SealError as exc:
        _failed(lifecycle, migration, f"the {seal.type} seal could not wrap the unseal key ({exc.code})", exc.code)
        raise BadRequest(f"seal migration failed: the {seal.type} seal could not wrap the unseal key: {exc}") from None


def _shamir_to_auto(lifecycle: Lifecycle, config: SealConfig, migration: Migration, old_kek: bytes) -> None:
    root_key = _open_root_key(lifecycle, migration, old_kek)
    kek = aead.generate_key()
    stored = _wrap(lifecycle, config, migration, kek)
    new = SealConfig(
        type=migration.to_type,
        secret_shares=1,
        secret_threshold=1,
        recovery_shares=config.secret_shares,
        recovery_threshold=config.secret_threshold,
        break_glass=False,
        cluster_id=config.cluster_id,
        cluster_name=config.cluster_name,
        share_salt=config.share_salt,
        share_hashes=list(config.share_hashes),
        seal_key_id=seal_key_id(lifecycle.seal),
    )
    _record_recovery_hash(new, old_kek)
    commit(lifecycle.physical, [
        Put(STORED_KEY, stored.to_json()),
        Put(ROOT_KEY, aead.encrypt(kek, root_key, ROOT_KEY.encode())),
        Put(SEAL_CONFIG, new.to_json()),
    ])
    _completed(lifecycle, migration, root_key)


def _auto_to_shamir(lifecycle: Lifecycle, config: SealConfig, migration: Migration, recovery_key: bytes) -> None:
    if config.break_glass:
        root_key = _open_root_key(lifecycle, migration, recovery_key)
    else:
        if not is_recovery_key(config, recovery_key):
            _failed(lifecycle, migration, "the recovery key shares given do not make the recovery key")
            raise BadRequest("seal migration aborted: the recovery key shares given do not make this server's "
                             "recovery key; submit them again")
        with lifecycle.shared.locked():
            held = lifecycle.shared.ceremony(CEREMONY_SEAL_MIGRATION)
        if held is None:
            raise BadRequest("the key the unsealer agent handed over is gone (the daemon was sealed); restart it")
        root_key = held.extra
    new = SealConfig(
        type="shamir",
        secret_shares=config.recovery_shares,
        secret_threshold=config.recovery_threshold,
        cluster_id=config.cluster_id,
        cluster_name=config.cluster_name,
        share_salt=config.share_salt,
        share_hashes=list(config.share_hashes),
    )
    commit(lifecycle.physical, [
        Put(ROOT_KEY, aead.encrypt(recovery_key, root_key, ROOT_KEY.encode())),
        Put(SEAL_CONFIG, new.to_json()),
        Delete(STORED_KEY),
    ])
    _completed(lifecycle, migration, root_key)


def _completed(lifecycle: Lifecycle, migration: Migration, root_key: bytes, by: str = "shares") -> None:
    shared = lifecycle.shared
    shared.bump_epoch(EPOCH_INIT)
    with shared.locked():
        shared.mark_unsealed(root_key)
    log_event(log, "seal_migration_completed", "seal migration %s -> %s completed", migration.from_type,
              migration.to_type, seal_migration_from=migration.from_type, seal_migration_to=migration.to_type,
              boot_id=shared.boot_id)
    log_event(log, "unsealed", "unsealed (by %s, completing a seal migration)", by, unsealed_by=by,
              seal_type=migration.to_type, boot_id=shared.boot_id)


# -- the agent's key (sys/vaultd/unseal) -----------------------------------------


def receive_unwrapped_key(lifecycle: Lifecycle, config: SealConfig, migration: Migration, kek: bytes,
                          boot_id: str) -> None:
    """The agent unwrapped the old seal's key: hold it (-> shamir) or re-wrap
    it with the new KMS key and unseal (A -> B)."""
    shared = lifecycle.shared
    with shared.locked():
        if not hmac.compare_digest(boot_id.encode(), shared.boot_id.encode()):
            raise BadRequest("boot_id does not match: the daemon restarted, read sys/vaultd/state again")
        if shared.unsealed:
            return
    if migration.kind == SHAMIR_TO_AUTO:
        raise BadRequest("this server is migrating from the shamir seal: operators complete it with "
                         "operator unseal -migrate and the unseal keys; the agent unseals its next run")
    if len(kek) != 32:
        raise BadRequest("invalid key: expected 32 bytes")
    root_key = _agent_root_key(lifecycle, kek)
    if migration.kind == AUTO_TO_SHAMIR:
        with shared.locked():
            if shared.ceremony(CEREMONY_SEAL_MIGRATION) is None and not shared.unsealed:
                shared.start_ceremony(CEREMONY_SEAL_MIGRATION, root_key)
                log_event(log, "seal_migration_key_received", "the unsealer agent handed over the %s seal's key "
                          "for the migration to shamir; operator unseal -migrate with the recovery keys completes "
                          "it", migration.from_type, boot_id=shared.boot_id)
        return
    with lifecycle.physical.lock("core/init"):
        try:
            stored = _wrap(lifecycle, config, migration, kek)
        except BadRequest:
            # A is still good: serve with it, and try B again at the next start.
            with shared.locked():
                shared.mark_unsealed(root_key)
            log_event(log, "unsealed", "unsealed (by unsealer) with the old seal's key; the migration to the new "
                      "key is still pending", unsealed_by="unsealer", seal_type=config.type, boot_id=shared.boot_id)
            return
        new = dataclasses.replace(config, seal_key_id=seal_key_id(lifecycle.seal))
        commit(lifecycle.physical, [Put(STORED_KEY, stored.to_json()), Put(SEAL_CONFIG, new.to_json())])
    _completed(lifecycle, migration, root_key, by="unsealer")


def _agent_root_key(lifecycle: Lifecycle, kek: bytes) -> bytes:
    blob = lifecycle.physical.get(ROOT_KEY)
    try:
        if blob is None:
            raise aead.AuthenticationError("no root key")
        return aead.decrypt(kek, blob, ROOT_KEY.encode())
    except (aead.AuthenticationError, ValueError):
        log_event(log, "unseal_failed", "unseal refused: the key submitted (by unsealer) does not decrypt the "
                  "root key", submitted_by="unsealer", boot_id=lifecycle.shared.boot_id)
        raise BadRequest("Error unsealing: the key does not decrypt this server's root key") from None


def status_fields(config: SealConfig, migration: Migration) -> dict[str, Any]:
    """What ``seal-status`` shows during a migration, as Vault shows it: the
    new seal's type, and the quorum of the keys ``-migrate`` takes."""
    shares, threshold = quorum(config, migration)
    fields: dict[str, Any] = {"type": migration.to_type, "recovery_seal": migration.to_type != "shamir"}
    if migration.kind != AUTO_TO_AUTO:
        fields |= {"t": threshold, "n": shares}
    return fields
