-- wrk script for the tabserve benchmark (bench/run.sh).
-- POSTs the JSON body read from the file named by BENCH_BODY to the URL given to wrk, counts every
-- response per HTTP status in a response() hook, and prints one machine-readable line from done():
--   BENCH_JSON {"requests":..., "statuses":{"200":...}, "latency_us":{...}, ...}
-- The latency quantiles in "bounds_us" are upper bounds on the p99 of the 2xx and of the non-2xx
-- responses taken separately, derived from the overall histogram (see bench/wrkresult.py).
--
-- With BENCH_TAG=1 every request carries a unique X-Request-Id and its send time (CLOCK_MONOTONIC through
-- LuaJIT's ffi) is kept; a server that echoes the id (tabserve does, 503s included) lets response() time
-- each request itself, so "by_status_us" holds the exact quantiles of the 2xx and of the non-2xx responses.
-- Responses without the echoed id are counted as "untimed". It costs wrk a Lua call per request, so it is
-- used only where per-status latency matters (the overload section).

local body_path = os.getenv("BENCH_BODY")
if body_path == nil or body_path == "" then
  error("BENCH_BODY must name the request body file")
end
local fh = assert(io.open(body_path, "rb"))
local body = fh:read("*a")
fh:close()

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE") or "application/json"

local tagged = os.getenv("BENCH_TAG") == "1"
local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_no", #threads)
end

statuses = {}
lat_ok = {}
lat_err = {}
untimed = 0

if tagged then
  local ffi = require("ffi")
  ffi.cdef [[
    typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
    int clock_gettime(int clk_id, bench_timespec *tp);
  ]]
  local ts = ffi.new("bench_timespec")
  local function now_us()
    ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
    return tonumber(ts.tv_sec) * 1000000 + tonumber(ts.tv_nsec) / 1000
  end
  local sent = {}
  local counter = 0
  local prefix = "b"
  local headers = { ["Content-Type"] = wrk.headers["Content-Type"] }

  function init(args)
    prefix = "b" .. tostring(thread_no or 1) .. "-"
  end

  function request()
    counter = counter + 1
    local id = prefix .. counter
    headers["X-Request-Id"] = id
    sent[id] = now_us()
    return wrk.format(nil, nil, headers, nil)
  end

  function response(status, hdrs, _)
    local key = tostring(status)
    statuses[key] = (statuses[key] or 0) + 1
    local id = hdrs["x-request-id"] or hdrs["X-Request-Id"]
    local t0 = id and sent[id]
    if t0 == nil then
      untimed = untimed + 1
      return
    end
    sent[id] = nil
    local us = now_us() - t0
    if status >= 200 and status < 300 then
      lat_ok[#lat_ok + 1] = us
    else
      lat_err[#lat_err + 1] = us
    end
  end
else
  function response(status, headers, body)
    local key = tostring(status)
    statuses[key] = (statuses[key] or 0) + 1
  end
end

local function q(latency, p)
  if p >= 100 then return latency.max end
  if p < 0 then p = 0 end
  return latency:percentile(p)
end

-- exact quantile of a sorted array (nearest rank)
local function rank(sorted, p)
  local n = #sorted
  if n == 0 then return 0 end
  local i = math.ceil(p / 100 * n)
  if i < 1 then i = 1 end
  if i > n then i = n end
  return sorted[i]
end

local function quantiles(values)
  table.sort(values)
  local parts = { string.format('"count":%d', #values) }
  for _, p in ipairs({50, 90, 99, 99.9}) do
    table.insert(parts, string.format('"%g":%d', p, rank(values, p)))
  end
  table.insert(parts, string.format('"max":%d', rank(values, 100)))
  return "{" .. table.concat(parts, ",") .. "}"
end

function done(summary, latency, requests)
  local merged = {}
  local all_ok, all_err, no_time = {}, {}, 0
  for _, thread in ipairs(threads) do
    local counts = thread:get("statuses")
    if counts ~= nil then
      for code, n in pairs(counts) do
        merged[code] = (merged[code] or 0) + n
      end
    end
    if tagged then
      for _, v in ipairs(thread:get("lat_ok") or {}) do all_ok[#all_ok + 1] = v end
      for _, v in ipairs(thread:get("lat_err") or {}) do all_err[#all_err + 1] = v end
      no_time = no_time + (thread:get("untimed") or 0)
    end
  end
  local total, ok = 0, 0
  for code, n in pairs(merged) do
    total = total + n
    local c = tonumber(code)
    if c >= 200 and c < 300 then ok = ok + n end
  end
  local share_ok = 0
  if total > 0 then share_ok = ok / total end

  local parts = {}
  for code, n in pairs(merged) do
    table.insert(parts, string.format('"%s":%d', code, n))
  end
  local pcts = {}
  for _, p in ipairs({50, 75, 90, 99, 99.9, 99.99}) do
    table.insert(pcts, string.format('"%g":%d', p, q(latency, p)))
  end
  local by_status = ""
  if tagged then
    by_status = string.format(',"by_status_us":{"2xx":%s,"non2xx":%s,"untimed":%d}',
      quantiles(all_ok), quantiles(all_err), no_time)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"duration_us":%d,"requests":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"statuses":{%s},"latency_us":{"min":%d,"mean":%.1f,"max":%d,"stdev":%.1f,"percentiles":{%s}},' ..
    '"bounds_us":{"p99_2xx_upper":%d,"p99_non2xx_upper":%d}%s}\n',
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    table.concat(parts, ","),
    latency.min, latency.mean, latency.max, latency.stdev, table.concat(pcts, ","),
    q(latency, 100 - share_ok), q(latency, 100 - (1 - share_ok)), by_status))
end
