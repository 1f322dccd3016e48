-- GET one of BENCH_COUNT secrets under BENCH_PREFIX, picked at random per
-- request, so that a server's hot-path caches are not one entry wide.
local prefix = os.getenv("BENCH_PREFIX")
local count = tonumber(os.getenv("BENCH_COUNT"))
wrk.headers["X-Vault-Token"] = os.getenv("BENCH_TOKEN")

-- setup() runs in the main Lua state, init() in each thread's own: number the
-- threads so that they do not all draw the same random sequence.
local next_id = 1
function setup(thread)
  thread:set("thread_id", next_id)
  next_id = next_id + 1
end

function init(args)
  math.randomseed(os.time() * 1000 + thread_id * 7919)
end

function request()
  return wrk.format("GET", prefix .. math.random(0, count - 1))
end
