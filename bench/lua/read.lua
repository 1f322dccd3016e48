-- GET the URL wrk was given, authenticated.  The token comes from the
-- environment so that it never shows on a command line (ps, /proc/*/cmdline).
wrk.headers["X-Vault-Token"] = os.getenv("BENCH_TOKEN")
