"""``vaultd-unsealer --config FILE``: the auto-unseal agent's entry point.

Exit codes are listed in :mod:`unsealer.exitcodes`; the permanent ones tell
systemd (``RestartPreventExitStatus=``) that restarting cannot help.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from types import FrameType

from unsealer import exitcodes
from unsealer.agent import Agent
from unsealer.client import DaemonClient
from unsealer.kms_process import KmsProcess
from unsealer.metrics import AgentMetrics
from unsealer.settings import SettingsError, settings_from_config
from vaultd.config import ConfigError, load_config
from vaultd.hardening import disable_core_dumps
from vaultd.logging import setup_logging
from vaultd.seal.awskms import AwsKmsConfigError

log = logging.getLogger("vaultd.unsealer")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vaultd-unsealer",
        description="Unseal vaultd through AWS KMS whenever it starts.",
        epilog="Exit codes: " + ", ".join(f"{code} {name}" for code, name in exitcodes.NAMES.items()),
    )
    parser.add_argument("-config", "--config", required=True, help="the daemon's config file (HCL or JSON)")
    parser.add_argument("-log-level", "--log-level", default=None, help="overrides the file's log_level")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help is 0, a usage error is 2
        return int(exc.code or 0)
    disable_core_dumps()
    setup_logging(args.log_level or "info", identifier="vaultd-unsealer")
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        log.error("cannot use the config: %s", exc)
        return exitcodes.CONFIG
    if args.log_level is None:
        setup_logging(config.log_level, identifier="vaultd-unsealer")
    if config.seal is None or config.seal.type != "awskms":
        log.error('%s has no seal "awskms" stanza: there is nothing for the agent to unwrap', args.config)
        return exitcodes.CONFIG
    level = args.log_level or config.log_level
    seal: KmsProcess | None = None
    old_seal: KmsProcess | None = None
    try:
        settings = settings_from_config(config)
        # The AWS SDK runs in a child process while there is something to
        # unwrap, never in this one (see unsealer.kms_process).
        seal = KmsProcess(config.seal.options, log_level=level)
        # A migration between two KMS keys: the old stanza (disabled) beside
        # the new one; the agent unwraps with the old until the move is done.
        old = config.disabled_seal
        if old is not None and old is not config.seal and old.type == "awskms":
            old_seal = KmsProcess(old.options, log_level=level)
        client = DaemonClient(settings.address, ca_file=settings.ca_file, timeout=settings.timeout,
                              channel=settings.channel, tls=settings.unix_tls)
        # The AWS profile is read now, so that a wrong one is a config error
        # at start; the child stays for the first look at the daemon.
        seal.check()
        if old_seal is not None:
            old_seal.check()
            old_seal.rest()
    except (SettingsError, AwsKmsConfigError) as exc:
        log.error("cannot use the config: %s", exc)
        for started in (seal, old_seal):
            if started is not None:
                started.rest()
        return exitcodes.CONFIG
    assert seal is not None  # made in the try above, or returned

    agent = Agent(client, seal, settings, metrics=AgentMetrics(settings.metrics_textfile), old_seal=old_seal,
                  retired=config.seal.disabled)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s", signal.Signals(signum).name)
        agent.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return agent.run()
    except Exception:  # the agent's own errors are handled; this is a bug
        log.exception("unexpected error")
        return exitcodes.UNEXPECTED
    finally:
        client.close()
        seal.rest()
        if old_seal is not None:
            old_seal.rest()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
