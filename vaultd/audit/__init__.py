"""Audit devices: where entries go (``file``, ``syslog``) and how they are
made (HMAC of every string, Vault's JSON entry).  Floor 2: nothing here
knows the core, HTTP or Flask; :mod:`vaultd.core.audit` drives it."""
