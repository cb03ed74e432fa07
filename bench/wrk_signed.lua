-- wrk script for bench/ingest.py: POST pre-signed, unique Ringez webhook bodies.
--
-- wrk's Lua cannot compute HMAC-SHA256, so bench/ingest.py writes a file of
-- "<signature> <body>" lines (each body unique, timestamp recent) and this script
-- sends them in order; each receiver still verifies every signature for real.
-- Thread i of n takes lines i, i+n, i+2n, ... so no two threads send the same body.
-- Once a thread runs out it starts over (those are duplicates; ingest.py counts them).
-- done() prints one JSON line prefixed "BENCH_JSON " with the counts and percentiles.
--
--   wrk -t2 -c64 -d10s -s bench/wrk_signed.lua http://127.0.0.1:8000/webhooks/ringez \
--       -- /tmp/requests.txt 2

local counter = 0
local threads = {}

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  local path = args[1]
  local nthreads = tonumber(args[2] or "1")
  requests = {}
  local n = 0
  local line_no = 0
  for line in io.lines(path) do
    if line_no % nthreads == id then
      local sp = string.find(line, " ", 1, true)
      local sig = string.sub(line, 1, sp - 1)
      local body = string.sub(line, sp + 1)
      local headers = {}
      headers["Content-Type"] = "application/json"
      headers["X-Ringez-Signature"] = sig
      n = n + 1
      requests[n] = wrk.format("POST", nil, headers, body)
    end
    line_no = line_no + 1
  end
  count = n
  index = 0
  wraps = 0
end

function request()
  index = index + 1
  if index > count then
    index = 1
    wraps = wraps + 1
  end
  return requests[index]
end

function done(summary, latency, requests_)
  local wrapped = 0
  for _, t in ipairs(threads) do
    wrapped = wrapped + (t:get("wraps") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors_connect":%d,"errors_read":%d,"errors_write":%d,"errors_status":%d,' ..
    '"errors_timeout":%d,"thread_wraps":%d,"lat_mean_us":%.1f,"lat_p50_us":%d,' ..
    '"lat_p90_us":%d,"lat_p99_us":%d,"lat_p999_us":%d,"lat_max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout, wrapped,
    latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max))
end
