-- POST a KV v2 write to the URL wrk was given: every request creates a new
-- version of the same secret, as an application rotating a value would.
wrk.method = "POST"
wrk.headers["X-Vault-Token"] = os.getenv("BENCH_TOKEN")
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"data":{"username":"bench","password":"' .. string.rep("p", 32) .. '"}}'
