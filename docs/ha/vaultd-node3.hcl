# vaultd HA example: node 3 of 3 (/etc/vaultd/vaultd.hcl on 10.0.0.3).
# The three files differ only in this node's addresses (listener, api_addr,
# cluster_addr).  Set up PostgreSQL first: postgresql-setup.md, next to the
# package's README (/usr/share/doc/vaultd/), and "Running several nodes" in
# that README.

# The same database on every node.  The password is not here: put it in
# /etc/default/vaultd (root-only, 0600) as VAULT_PG_CONNECTION_URL, which
# overrides connection_url (see postgresql-setup.md).
storage "postgresql" {
  connection_url = "postgresql://vaultd@db.example:5432/vaultd?sslmode=verify-full"
  ha_enabled     = "true"
  # table        = "vault_kv_store"   # Vault's default names; created when missing
  # ha_table     = "vault_ha_locks"
  # max_parallel = 8                  # connections per vaultd process
}

listener "tcp" {
  address       = "10.0.0.3:8200"
  tls_cert_file = "/etc/vaultd/tls/vaultd.crt"   # root:vaultd 0640
  tls_key_file  = "/etc/vaultd/tls/vaultd.key"
}

# Required with ha_enabled: where standbys redirect clients (307).
api_addr     = "https://10.0.0.3:8200"
# Reported by sys/leader only (vaultd does not forward requests).
cluster_addr = "https://10.0.0.3:8201"

# The same key on every node; each node runs its own vaultd-unsealer.service,
# which unseals that node (and only it) after every start.  Initialise once,
# on any one node:  vaultctl operator init -recovery-shares=5 -recovery-threshold=3
seal "awskms" {
  region     = "eu-west-1"
  kms_key_id = "alias/vaultd"
}

# Each node's metrics say whether it is the active node
# (vaultd_ha_active, vaultd_ha_role{role}, vaultd_ha_lock_renewals_total,
# vaultd_ha_lock_lost_total).
telemetry {
  prometheus_retention_time = "24h"
  disable_hostname          = true
}

log_level = "info"
