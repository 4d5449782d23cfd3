--- Prometheus text exposition for `lumen serve`: counters, gauges and one
-- histogram, kept in plain Lua tables (the server loop is single-threaded).
local M = {}
local Metrics = {}
Metrics.__index = Metrics

local TTFT_BUCKETS = { 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30 }

--- Empty counters, histogram and gauges.
function M.new()
  return setmetatable({
    requests = {},            -- "endpoint\0status" -> count
    prompt_tokens = 0, cached_prompt_tokens = 0, completion_tokens = 0, disconnects = 0,
    ttft = { counts = {}, sum = 0, n = 0 },
    window = {},              -- recent {time, tokens} samples for the decode rate
    gauges = {},              -- name -> {help, fn returning the value, type: gauge unless "counter"}
  }, Metrics)
end

--- Counts one answered request by endpoint and HTTP status.
function Metrics:request(endpoint, status)
  local k = endpoint .. "\0" .. status
  self.requests[k] = (self.requests[k] or 0) + 1
end

--- One time to first token, into the histogram.
function Metrics:observe_ttft(seconds)
  local h = self.ttft
  for i, le in ipairs(TTFT_BUCKETS) do
    if seconds <= le then h.counts[i] = (h.counts[i] or 0) + 1 end
  end
  h.sum, h.n = h.sum + seconds, h.n + 1
end

--- Records tokens decoded in one scheduler step, for the tokens/s gauge (last 10 s).
function Metrics:decoded(now, tokens)
  self.completion_tokens = self.completion_tokens + tokens
  local w = self.window
  w[#w + 1] = { now, tokens }
  while #w > 0 and w[1][1] < now - 10 do table.remove(w, 1) end
end

-- lumen.scheduler's observer events
--- Scheduler observer: n prompt tokens evaluated.
function Metrics:prompt_evaluated(n) self.prompt_tokens = self.prompt_tokens + n end
--- Scheduler observer: n prompt tokens found in a slot's cache.
function Metrics:prompt_cached(n) self.cached_prompt_tokens = self.cached_prompt_tokens + n end
--- Scheduler observer: a client left before its answer was complete.
function Metrics:disconnected() self.disconnects = self.disconnects + 1 end

--- Decoded tokens per second over the last 10 s.
function Metrics:decode_rate(now)
  local w, sum = self.window, 0
  while #w > 0 and w[1][1] < now - 10 do table.remove(w, 1) end
  if #w == 0 then return 0 end
  for _, s in ipairs(w) do sum = sum + s[2] end
  local span = now - w[1][1]
  return span > 0.5 and sum / span or 0
end

local function esc(v) return (tostring(v):gsub("[\\\"\n]", { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" })) end

--- The Prometheus text exposition of everything.
function Metrics:render(now)
  local o = {}
  local function add(s) o[#o + 1] = s end
  add("# HELP lumen_requests_total HTTP requests answered, by endpoint and status.")
  add("# TYPE lumen_requests_total counter")
  local keys = {}
  for k in pairs(self.requests) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do
    local ep, st = k:match("^(.-)%z(.*)$")
    add(string.format('lumen_requests_total{endpoint="%s",status="%s"} %d', esc(ep), esc(st), self.requests[k]))
  end
  add("# HELP lumen_prompt_tokens_total Prompt tokens evaluated.")
  add("# TYPE lumen_prompt_tokens_total counter")
  add("lumen_prompt_tokens_total " .. self.prompt_tokens)
  add("# HELP lumen_prompt_tokens_cached_total Prompt tokens whose KV cache a slot already held (not evaluated again).")
  add("# TYPE lumen_prompt_tokens_cached_total counter")
  add("lumen_prompt_tokens_cached_total " .. self.cached_prompt_tokens)
  add("# HELP lumen_completion_tokens_total Tokens generated.")
  add("# TYPE lumen_completion_tokens_total counter")
  add("lumen_completion_tokens_total " .. self.completion_tokens)
  add("# HELP lumen_client_disconnects_total Requests whose client left before the answer was complete.")
  add("# TYPE lumen_client_disconnects_total counter")
  add("lumen_client_disconnects_total " .. self.disconnects)
  add("# HELP lumen_decode_tokens_per_second Tokens generated per second over the last 10 s, all streams.")
  add("# TYPE lumen_decode_tokens_per_second gauge")
  add(string.format("lumen_decode_tokens_per_second %.3f", self:decode_rate(now)))
  add("# HELP lumen_time_to_first_token_seconds From request arrival to its first generated token.")
  add("# TYPE lumen_time_to_first_token_seconds histogram")
  local h = self.ttft
  for i, le in ipairs(TTFT_BUCKETS) do
    add(string.format('lumen_time_to_first_token_seconds_bucket{le="%g"} %d', le, h.counts[i] or 0))
  end
  add(string.format('lumen_time_to_first_token_seconds_bucket{le="+Inf"} %d', h.n))
  add(string.format("lumen_time_to_first_token_seconds_sum %.6f", h.sum))
  add(string.format("lumen_time_to_first_token_seconds_count %d", h.n))
  local names = {}
  for k in pairs(self.gauges) do names[#names + 1] = k end
  table.sort(names)
  for _, name in ipairs(names) do
    local g = self.gauges[name]
    add("# HELP " .. name .. " " .. g.help)
    add("# TYPE " .. name .. " " .. (g.type or "gauge"))
    add(string.format("%s %s", name, tostring(g.fn())))
  end
  return table.concat(o, "\n") .. "\n"
end

--- A gauge: name, help text and a function that reads its value at render time.
function Metrics:gauge(name, help, fn) self.gauges[name] = { help = help, fn = fn } end
--- A counter kept elsewhere, read the same way.
function Metrics:counter(name, help, fn) self.gauges[name] = { help = help, fn = fn, type = "counter" } end

return M
