"""``python -m vaultd.cli``: the same as the ``vaultctl`` entry point."""

from vaultd.cli.main import main

raise SystemExit(main())
