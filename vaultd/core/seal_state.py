"""The seal state every gunicorn worker shares.

An unseal request lands on one worker, yet every worker (and every worker the
master forks later to replace a dead one) must serve unsealed at once.  So the
state lives in an anonymous ``MAP_SHARED`` mapping that the master creates
before it forks: the root key, a generation number bumped on every seal and
unseal, the boot id, the pending unseal shares, and a few epoch counters that
tell workers when to drop their caches.

The mapping is locked in RAM (no swap) and excluded from core dumps.  Writers
serialise with a POSIX record lock on a file inherited from the master (it is
released by the kernel if the holder dies, so a ``kill -9`` never wedges the
other workers) plus a per-process thread lock, since record locks do not
exclude threads of one process.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import logging
import mmap
import os
import struct
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

log = logging.getLogger("vaultd.seal_state")

_MAGIC = 0x76617564  # "vaud"
_HEADER = struct.Struct("<IIQI4x16s32s16sHH4xd")
# magic, layout version, generation, flags, boot id, root key, unseal nonce,
# part count, part length, time of the last unseal
_EPOCHS_OFFSET = 128
_EPOCH_COUNT = 8
_PARTS_OFFSET = _EPOCHS_OFFSET + 8 * _EPOCH_COUNT
MAX_PART_LEN = 64
MAX_PARTS = 255
_SLOTS_OFFSET = _PARTS_OFFSET + MAX_PARTS * MAX_PART_LEN
SLOT_COUNT = 4096
# Ceremonies that gather key shares while the server is unsealed
# (generate-root; rekey).  Each area: a nonce, the shares submitted so far
# and one small secret of the ceremony's own (the OTP of generate-root),
# then its parts.  Shares stay in this locked, undumped memory, never on disk.
CEREMONY_GENERATE_ROOT = 0
# Rekey (core/rekey.py): one area per target for the attempt, one for the
# verification of its new keys.
CEREMONY_REKEY = 1
CEREMONY_REKEY_RECOVERY = 2
CEREMONY_REKEY_VERIFY = 3
CEREMONY_REKEY_RECOVERY_VERIFY = 4
# Seal migration awskms -> shamir (core/seal_migration.py): the root key the
# agent's unwrapped KEK opened, held (as the area's secret) until a quorum
# of recovery keys authorises the switch.
CEREMONY_SEAL_MIGRATION = 5
_CEREMONY_COUNT = 6
_CEREMONY_HEADER = struct.Struct("<16sHHH2x104s")
MAX_CEREMONY_EXTRA = 104
_CEREMONY_AREA = _CEREMONY_HEADER.size + MAX_PARTS * MAX_PART_LEN
_CEREMONIES_OFFSET = _SLOTS_OFFSET + 8 * SLOT_COUNT
# HA (core/ha.py): what the master's HA thread decided, for every worker.
# role, step-down requests, active since (wall clock), lease deadline
# (CLOCK_MONOTONIC, the same in every process of the machine), leader id,
# leader api_addr, leader cluster_addr.
_HA_OFFSET = _CEREMONIES_OFFSET + _CEREMONY_COUNT * _CEREMONY_AREA
_HA = struct.Struct("<IIdd16s256s256s")
# HA counts for the metrics (only the master's HA thread writes them): lease
# renewals, leases lost.
_HA_COUNTS_OFFSET = _HA_OFFSET + _HA.size
_HA_COUNTS = struct.Struct("<QQ")
_SIZE = mmap.PAGESIZE * ((_HA_COUNTS_OFFSET + _HA_COUNTS.size) // mmap.PAGESIZE + 1)
HA_OFF = 0
"""HA is not enabled, or the node is sealed: no role."""
HA_STANDBY = 1
HA_ACTIVE = 2

FLAG_UNSEALED = 1
FLAG_SEALED_BY_OPERATOR = 2

# Epoch slots: a worker that sees one change drops the matching cache.
EPOCH_KEYRING = 0
EPOCH_MOUNTS = 1
# Token changes reach other workers through the storage cache's per-key
# versions; policies need an epoch because each worker compiles them.
EPOCH_POLICIES = 2
EPOCH_INIT = 3
# Not an epoch but a counter in the same table: barrier encryptions with the
# active keyring term since this daemon started (sys/key-status).
COUNTER_ENCRYPTIONS = 4
# The audit device table (see core/audit.py).
EPOCH_AUDIT = 5
# Bumped when this node becomes the active HA node: other nodes wrote the
# shared database meanwhile, so every worker drops everything it cached.
EPOCH_HA = 6


DEADLOCK_RETRY = 0.0005
"""Seconds before asking again for a record lock the kernel refused with EDEADLK."""


def _lock_record(fd: int) -> None:
    """Take the exclusive record lock on ``fd``, waiting as long as it takes.

    The kernel's deadlock check counts processes, not threads.  Thread A of
    worker 1 holds the seal lock (counting an encryption) while thread B of
    worker 1 waits for the slot lock, which worker 2 holds while its other
    thread waits for the seal lock: to the kernel, worker 1 waits for
    worker 2 and worker 2 for worker 1, and the last request fails with
    EDEADLK, although A waits for nothing and lets go within microseconds.
    Seen as a 500 on one write of a bench's prefill of 10,000 secrets on two
    workers.  The two locks here are only ever taken in one order (the
    seal lock, then the slot lock inside it), so such a cycle is never a
    real deadlock: ask again after a pause."""
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)
            return
        except OSError as exc:
            if exc.errno != errno.EDEADLK:
                raise
        time.sleep(DEADLOCK_RETRY)


class SharedSealState:
    """See the module docstring.  Create it once, in the master, before forking."""

    def __init__(self, region: mmap.mmap, lock_fd: int, slot_lock_fd: int) -> None:
        self._mm = region
        self._lock_fd = lock_fd
        self._thread_lock = threading.Lock()
        self._thread_lock_pid = os.getpid()
        self._slot_lock_fd = slot_lock_fd
        """A lock of its own for the key slots (see :meth:`bump_key_version`),
        held for microseconds: never the seal lock, which an unseal holds
        while it writes."""
        self._slot_thread_lock = threading.Lock()
        self._slot_thread_lock_pid = os.getpid()

    @classmethod
    def create(cls, *, lock_memory: bool = True) -> SharedSealState:
        region = mmap.mmap(-1, _SIZE, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_ANONYMOUS", 0x20))
        _protect(region, lock_memory=lock_memory)
        fd, name = tempfile.mkstemp(prefix="vaultd-seal-lock-")
        os.unlink(name)
        slot_fd, slot_name = tempfile.mkstemp(prefix="vaultd-slot-lock-")
        os.unlink(slot_name)
        state = cls(region, fd, slot_fd)
        _HEADER.pack_into(
            region, 0, _MAGIC, 1, 0, 0, uuid.uuid4().bytes, bytes(32), bytes(16), 0, 0, 0.0
        )
        return state

    # -- locking -------------------------------------------------------------
    #
    # Both record locks go through _lock_record: Linux fails a blocking
    # record-lock request with EDEADLK when it sees a cycle of *processes*
    # waiting on each other's locks, and threads make cycles that are not
    # deadlocks (see _lock_record).

    def _local_lock(self) -> threading.Lock:
        # A lock copied by fork may have been held by another thread of the
        # parent at that moment; a fresh one per process avoids inheriting it.
        if self._thread_lock_pid != os.getpid():
            self._thread_lock = threading.Lock()
            self._thread_lock_pid = os.getpid()
        return self._thread_lock

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with self._local_lock():
            _lock_record(self._lock_fd)
            try:
                yield
            finally:
                fcntl.lockf(self._lock_fd, fcntl.LOCK_UN)

    # -- reads (single aligned loads; good enough without the lock) ---------

    def _header(self) -> tuple:
        return _HEADER.unpack_from(self._mm, 0)

    @property
    def generation(self) -> int:
        return struct.unpack_from("<Q", self._mm, 8)[0]

    @property
    def flags(self) -> int:
        return struct.unpack_from("<I", self._mm, 16)[0]

    @property
    def unsealed(self) -> bool:
        return bool(self.flags & FLAG_UNSEALED)

    @property
    def sealed_by_operator(self) -> bool:
        return bool(self.flags & FLAG_SEALED_BY_OPERATOR)

    @property
    def boot_id(self) -> str:
        return str(uuid.UUID(bytes=bytes(self._mm[24:40])))

    @property
    def unsealed_at(self) -> float:
        return self._header()[9]

    def root_key(self) -> bytes | None:
        """The root key while unsealed.  Callers keep it no longer than needed."""
        with self.locked():
            if not self.flags & FLAG_UNSEALED:
                return None
            return bytes(self._mm[40:72])

    def epoch(self, slot: int) -> int:
        return struct.unpack_from("<Q", self._mm, _EPOCHS_OFFSET + 8 * slot)[0]

    def reset_epoch(self, slot: int) -> None:
        with self.locked():
            struct.pack_into("<Q", self._mm, _EPOCHS_OFFSET + 8 * slot, 0)

    def bump_epoch(self, slot: int) -> None:
        with self.locked():
            offset = _EPOCHS_OFFSET + 8 * slot
            struct.pack_into("<Q", self._mm, offset, struct.unpack_from("<Q", self._mm, offset)[0] + 1)

    # -- storage key versions (for :class:`vaultd.storage.cache.CachedStorage`)

    def key_version(self, key: str) -> int:
        offset = _SLOTS_OFFSET + 8 * (zlib.crc32(key.encode()) % SLOT_COUNT)
        return struct.unpack_from("<Q", self._mm, offset)[0]

    @contextlib.contextmanager
    def _slot_locked(self) -> Iterator[None]:
        if self._slot_thread_lock_pid != os.getpid():  # as in _local_lock
            self._slot_thread_lock = threading.Lock()
            self._slot_thread_lock_pid = os.getpid()
        with self._slot_thread_lock:
            _lock_record(self._slot_lock_fd)
            try:
                yield
            finally:
                fcntl.lockf(self._slot_lock_fd, fcntl.LOCK_UN)

    def bump_key_version(self, key: str) -> None:
        """Give the key's slot a new value after a write.

        A random value rather than an increment: all a reader asks is
        whether the value differs from the one it saw.  Under the slot lock,
        so that :meth:`bump_key_version_if_unchanged` can tell whether any
        other bump came between its caller's look and its own."""
        offset = _SLOTS_OFFSET + 8 * (zlib.crc32(key.encode()) % SLOT_COUNT)
        with self._slot_locked():
            self._mm[offset : offset + 8] = os.urandom(8)

    def bump_key_version_if_unchanged(self, key: str, seen: int) -> int | None:
        """Bump the key's slot after a write; its new value if the slot still
        held ``seen`` (read before the write), else None.

        The check and the bump are one step under the slot lock, and every
        writer bumps after its write and before it acknowledges it; so when
        this returns a value, every write to the slot acknowledged before now
        wrote before the caller did, and the caller's value is the stored one
        (write-through caching, :class:`vaultd.storage.cache.CachedStorage`)."""
        offset = _SLOTS_OFFSET + 8 * (zlib.crc32(key.encode()) % SLOT_COUNT)
        fresh = os.urandom(8)
        with self._slot_locked():
            unchanged = struct.unpack_from("<Q", self._mm, offset)[0] == seen
            self._mm[offset : offset + 8] = fresh
        return struct.unpack("<Q", fresh)[0] if unchanged else None

    # -- transitions (callers hold ``locked()``) -----------------------------

    def _set(self, *, flags: int, root_key: bytes, unsealed_at: float) -> None:
        struct.pack_into("<Q", self._mm, 8, self.generation + 1)
        struct.pack_into("<I", self._mm, 16, flags)
        self._mm[40:72] = root_key
        struct.pack_into("<d", self._mm, 96, unsealed_at)
        self._clear_parts()
        # A seal ends every ceremony: shares gathered under one unseal do
        # not carry over to the next.
        for area in range(_CEREMONY_COUNT):
            self.clear_ceremony(area)

    def mark_unsealed(self, root_key: bytes) -> None:
        if len(root_key) != 32:
            raise ValueError("root key must be 32 bytes")
        self._set(flags=FLAG_UNSEALED, root_key=root_key, unsealed_at=time.time())

    def mark_sealed(self, *, by_operator: bool) -> None:
        self._set(flags=FLAG_SEALED_BY_OPERATOR if by_operator else 0, root_key=bytes(32), unsealed_at=0.0)

    # -- unseal progress (callers hold ``locked()``) -------------------------

    def parts(self) -> list[bytes]:
        count, length = struct.unpack_from("<HH", self._mm, 88)
        return [
            bytes(self._mm[_PARTS_OFFSET + i * MAX_PART_LEN : _PARTS_OFFSET + i * MAX_PART_LEN + length])
            for i in range(count)
        ]

    def nonce(self) -> str:
        raw = bytes(self._mm[72:88])
        return "" if raw == bytes(16) else str(uuid.UUID(bytes=raw))

    def add_part(self, part: bytes) -> None:
        count, length = struct.unpack_from("<HH", self._mm, 88)
        if len(part) > MAX_PART_LEN or count >= MAX_PARTS:
            raise ValueError("unseal part does not fit")
        if count == 0:
            self._mm[72:88] = uuid.uuid4().bytes
        elif len(part) != length:
            raise ValueError("unseal part length differs from the parts before it")
        offset = _PARTS_OFFSET + count * MAX_PART_LEN
        self._mm[offset : offset + len(part)] = part
        struct.pack_into("<HH", self._mm, 88, count + 1, len(part))

    def _clear_parts(self) -> None:
        self._mm[_PARTS_OFFSET : _PARTS_OFFSET + MAX_PARTS * MAX_PART_LEN] = bytes(MAX_PARTS * MAX_PART_LEN)
        self._mm[72:88] = bytes(16)
        struct.pack_into("<HH", self._mm, 88, 0, 0)

    def reset_progress(self) -> None:
        self._clear_parts()

    # -- ceremonies (callers hold ``locked()``) -------------------------------

    def ceremony(self, area: int) -> Ceremony | None:
        """The ceremony under way in ``area``, or None."""
        offset = _CEREMONIES_OFFSET + area * _CEREMONY_AREA
        nonce, count, length, extra_length, extra = _CEREMONY_HEADER.unpack_from(self._mm, offset)
        if nonce == bytes(16):
            return None
        base = offset + _CEREMONY_HEADER.size
        parts = [bytes(self._mm[base + i * MAX_PART_LEN : base + i * MAX_PART_LEN + length]) for i in range(count)]
        return Ceremony(str(uuid.UUID(bytes=nonce)), parts, bytes(extra[:extra_length]))

    def start_ceremony(self, area: int, extra: bytes) -> str:
        """Begin a ceremony in ``area`` with its secret ``extra``; its nonce."""
        if len(extra) > MAX_CEREMONY_EXTRA:
            raise ValueError("ceremony secret does not fit")
        nonce = uuid.uuid4()
        _CEREMONY_HEADER.pack_into(self._mm, _CEREMONIES_OFFSET + area * _CEREMONY_AREA,
                                   nonce.bytes, 0, 0, len(extra), extra)
        return str(nonce)

    def add_ceremony_part(self, area: int, part: bytes) -> None:
        offset = _CEREMONIES_OFFSET + area * _CEREMONY_AREA
        nonce, count, length, extra_length, extra = _CEREMONY_HEADER.unpack_from(self._mm, offset)
        if nonce == bytes(16):
            raise ValueError("no ceremony under way")
        if len(part) > MAX_PART_LEN or count >= MAX_PARTS or (count and len(part) != length):
            raise ValueError("key share does not fit the ones before it")
        base = offset + _CEREMONY_HEADER.size + count * MAX_PART_LEN
        self._mm[base : base + len(part)] = part
        _CEREMONY_HEADER.pack_into(self._mm, offset, nonce, count + 1, len(part), extra_length, extra)

    def rewrite_ceremony(self, area: int, extra: bytes, parts: list[bytes] | None = None) -> None:
        """Replace the secret and the parts of the ceremony in ``area``,
        keeping its nonce: a rekey that moves on to verifying its new keys
        keeps the nonce the operators were given."""
        offset = _CEREMONIES_OFFSET + area * _CEREMONY_AREA
        nonce = bytes(self._mm[offset : offset + 16])
        if nonce == bytes(16):
            raise ValueError("no ceremony under way")
        if len(extra) > MAX_CEREMONY_EXTRA:
            raise ValueError("ceremony secret does not fit")
        self._mm[offset : offset + _CEREMONY_AREA] = bytes(_CEREMONY_AREA)
        _CEREMONY_HEADER.pack_into(self._mm, offset, nonce, 0, 0, len(extra), extra)
        for part in parts or []:
            self.add_ceremony_part(area, part)

    def clear_ceremony(self, area: int) -> None:
        offset = _CEREMONIES_OFFSET + area * _CEREMONY_AREA
        self._mm[offset : offset + _CEREMONY_AREA] = bytes(_CEREMONY_AREA)


    # -- HA (written by the master's HA thread; read by every worker) -----------

    def ha(self) -> HAState:
        role, step_downs, since, deadline, leader, api, cluster = _HA.unpack_from(self._mm, _HA_OFFSET)
        return HAState(role, step_downs, since, deadline, leader.hex() if leader != bytes(16) else "",
                       api.rstrip(b"\0").decode(), cluster.rstrip(b"\0").decode())

    def set_ha(self, role: int, *, since: float = 0.0, deadline: float = 0.0, leader: str = "",
               api_addr: str = "", cluster_addr: str = "") -> None:
        """Publish the node's role; keeps the step-down counter."""
        with self.locked():
            step_downs = struct.unpack_from("<I", self._mm, _HA_OFFSET + 4)[0]
            _HA.pack_into(self._mm, _HA_OFFSET, role, step_downs, since, deadline,
                          bytes.fromhex(leader) if leader else bytes(16),
                          api_addr.encode()[:256], cluster_addr.encode()[:256])

    def count_ha(self, *, renewals: int = 0, lost: int = 0) -> None:
        """Add to the HA counts.  Only the master's HA thread calls it (one
        writer, so no lock); the counts start at zero with the master, as a
        Prometheus counter may."""
        renewed, lost_before = _HA_COUNTS.unpack_from(self._mm, _HA_COUNTS_OFFSET)
        _HA_COUNTS.pack_into(self._mm, _HA_COUNTS_OFFSET, renewed + renewals, lost_before + lost)

    def ha_counts(self) -> tuple[int, int]:
        """(lease renewals, leases lost) since the master started."""
        renewed, lost = _HA_COUNTS.unpack_from(self._mm, _HA_COUNTS_OFFSET)
        return int(renewed), int(lost)

    def request_step_down(self) -> None:
        with self.locked():
            offset = _HA_OFFSET + 4
            struct.pack_into("<I", self._mm, offset, struct.unpack_from("<I", self._mm, offset)[0] + 1)


@dataclass(frozen=True)
class HAState:
    role: int
    step_downs: int
    since: float
    deadline: float
    leader: str
    api_addr: str
    cluster_addr: str

    def active(self, now: float) -> bool:
        """Active and within the lease as last renewed (``now`` is
        ``time.monotonic()``): a node whose HA thread is stuck stops
        answering as active at the deadline, whatever the thread does."""
        return self.role == HA_ACTIVE and now < self.deadline


@dataclass(frozen=True)
class Ceremony:
    nonce: str
    parts: list[bytes]
    extra: bytes


def _protect(region: mmap.mmap, *, lock_memory: bool) -> None:
    """Keep the region out of core dumps and, if allowed, out of swap."""
    if hasattr(mmap, "MADV_DONTDUMP"):
        region.madvise(mmap.MADV_DONTDUMP)
    if not lock_memory:
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    buf = (ctypes.c_char * len(region)).from_buffer(region)
    if libc.mlock(ctypes.addressof(buf), ctypes.c_size_t(len(region))) != 0:
        err = ctypes.get_errno()
        log.warning(
            "could not lock the seal state in memory (%s); set disable_mlock = true "
            "or grant CAP_IPC_LOCK to silence this",
            os.strerror(err),
        )
    del buf
