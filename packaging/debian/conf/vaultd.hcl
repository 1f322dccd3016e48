# vaultd configuration, in Vault's format (HCL or JSON).  See vaultd(8).
#
# The service reads this file as the "vaultd" user: keep it root:vaultd 0640
# (the package sets that), since a seal stanza may hold credentials.
# After editing:  systemctl restart vaultd
# log_level and the TLS certificate/key files are re-read by:  systemctl reload vaultd

# Encrypted data and the wrapped keys live here (systemd's StateDirectory),
# in one SQLite database, /var/lib/vaultd/vaultd.db.  A directory that holds
# data of the file backend (the default before sqlite) and no vaultd.db is
# served with the file backend, with a warning at start: upgrades keep their
# data.  To move it to sqlite, stop vaultd and run "vaultd operator migrate"
# (see the README).  storage "file" { path = "..." } stays supported.
storage "sqlite" {
  path = "/var/lib/vaultd"
}

# Loopback only and without TLS, a safe default: nothing leaves this host.
# To serve other hosts, listen on their address with TLS:
#   address       = "0.0.0.0:8200"
#   tls_disable   = false
#   tls_cert_file = "/etc/vaultd/tls/vaultd.crt"
#   tls_key_file  = "/etc/vaultd/tls/vaultd.key"   # root:vaultd 0640
listener "tcp" {
  address     = "127.0.0.1:8200"
  tls_disable = true
}

log_level = "info"

# Prometheus metrics at /v1/sys/metrics?format=prometheus (a token with read
# on sys/metrics is needed unless the listener has
#   telemetry { unauthenticated_metrics_access = true }
# in it).  Alert rules and a Grafana dashboard: /usr/share/vaultd/monitoring/.
#
# telemetry {
#   prometheus_retention_time = "24h"
#   disable_hostname          = true
# }

# Without a seal stanza the server uses the shamir seal: after every start,
# key holders unseal it with "vaultctl operator unseal".
#
# Auto-unseal through AWS KMS: uncomment, then initialise with recovery
# shares ("vaultctl operator init -recovery-shares=5 -recovery-threshold=3").
# Credentials come from the instance role, or from /etc/default/vaultd
# (daemon: kms:Encrypt, kms:DescribeKey) and /etc/default/vaultd-unsealer
# (agent: kms:Decrypt), both root-only files; prefer them to access_key and
# secret_key here.
#
# seal "awskms" {
#   region     = "eu-west-1"
#   kms_key_id = "alias/vaultd"
#   # endpoint = "https://kms.eu-west-1.amazonaws.com"
# }
#
# The agent, vaultd-unsealer.service, runs only when a seal "awskms" stanza
# is present.  It talks to vaultd over a unix socket, /run/vaultd/unseal.sock
# by default (vaultd's runtime directory: only the vaultd user, which both
# services run as, can enter it).  The plaintext unseal key goes over it, so
# both ends check who is at the other end; the agent endpoints answer 403 on
# TCP.  Its settings (all optional):
#
# unsealer {
#   address         = "unix:///run/vaultd/unseal.sock"
#   initial_backoff = "500ms"
#   max_backoff     = "30s"
# }
#
# A TCP address ("http://127.0.0.1:8200") still works, with a warning: any
# local user who binds that port while vaultd restarts can pose as vaultd.
