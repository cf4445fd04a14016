-- wrk script: P2P sends through the gateway, each with a fresh Idempotency-Key, spread over
-- the users that setup.py wrote (USERS_FILE, default /tmp/gwbench/users.txt).
local users = {}
local counter = 0
local threads = {}
local run = tostring(os.time())

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  local path = os.getenv("USERS_FILE") or "/tmp/gwbench/users.txt"
  for line in io.lines(path) do
    local token, from, to = line:match("(%S+) (%S+) (%S+)")
    table.insert(users, { token, from, to })
  end
end

function request()
  counter = counter + 1
  local u = users[(counter + id * 7) % #users + 1]
  local body = '{"from_wallet_id":"' .. u[2] .. '","to_wallet_id":"' .. u[3]
    .. '","amount":"0.01","currency":"USD"}'
  return wrk.format("POST", "/api/v1/transactions/send", {
    ["Authorization"] = "Bearer " .. u[1],
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = "b-" .. run .. "-" .. id .. "-" .. counter,
  }, body)
end

function done(summary, latency, requests)
  io.write(string.format("p50 %.2f ms  p95 %.2f ms  p99 %.2f ms  max %.2f ms\n",
    latency:percentile(50) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000))
  io.write(string.format("requests %d  non-2xx %d  timeouts %d  connect errors %d\n",
    summary.requests, summary.errors.status, summary.errors.timeout, summary.errors.connect))
end
