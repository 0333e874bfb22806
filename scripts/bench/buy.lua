-- wrk script for scripts/bench-buy: POST "{}" to PATH, each request as the next shopper.
--
--   wrk -t T -c C -d D -s buy.lua http://127.0.0.1:PORT -- TOKEN_FILE PATH T
--
-- Thread i (of T) takes every T-th token of TOKEN_FILE, so no two threads share a shopper; a
-- thread that runs out starts over (those repeats then meet per_user_limit: 409). Status codes
-- are counted per thread in response() and summed in done(), which prints "BENCH key value"
-- lines for the bash script to read.

local threads = {}
local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  local token_file, nthreads = args[1], tonumber(args[3])
  path = args[2]
  tokens = {}
  local i = 0
  for line in io.lines(token_file) do
    if i % nthreads == id then
      tokens[#tokens + 1] = line
    end
    i = i + 1
  end
  if #tokens == 0 then
    error("no tokens for thread " .. id .. " in " .. token_file)
  end
  headers = { ["Content-Type"] = "application/json" }
  next_token = 0
  statuses = {}
  wrapped = 0
end

function request()
  next_token = next_token + 1
  if next_token > #tokens then
    next_token = 1
    wrapped = wrapped + 1
  end
  headers["Authorization"] = "Bearer " .. tokens[next_token]
  return wrk.format("POST", path, headers, "{}")
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local seconds = summary.duration / 1e6
  local total, wraps = {}, 0
  for _, thread in ipairs(threads) do
    for code, n in pairs(thread:get("statuses")) do
      total[code] = (total[code] or 0) + n
    end
    wraps = wraps + thread:get("wrapped")
  end
  local e = summary.errors
  io.write("BENCH generator wrk\n")
  io.write(string.format("BENCH requests %d\n", summary.requests))
  io.write(string.format("BENCH duration_s %.3f\n", seconds))
  io.write(string.format("BENCH rps %.1f\n", summary.requests / seconds))
  io.write(string.format("BENCH p50_ms %.2f\n", latency:percentile(50) / 1000))
  io.write(string.format("BENCH p99_ms %.2f\n", latency:percentile(99) / 1000))
  io.write(string.format("BENCH max_ms %.2f\n", latency.max / 1000))
  local codes = {}
  for code in pairs(total) do codes[#codes + 1] = code end
  table.sort(codes)
  for _, code in ipairs(codes) do
    io.write(string.format("BENCH status %d %d\n", code, total[code]))
  end
  io.write(string.format("BENCH socket_errors connect=%d read=%d write=%d timeout=%d\n",
                         e.connect, e.read, e.write, e.timeout))
  if wraps > 0 then
    io.write(string.format("BENCH wrapped token list restarted %d time(s) (a repeated shopper gets 409 from buy)\n", wraps))
  end
end
