"""``vaultd server``: gunicorn from Python, with the shared seal state made
before the workers are forked.

The process tree is one gunicorn master and N workers.  The master creates
the shared seal state and the storage, then forks; each worker builds its own
:class:`~vaultd.core.core.Core` over them.  ``NOTIFY_SOCKET`` is taken out of
the environment before gunicorn sees it (gunicorn would send READY=1 as soon
as it listens); the master's notifier thread sends READY=1 itself, once, when
the first unseal happens.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import gunicorn.app.base
import gunicorn.arbiter
import gunicorn.glogging

from vaultd import __version__, banner, metrics
from vaultd.agent_channel import (
    AgentChannel,
    ChannelError,
    channel_from_config,
    needs_channel,
    prepare_socket_dir,
    socket_umask,
)
from vaultd.api.app import create_app
from vaultd.api.sys_metrics import ACCESS_CONFIG_KEY, MetricsAccess
from vaultd.api.sys_vaultd import CHANNEL_CONFIG_KEY
from vaultd.config import Config, ConfigError, dev_config, load_config
from vaultd.core import seal_migration
from vaultd.core.core import Core, CoreSettings
from vaultd.core.ha import HAManager, open_ha
from vaultd.core.lifecycle import InitRequest
from vaultd.core.router import new_mount
from vaultd.core.seal_state import HA_ACTIVE, HA_STANDBY, SharedSealState
from vaultd.errors import StorageError
from vaultd.hardening import disable_core_dumps
from vaultd.logging import log_event, route_to_root, set_log_level, setup_logging
from vaultd.seal.base import AutoSeal
from vaultd.storage import open_storage, serverlock
from vaultd.storage.base import Storage

log = logging.getLogger("vaultd.server")


def open_seal(config: Config) -> AutoSeal | None:
    if config.seal is None or config.seal.disabled or config.seal.type == "shamir":
        return None
    if config.seal.type == "awskms":
        from vaultd.seal.awskms import AwsKmsSeal

        return AwsKmsSeal(config.seal.options)
    raise ConfigError(f"seal type {config.seal.type!r} is not supported (supported: shamir, awskms)")


class Notifier:
    """Tells systemd how the server is doing, from the gunicorn master.

    READY=1 goes out once, after the first unseal, so that units ordered
    after vaultd start only when it can serve secrets.  Until then STATUS=
    says what it waits for, and EXTEND_TIMEOUT_USEC= is renewed while the
    master is alive and can read its state: a daemon waiting for a KMS that
    is down stays "activating" for as long as it takes, instead of being
    killed by TimeoutStartSec= and restarted in a loop, while a daemon that
    hangs before it gets here still times out.
    """

    POLL_INTERVAL = 0.2
    EXTEND_INTERVAL = 10.0
    """Seconds between two EXTEND_TIMEOUT_USEC= messages."""
    EXTEND_BY_USEC = 30_000_000
    """How far each message moves the start timeout (three missed renewals)."""

    def __init__(
        self,
        shared: SharedSealState,
        core: Core,
        send: Callable[[str], None] | None,
        workers: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.shared = shared
        self.core = core
        self.workers = workers
        self._sender = send
        self._clock = clock
        self._ready_sent = False
        self._stopping = False
        self._last_status = ""
        self._last_kind = ""
        self._last_extend: float | None = None
        self._last_generation: int | None = None
        self._pid = os.getpid()
        self._busy = threading.Lock()
        self.ha_enabled = False
        self.on_seal: Callable[[], None] | None = None
        """Called (from the notifier's thread) when the server was sealed
        since the last poll: the arbiter then replaces its workers."""

    @staticmethod
    def connect() -> Callable[[str], None] | None:
        """Take ``NOTIFY_SOCKET`` out of the environment (gunicorn would send
        READY=1 as soon as it listens, and workers must not inherit it) and
        return a sender bound to it, or None outside systemd."""
        if not os.environ.get("NOTIFY_SOCKET"):
            os.environ.pop("NOTIFY_SOCKET", None)
            return None
        import sdnotify

        notifier = sdnotify.SystemdNotifier()  # connects to NOTIFY_SOCKET now
        os.environ.pop("NOTIFY_SOCKET", None)
        send: Callable[[str], None] = notifier.notify
        return send

    @property
    def ready_sent(self) -> bool:
        return self._ready_sent

    def _send(self, message: str) -> None:
        # Workers inherit this object and its socket when the master forks;
        # only the master (systemd's main PID) may speak.
        if self._sender is not None and os.getpid() == self._pid:
            self._sender(message)

    def state(self) -> tuple[str, str]:
        """(kind, STATUS text); kind is uninitialized, sealed, operator or unsealed."""
        config = self.core.lifecycle.seal_config()
        if config is None:
            return "uninitialized", "uninitialized: run vaultctl operator init"
        if self.shared.unsealed:
            if self.ha_enabled:
                ha = self.shared.ha()
                if ha.role == HA_ACTIVE and ha.active(time.monotonic()):
                    return "unsealed", f"unsealed, active, {self.workers} workers"
                if ha.role == HA_STANDBY:
                    return "unsealed", f"unsealed, standby (active: {ha.api_addr or 'none yet'})"
                return "unsealed", "unsealed, HA role not decided yet"
            return "unsealed", f"unsealed, {self.workers} workers"
        if self.shared.sealed_by_operator:
            return "operator", "sealed by operator"
        progress = 0
        if config.unseal_shares:
            with self.shared.locked():
                progress = len(self.shared.parts())
        migration = self.core.lifecycle.migration()
        if migration is not None:
            shares, threshold = seal_migration.quorum(config, migration)
            if not shares:
                return "sealed", "sealed: seal migration, waiting for unsealer"
            with self.shared.locked():
                progress = len(self.shared.parts())
            return "sealed", f"sealed: seal migration, {progress}/{threshold} keys"
        if config.recovery_seal and progress == 0:
            # Break-glass shares being entered show as progress below.
            return "sealed", "sealed: waiting for unsealer"
        return "sealed", f"sealed: {progress}/{config.unseal_threshold} key shares"

    def poll_once(self) -> None:
        generation = self.shared.generation
        kind, status = self.state()
        # Every seal and unseal moves the generation, and several may fall
        # between two polls: only one unseal from a sealed state is no seal.
        last, self._last_generation = self._last_generation, generation
        moved = last is not None and generation != last
        only_unsealed = kind == "unsealed" and self._last_kind != "unsealed" and generation == (last or 0) + 1
        if moved and not only_unsealed and self.on_seal is not None:
            self.on_seal()
        lines = []
        if status != self._last_status:
            if kind == "sealed" and self._last_kind != "sealed":
                log_event(log, "sealed", "status: %s", status, boot_id=self.shared.boot_id)
            else:
                log.info("status: %s", status)
            self._last_status, self._last_kind = status, kind
            lines.append(f"STATUS={status}")
        now = self._clock()
        if kind == "unsealed" and not self._ready_sent:
            self._ready_sent = True
            lines.insert(0, "READY=1")
        elif not self._ready_sent and (self._last_extend is None or now - self._last_extend >= self.EXTEND_INTERVAL):
            self._last_extend = now
            lines.append(f"EXTEND_TIMEOUT_USEC={self.EXTEND_BY_USEC}")
        if lines and not self._stopping:
            self._send("\n".join(lines))

    def run(self) -> None:
        while not self._stopping:
            with self._busy:
                try:
                    self.poll_once()
                except Exception as exc:  # keep notifying whatever one poll hit
                    log.warning("status poll failed: %s", type(exc).__name__)
            time.sleep(self.POLL_INTERVAL)

    def quiet(self) -> threading.Lock:
        """Held by the master around each fork of a worker.

        A poll reads storage and writes log lines; a fork in the middle of
        one would give the worker a copy of a lock (the log stream's buffer,
        say) held by a thread that does not exist in the worker, and the
        worker's first log line would then wait forever, holding whatever
        it held (the shared seal state's lock, after an unseal).  Seen once
        in about a hundred restarts on Debian's Python 3.11.2.  Holding this
        lock makes the fork wait for the poll to finish."""
        return self._busy

    def start(self) -> None:
        threading.Thread(target=self.run, name="vaultd-notify", daemon=True).start()

    def reloading(self) -> None:
        """Before a SIGHUP reload.  Only a ready service can reload: before
        READY=1 systemd is still waiting for the start."""
        if self._ready_sent:
            self._send(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}\nSTATUS=reloading")

    def reloaded(self) -> None:
        if self._ready_sent:
            self._send(f"READY=1\nSTATUS={self._last_status}")

    def stopping(self) -> None:
        if not self._stopping:
            self._stopping = True
            self._send("STOPPING=1\nSTATUS=stopping")


def _memory_backed_dir() -> str | None:
    """Where gunicorn's per-worker heartbeat files go: a tmpfs.

    Each worker changes its file's times on every turn of its event loop,
    which is every request under load.  On a disk-backed /tmp (as on Debian,
    and as systemd's PrivateTmp= is) that is a journalled metadata write:
    5% of a worker's time in a profile of KV reads.  The unit's
    RuntimeDirectory (/run/vaultd) is a tmpfs, and so is /dev/shm; without
    either, gunicorn's default stays."""
    runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    for candidate in (runtime, "/dev/shm"):  # noqa: S108 - gunicorn makes its file with mkstemp and unlinks it
        if candidate and os.path.isdir(candidate) and os.access(candidate, os.W_OK | os.X_OK):
            return candidate
    return None


class VaultdLogger(gunicorn.glogging.Logger):
    """gunicorn's error (and access) log through vaultd's handler: one
    format, journald fields under systemd, no second timestamp."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        route_to_root(self.error_log, self.access_log)


class VaultdArbiter(gunicorn.arbiter.Arbiter):
    """gunicorn's master, telling systemd about reloads and shutdowns."""

    def __init__(self, app: VaultdApplication) -> None:
        self.notifier = app.notifier
        self._replace_workers = threading.Event()
        super().__init__(app)
        # inmem storage lives in the worker itself (dev mode): a new worker
        # would start from the master's copy, without what was written since.
        if self.notifier is not None and app.vaultd_config.storage.type != "inmem":
            self.notifier.on_seal = self.replace_workers_soon

    def replace_workers_soon(self) -> None:
        """After a seal: have the main loop replace every worker.

        A worker drops its keys and caches at once when the server seals,
        but decrypted values it handled (request bodies, responses, freed
        strings) stay in its heap until overwritten.  A process that exits
        takes them with it; the master holds no secret.  Called from the
        notifier's thread, so it only flags and wakes the main loop, which
        alone may fork."""
        self._replace_workers.set()
        self.wakeup()

    def manage_workers(self) -> None:
        if self._replace_workers.is_set() and os.getpid() == self.pid:
            self._replace_workers.clear()
            # As a SIGHUP does, without re-reading the configuration: new
            # workers first (they come up sealed and answer 503), then the
            # old ones get SIGTERM from gunicorn's own excess-worker rule,
            # oldest first, and finish what they are serving.
            log.info("sealed: replacing %d workers so that no plaintext outlives the seal", len(self.WORKERS))
            for _ in range(self.num_workers):
                self.spawn_worker()
        super().manage_workers()

    def spawn_worker(self) -> int:
        if self.notifier is None:
            return int(super().spawn_worker())
        # The child runs its whole life inside this block and leaves through
        # SystemExit, releasing its own copy of the lock; the parent's is
        # released as soon as the fork returns.
        with self.notifier.quiet():
            return int(super().spawn_worker())

    def handle_hup(self) -> None:
        # No try/finally: a worker forked during the reload unwinds through
        # here when it exits, and must not report anything.
        if self.notifier is not None:
            self.notifier.reloading()
        super().handle_hup()
        if self.notifier is not None:
            self.notifier.reloaded()

    def stop(self, graceful: bool = True) -> None:
        if self.notifier is not None:
            self.notifier.stopping()
        super().stop(graceful)


class VaultdApplication(gunicorn.app.base.BaseApplication):
    def __init__(self, config: Config, *, physical: Storage, shared: SharedSealState, settings: CoreSettings,
                 notifier: Notifier | None, agent_channel: AgentChannel | None = None) -> None:
        self.vaultd_config = config
        self.physical = physical
        self.shared = shared
        self.settings = settings
        self.notifier = notifier
        self.agent_channel: AgentChannel | None = agent_channel
        self.ha_manager: HAManager | None = None
        self._loaded_once = False
        super().__init__()

    def load_config(self) -> None:
        if self._loaded_once:
            self._reread_config()
        self._loaded_once = True
        config = self.vaultd_config
        listeners = config.listeners
        tls = {(item.tls_disable, item.tls_cert_file, item.tls_key_file) for item in listeners}
        if len(tls) > 1:
            raise ConfigError("all listeners must share the same TLS settings")
        first = listeners[0]
        workers = config.workers or os.cpu_count() or 1
        if config.storage.type == "inmem" and workers != 1:
            log.warning("inmem storage is private to one process: running 1 worker instead of %d", workers)
            workers = 1
        settings: dict[str, Any] = {
            "bind": [item.address for item in listeners] + self._agent_binds(),
            "workers": workers,
            "worker_class": "vaultd.httpworker.BufferingWorker",
            "threads": config.threads,
            "timeout": 60,
            "graceful_timeout": 10,
            "keepalive": 30,
            "errorlog": "-",
            "accesslog": None,
            "logger_class": VaultdLogger,
            "loglevel": "warning" if config.log_level.lower() not in ("debug", "trace") else "debug",
            "proc_name": "vaultd",
            "preload_app": False,
            "when_ready": self._when_ready,
            "on_exit": self._on_exit,
            "child_exit": self._child_exit,
        }
        if self.agent_channel is not None and self.agent_channel.is_unix:
            # gunicorn binds unix sockets under this umask (its default, 0,
            # would leave the socket 0777): 0600, or 0660 for a shared group.
            settings["umask"] = socket_umask(self.agent_channel)
        heartbeat_dir = _memory_backed_dir()
        if heartbeat_dir is not None:
            settings["worker_tmp_dir"] = heartbeat_dir
        if "control_socket_disable" in self.cfg.settings:
            # gunicorn >= 24 opens a control socket under $HOME: nothing in
            # vaultd uses it, and the units give the daemon no home to write.
            settings["control_socket_disable"] = True
        if not first.tls_disable:
            settings["certfile"] = first.tls_cert_file
            settings["keyfile"] = first.tls_key_file
        for key, value in settings.items():
            self.cfg.set(key, value)
        self.worker_count = workers

    def _agent_binds(self) -> list[str]:
        """The agent's unix socket, an extra listener of the same app; the
        agent endpoints check which socket a request came in on."""
        channel = self.agent_channel
        if channel is None or channel.socket_path is None:
            return []
        return [f"unix:{channel.socket_path}"]

    def _reread_config(self) -> None:
        """SIGHUP: take the log level and the TLS certificate and key files
        from the file again (new workers load the certificates afresh).
        Anything else needs a restart; a file that no longer loads is
        reported and the running configuration kept, since gunicorn would
        otherwise exit on it."""
        path = self.vaultd_config.path
        if path is None:
            return
        try:
            fresh = load_config(path)
        except ConfigError as exc:
            log.error("reload: %s; keeping the running configuration", exc)
            return
        current = self.vaultd_config
        if [item.address for item in fresh.listeners] == [item.address for item in current.listeners]:
            listeners = [
                dataclasses.replace(old, tls_cert_file=new.tls_cert_file, tls_key_file=new.tls_key_file)
                for old, new in zip(current.listeners, fresh.listeners, strict=True)
            ]
        else:
            log.warning("reload: listener addresses changed; restart vaultd to apply that")
            listeners = current.listeners
        self.vaultd_config = dataclasses.replace(current, log_level=fresh.log_level, listeners=listeners)
        set_log_level(fresh.log_level)
        log.info("reloaded %s: log level %s, TLS %s", path, fresh.log_level,
                 "disabled" if listeners[0].tls_disable else f"certificate {listeners[0].tls_cert_file}")

    def _when_ready(self, _arbiter: Any) -> None:
        if self.notifier is not None:
            self.notifier.start()
        if self.ha_manager is not None:
            self.ha_manager.start()

    def _on_exit(self, _arbiter: Any) -> None:
        if self.notifier is not None:
            self.notifier.stopping()
        if self.ha_manager is not None:
            self.ha_manager.stop()  # the next node takes over now, not when the lease expires
        metrics.remove_directory(metrics.directory())
        checkpoint = getattr(self.physical, "checkpoint_at_stop", None)
        if checkpoint is not None:  # every worker is gone: the log can be emptied
            checkpoint()

    def _child_exit(self, _arbiter: Any, worker: Any) -> None:
        """A worker is gone: its counts stay in the metrics directory, its
        live gauges go, and its siblings stop weighing its connections."""
        metrics.worker_exited(worker.pid)
        shares = getattr(worker, "shares", None)
        if shares is not None:
            shares.withdraw(worker.age)

    def load(self) -> Any:
        """Build the worker's core and app, after the fork, and freeze them
        out of the garbage collector's sweeps as the master froze what it
        had before forking (see :func:`serve`)."""
        # The storage timer is made here, in the worker: the master's own
        # reads (the notifier's polls) are not requests and are not counted.
        core = Core(metrics.TimedStorage(self.physical), self.shared, self.settings)
        core.watch_seal()
        app = create_app(core, max_request_size=self.vaultd_config.listeners[0].max_request_size)
        app.config[CHANNEL_CONFIG_KEY] = self.agent_channel
        app.config[ACCESS_CONFIG_KEY] = MetricsAccess.from_config(self.vaultd_config)
        gc.freeze()
        return app

    def run(self) -> None:
        try:
            VaultdArbiter(self).run()
        except RuntimeError as exc:
            print(f"\nError: {exc}\n", file=sys.stderr, flush=True)
            sys.exit(1)


def build(config: Config) -> tuple[Storage, SharedSealState, CoreSettings]:
    physical = open_storage(config.storage.type, config.storage.options)
    shared = SharedSealState.create(lock_memory=not config.disable_mlock)
    settings = CoreSettings(
        seal=open_seal(config),
        disabled_seal_type=config.disabled_seal.type if config.disabled_seal else "",
        cluster_name=config.cluster_name or "",
        storage_type=config.storage.type,
        default_lease_ttl=config.default_lease_ttl,
        max_lease_ttl=config.max_lease_ttl,
        ha_enabled=config.ha_enabled,
    )
    return physical, shared, settings



def open_agent_channel(config: Config) -> AgentChannel | None:
    """The agent channel to serve, its directory made safe, or None when
    there is no agent (no auto seal, no ``unsealer`` stanza).  A TCP agent
    address is served (loopback only) with a warning: see the README."""
    if not needs_channel(config):
        return None
    channel = channel_from_config(config)
    if channel.socket_path is not None:
        prepare_socket_dir(channel)
        log.info("serving the unsealer agent on %s", channel.socket_path)
    else:
        log.warning("unsealer.address is the TCP address %s: the agent endpoints are served to any loopback "
                    "client, and any local user who binds that port while vaultd restarts can pose as it to "
                    "the agent; prefer the default unix socket", channel.address)
    return channel


def dev_bootstrap(core: Core) -> tuple[str, str]:
    """Initialise with one key share, unseal, mount ``secret/`` (kv v2):
    what ``vault server -dev`` does.  Returns (unseal key, root token)."""
    result = core.init(InitRequest(secret_shares=1, secret_threshold=1))
    key = bytes.fromhex(result["keys"][0])
    core.lifecycle.submit_share(key)
    core.begin()
    core.router.mount(new_mount("secret/", "kv", description="key/value secret storage", options={"version": "2"}))
    return result["keys_base64"][0], result["root_token"]


def serve(args: argparse.Namespace) -> int:
    disable_core_dumps()
    try:
        config = dev_config(args.dev_listen_address) if args.dev else load_config(args.config)
    except ConfigError as exc:
        print(f"Error loading configuration: {exc}", file=sys.stderr)
        return 1
    setup_logging(config.log_level)
    notify = Notifier.connect()
    try:
        # Before the workers exist, so that they all count into it.
        metrics.prepare_directory()
    except OSError as exc:
        print(f"Error starting vaultd: cannot create the metrics directory: {exc.strerror}", file=sys.stderr)
        return 1
    try:
        physical, shared, settings = build(config)
        if config.storage.type in ("file", "sqlite"):
            # Held for the master's life: `operator migrate` refuses to run under it.
            serverlock.hold_for_server(config.storage.options["path"])
        elif config.storage.type == "postgresql":
            physical.refuse_during_migration()  # type: ignore[attr-defined]
        ha_manager = (open_ha(physical, shared, ha_table=config.storage.options.get("ha_table") or "",
                              api_addr=config.api_addr or "", cluster_addr=config.cluster_addr or "")
                      if config.ha_enabled else None)
    except (ConfigError, ValueError, StorageError) as exc:
        print(f"Error starting vaultd: {exc}", file=sys.stderr)
        return 1
    try:
        agent_channel = open_agent_channel(config) if not args.dev else None
    except ChannelError as exc:
        print(f"Error starting vaultd: {exc}", file=sys.stderr)
        return 1
    master_core = Core(physical, shared, settings)
    seal_migration.announce(master_core.lifecycle)
    if args.dev:
        unseal_key, root_token = dev_bootstrap(master_core)
        address = config.listeners[0].address
        print(
            "WARNING! dev mode is enabled: storage is in memory and the server starts unsealed.\n\n"
            f"    $ export VAULT_ADDR='http://{address}'\n\n"
            f"Unseal Key: {unseal_key}\nRoot Token: {root_token}\n",
            flush=True,
        )
    notifier = Notifier(shared, master_core, notify, config.workers or os.cpu_count() or 1)
    app = VaultdApplication(config, physical=physical, shared=shared, settings=settings, notifier=notifier,
                            agent_channel=agent_channel)
    notifier.workers = app.worker_count
    notifier.ha_enabled = ha_manager is not None
    app.ha_manager = ha_manager
    banner.show(config, settings.seal, app.worker_count)
    log.info("vaultd %s starting: storage %s, seal %s", __version__, config.storage.type,
             settings.seal.type if settings.seal else "shamir")
    # Everything imported and built so far lives as long as the process.
    # Frozen, the collector neither sweeps it (a full sweep took 15-20 ms,
    # due every few hundred requests) nor writes to it, so the pages the
    # workers inherit stay shared with the master instead of being copied.
    # (No gc.collect() first: it would cost the start 20 ms to save the
    # few cycles that imports leave.)
    gc.freeze()
    app.run()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vaultd", description="A Vault-compatible secrets server.")
    sub = parser.add_subparsers(dest="command", required=True)
    server = sub.add_parser("server", help="run the server")
    server.add_argument("-config", "--config", help="path to the HCL or JSON config file")
    server.add_argument("-dev", "--dev", action="store_true", help="in-memory, unsealed development server")
    server.add_argument("-dev-listen-address", "--dev-listen-address", default="127.0.0.1:8200")
    sub.add_parser("version", help="print the version")
    operator = sub.add_parser("operator", help="offline operator commands").add_subparsers(dest="action", required=True)
    migrate = operator.add_parser("migrate", help="copy the store between storage backends, offline")
    migrate.add_argument("-config", "--config", required=True,
                         help="HCL file with storage_source and storage_destination blocks")
    migrate.add_argument("-reset", "--reset", action="store_true", help="clear a non-empty destination first")
    args = parser.parse_args(argv)
    if args.command == "version":
        print(f"vaultd v{__version__}")
        return 0
    if args.command == "operator":
        from vaultd import migrate as migrator  # only this command needs it

        return migrator.main(args.config, reset=args.reset)
    if not args.dev and not args.config:
        parser.error("server needs --config FILE or --dev")
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
