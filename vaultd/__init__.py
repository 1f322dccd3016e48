"""vaultd: a Vault-compatible secrets server for Debian, auto-unsealed through AWS KMS."""

__version__ = "0.1.0"
