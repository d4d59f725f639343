-- wrk script for benchmarks/service_bench.py: POST /landmarks with pre-built multipart bodies, cycled.
-- args: <folder with body1.bin ... bodyN.bin> <N> <boundary>
local bodies = {}
local boundary = ""
local counter = 0

init = function(args)
  local dir, n = args[1], tonumber(args[2])
  boundary = args[3]
  for i = 1, n do
    local f = assert(io.open(dir .. "/body" .. i .. ".bin", "rb"))
    bodies[i] = f:read("*a")
    f:close()
  end
end

request = function()
  counter = counter + 1
  local headers = { ["Content-Type"] = "multipart/form-data; boundary=" .. boundary }
  return wrk.format("POST", "/landmarks", headers, bodies[(counter % #bodies) + 1])
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %.1f %.1f %.1f %d\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(95), latency:percentile(99),
    e.status + e.connect + e.read + e.write + e.timeout))
end
