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
import logging
import os
import sys
import threading
import time
from typing import Any

import gunicorn.app.base

from vaultd import __version__
from vaultd.api.app import create_app
from vaultd.config import Config, ConfigError, dev_config, load_config
from vaultd.core.core import Core, CoreSettings
from vaultd.core.lifecycle import InitRequest
from vaultd.core.router import new_mount
from vaultd.core.seal_state import SharedSealState
from vaultd.logging import setup_logging
from vaultd.seal.base import AutoSeal
from vaultd.storage import open_storage
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
    """Tells systemd how the server is doing, from the gunicorn master."""

    def __init__(self, shared: SharedSealState, core: Core, socket_path: str | None, workers: int) -> None:
        self.shared = shared
        self.core = core
        self.socket_path = socket_path
        self.worker_count = workers
        self._ready_sent = False
        self._last_status = ""

    def _send(self, message: str) -> None:
        if not self.socket_path:
            return
        import sdnotify

        notifier = sdnotify.SystemdNotifier()
        os.environ["NOTIFY_SOCKET"] = self.socket_path
        try:
            notifier.notify(message)
        finally:
            os.environ.pop("NOTIFY_SOCKET", None)

    def status_text(self) -> str:
        lifecycle = self.core.lifecycle
        config = lifecycle.seal_config()
        if config is None:
            return "uninitialized: run vaultctl operator init"
        if self.shared.unsealed:
            return f"unsealed, {self.workers} workers"
        if self.shared.sealed_by_operator:
            return "sealed by operator"
        if config.recovery_seal:
            return "sealed: waiting for unsealer"
        with self.shared.locked():
            progress = len(self.shared.parts())
        return f"sealed: {progress}/{config.secret_threshold} key shares"

    def poll_once(self) -> None:
        status = self.status_text()
        if status != self._last_status:
            self._last_status = status
            log.info("status: %s", status)
            message = f"STATUS={status}"
            if self.shared.unsealed and not self._ready_sent:
                self._ready_sent = True
                message = "READY=1\n" + message
            self._send(message)

    def run(self) -> None:
        while True:
            try:
                self.poll_once()
            except Exception as exc:  # keep notifying whatever one poll hit
                log.warning("status poll failed: %s", type(exc).__name__)
            time.sleep(0.2)

    def start(self) -> None:
        threading.Thread(target=self.run, name="vaultd-notify", daemon=True).start()

    def stopping(self) -> None:
        self._send("STOPPING=1")


class VaultdApplication(gunicorn.app.base.BaseApplication):
    def __init__(self, config: Config, *, physical: Storage, shared: SharedSealState, settings: CoreSettings,
                 notifier: Notifier | None) -> None:
        self.vaultd_config = config
        self.physical = physical
        self.shared = shared
        self.settings = settings
        self.notifier = notifier
        super().__init__()

    def load_config(self) -> None:
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
            "bind": [item.address for item in listeners],
            "workers": workers,
            "worker_class": "gthread",
            "threads": config.threads,
            "timeout": 60,
            "graceful_timeout": 10,
            "keepalive": 30,
            "errorlog": "-",
            "accesslog": None,
            "loglevel": "warning" if config.log_level.lower() not in ("debug", "trace") else "debug",
            "proc_name": "vaultd",
            "preload_app": False,
            "when_ready": self._when_ready,
            "on_exit": self._on_exit,
        }
        if not first.tls_disable:
            settings["certfile"] = first.tls_cert_file
            settings["keyfile"] = first.tls_key_file
        for key, value in settings.items():
            self.cfg.set(key, value)
        self.worker_count = workers

    def _when_ready(self, _arbiter: Any) -> None:
        if self.notifier is not None:
            self.notifier.start()

    def _on_exit(self, _arbiter: Any) -> None:
        if self.notifier is not None:
            self.notifier.stopping()

    def load(self) -> Any:
        core = Core(self.physical, self.shared, self.settings)
        return create_app(core, max_request_size=self.vaultd_config.listeners[0].max_request_size)


def build(config: Config) -> tuple[Storage, SharedSealState, CoreSettings]:
    physical = open_storage(config.storage.type, config.storage.options)
    shared = SharedSealState.create(lock_memory=not config.disable_mlock)
    settings = CoreSettings(
        seal=open_seal(config),
        cluster_name=config.cluster_name or "",
        storage_type=config.storage.type,
        default_lease_ttl=config.default_lease_ttl,
        max_lease_ttl=config.max_lease_ttl,
    )
    return physical, shared, settings


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
    try:
        config = dev_config(args.dev_listen_address) if args.dev else load_config(args.config)
    except ConfigError as exc:
        print(f"Error loading configuration: {exc}", file=sys.stderr)
        return 1
    setup_logging(config.log_level)
    notify_socket = os.environ.pop("NOTIFY_SOCKET", None)
    try:
        physical, shared, settings = build(config)
    except (ConfigError, ValueError) as exc:
        print(f"Error starting vaultd: {exc}", file=sys.stderr)
        return 1
    master_core = Core(physical, shared, settings)
    if args.dev:
        unseal_key, root_token = dev_bootstrap(master_core)
        address = config.listeners[0].address
        print(
            "WARNING! dev mode is enabled: storage is in memory and the server starts unsealed.\n\n"
            f"    $ export VAULT_ADDR='http://{address}'\n\n"
            f"Unseal Key: {unseal_key}\nRoot Token: {root_token}\n",
            flush=True,
        )
    notifier = Notifier(shared, master_core, notify_socket, config.workers or os.cpu_count() or 1)
    app = VaultdApplication(config, physical=physical, shared=shared, settings=settings, notifier=notifier)
    notifier.workers = app.worker_count
    log.info("vaultd %s starting: storage %s, seal %s", __version__, config.storage.type,
             settings.seal.type if settings.seal else "shamir")
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
    args = parser.parse_args(argv)
    if args.command == "version":
        print(f"vaultd v{__version__}")
        return 0
    if not args.dev and not args.config:
        parser.error("server needs --config FILE or --dev")
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
