"""vaultctl, the operator CLI: Vault's command-line conventions over the HTTP API only."""
