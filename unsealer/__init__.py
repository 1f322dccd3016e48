"""vaultd-unsealer: the agent that auto-unseals vaultd through AWS KMS."""
