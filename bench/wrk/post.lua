-- wrk script for the tabserve benchmark (bench/run.sh).
-- POSTs the JSON body read from the file named by BENCH_BODY to the URL given to wrk, counts every
-- response per HTTP status in a response() hook, and prints one machine-readable line from done():
--   BENCH_JSON {"requests":..., "statuses":{"200":...}, "latency_us":{...}, ...}
-- The latency quantiles in "bounds_us" are upper bounds on the p99 of the 2xx and of the non-2xx
-- responses taken separately, derived from the overall histogram (see bench/wrkresult.py).

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

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

statuses = {}

function response(status, headers, body)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
end

local function q(latency, p)
  if p >= 100 then return latency.max end
  if p < 0 then p = 0 end
  return latency:percentile(p)
end

function done(summary, latency, requests)
  local merged = {}
  for _, thread in ipairs(threads) do
    local counts = thread:get("statuses")
    if counts ~= nil then
      for code, n in pairs(counts) do
        merged[code] = (merged[code] or 0) + n
      end
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
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"duration_us":%d,"requests":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"statuses":{%s},"latency_us":{"min":%d,"mean":%.1f,"max":%d,"stdev":%.1f,"percentiles":{%s}},' ..
    '"bounds_us":{"p99_2xx_upper":%d,"p99_non2xx_upper":%d}}\n',
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    table.concat(parts, ","),
    latency.min, latency.mean, latency.max, latency.stdev, table.concat(pcts, ","),
    q(latency, 100 - share_ok), q(latency, 100 - (1 - share_ok))))
end
