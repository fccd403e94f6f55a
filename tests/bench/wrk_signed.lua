-- wrk script of the webhook benchmark: POST signed webhook bodies, each used once.
-- wrk -s tests/bench/wrk_signed.lua URL -- BODIES_FILE THREADS
-- BODIES_FILE holds one "<X-Hub-Signature-256>\t<json>" per line; thread k sends lines
-- k, k+THREADS, k+2*THREADS... and wraps around (counted in "wrapped") when it runs out.
local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  local nthreads = tonumber(args[2])
  sigs, bodies, idx, wrapped = {}, {}, 0, 0
  local i = 0
  for line in io.lines(args[1]) do
    if i % nthreads == tid then
      local tab = line:find("\t", 1, true)
      sigs[#sigs + 1] = line:sub(1, tab - 1)
      bodies[#bodies + 1] = line:sub(tab + 1)
    end
    i = i + 1
  end
end

function request()
  idx = idx + 1
  if idx > #bodies then
    idx = 1
    wrapped = wrapped + 1
  end
  return wrk.format("POST", nil,
    {["Content-Type"] = "application/json", ["X-Hub-Signature-256"] = sigs[idx]},
    bodies[idx])
end

function done(summary, latency, requests)
  local wraps = 0
  for _, t in ipairs(threads) do wraps = wraps + t:get("wrapped") end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,'
    .. '"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,'
    .. '"wrapped":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    wraps))
end
