--- Who may use `lumen serve`, and how much: API keys and per-key limits.
--
-- Keys come from a file or the environment, never the command line (where `ps`
-- shows them to every user of the machine). A presented key is hashed once and
-- its digest compared with every known key's in constant time (lm_ct_equal),
-- so neither which key nor how much of one matched shows in the timing.
-- Each key (or, without keys, the server as a whole) may be limited in
-- requests at once, requests per minute and tokens per minute (prompt and
-- completion); a request over a limit is refused with 429 and OpenAI's
-- x-ratelimit-* headers, which every answer to a limited key carries.
-- No I/O but reading the keys file; time is passed in, so specs can drive it.
local ffi = require "ffi"
local C = require "lumen.ffi"
local openai = require "lumen.openai"

local M = {}
local Gate = {}
Gate.__index = Gate

local LIMITS = { concurrent = true, requests_per_minute = true, tokens_per_minute = true }
local WINDOW = 60

local function digest(s)
  local hex = ffi.new("char[65]")
  C.lm_sha256_hex(s, #s, hex)
  return ffi.string(hex, 64)
end

--- Checks a limits table ({concurrent=, requests_per_minute=, tokens_per_minute=},
-- each a whole number >= 0, 0 = unlimited); `where` names it in errors.
function M.check_limits(t, where)
  if t == nil then return {} end
  if type(t) ~= "table" then error(where .. " must be a mapping of limits", 0) end
  local out = {}
  for k, v in pairs(t) do
    if not LIMITS[k] then
      error(string.format("%s: unknown limit '%s' (known: concurrent, requests_per_minute, tokens_per_minute)", where, tostring(k)), 0)
    end
    if type(v) ~= "number" or v ~= math.floor(v) or v < 0 then
      error(string.format("%s.%s must be a whole number >= 0 (0 = unlimited)", where, k), 0)
    end
    out[k] = v
  end
  return out
end

--- Keys from a file: a YAML list of {key, name, limits} where the name ends in
-- .yaml/.yml, otherwise one key per line (blank lines and # comments skipped).
function M.read_keys_file(path)
  if path:match("%.ya?ml$") then
    local doc = require("lumen.yaml").load_file(path)
    if type(doc) ~= "table" or (next(doc) ~= nil and #doc == 0) then
      error(path .. ": expected a list of {key: ..., name: ..., limits: {...}}", 0)
    end
    local keys = {}
    for i, e in ipairs(doc) do
      local where = string.format("%s: item %d", path, i)
      if type(e) ~= "table" or type(e.key) ~= "string" or e.key == "" then error(where .. " needs a non-empty 'key'", 0) end
      for k in pairs(e) do
        if k ~= "key" and k ~= "name" and k ~= "limits" then error(string.format("%s: unknown field '%s'", where, tostring(k)), 0) end
      end
      if e.name ~= nil and type(e.name) ~= "string" then error(where .. ": 'name' must be a string", 0) end
      keys[i] = { key = e.key, name = e.name, limits = M.check_limits(e.limits, where .. ".limits") }
    end
    return keys
  end
  local f, err = io.open(path, "rb")
  if not f then error("cannot read the API keys file: " .. tostring(err), 0) end
  local keys, n = {}, 0
  for line in f:lines() do
    n = n + 1
    local k = line:gsub("#.*$", ""):match("^%s*(.-)%s*$")
    if k ~= "" then
      if k:find("%s") then f:close() error(string.format("%s:%d: a key must not contain spaces", path, n), 0) end
      keys[#keys + 1] = { key = k }
    end
  end
  f:close()
  return keys
end

--- Keys from the environment: LUMEN_API_KEYS, separated by commas or spaces.
function M.env_keys(value)
  local keys = {}
  for k in (value or ""):gmatch("[^,%s]+") do keys[#keys + 1] = { key = k } end
  return keys
end

--- A gate over keys ({key, name?, limits?}...) with default limits for every key
-- (and for everyone when there are no keys).
function M.new(keys, defaults)
  local self = setmetatable({ keys = {}, defaults = defaults or {} }, Gate)
  local seen = {}
  for i, k in ipairs(keys or {}) do
    local d = digest(k.key)
    if not seen[d] then
      seen[d] = true
      local lim = {}
      for name in pairs(LIMITS) do lim[name] = (k.limits and k.limits[name]) or self.defaults[name] or 0 end
      self.keys[#self.keys + 1] = { digest = d, name = k.name or ("key" .. i), limits = lim,
                                    active = 0, requests = {}, tokens = {} }
    end
  end
  if #self.keys == 0 then
    local lim = {}
    for name in pairs(LIMITS) do lim[name] = self.defaults[name] or 0 end
    self.anonymous = { name = "-", limits = lim, active = 0, requests = {}, tokens = {} }
  end
  return self
end

--- Whether requests need an API key (some key is configured).
function Gate:required() return #self.keys > 0 end

--- The identity an Authorization header stands for, or nil (no or wrong key).
function Gate:identify(authorization)
  if self.anonymous then return self.anonymous end
  local key = (authorization or ""):match("^[Bb]earer%s+(.-)%s*$")
  if not key or key == "" then return nil end
  local d = digest(key)
  local found
  for _, k in ipairs(self.keys) do
    -- every key is compared, whichever matches
    if C.lm_ct_equal(d, k.digest, 64) then found = k end
  end
  return found
end

-- events older than the window fall out; the sum of what is left
local function window_sum(events, now)
  local first = 1
  while events[first] and events[first][1] <= now - WINDOW do first = first + 1 end
  if first > 1 then
    local n = #events
    for i = first, n do events[i - first + 1] = events[i] end
    for i = n - first + 2, n do events[i] = nil end
  end
  local s = 0
  for _, e in ipairs(events) do s = s + e[2] end
  return s
end

-- seconds until the window has room again (the oldest event leaves it)
local function reset_in(events, now)
  return events[1] and math.max(0, events[1][1] + WINDOW - now) or 0
end

-- OpenAI's duration form: "1s", "250ms", "6m0s"
local function duration(s)
  if s < 1 then return string.format("%dms", math.ceil(s * 1000)) end
  s = math.ceil(s)
  if s < 60 then return s .. "s" end
  return string.format("%dm%ds", math.floor(s / 60), s % 60)
end

-- the two windows OpenAI reports: its limit, the events that count, the header word
local RATES = { { "requests_per_minute", "requests" }, { "tokens_per_minute", "tokens" } }

--- x-ratelimit-* header lines for an identity ("" when it has no rate limits).
function Gate:headers(id, now)
  local out = {}
  for _, r in ipairs(RATES) do
    local limit, events = id.limits[r[1]], id[r[2]]
    if limit > 0 then
      out[#out + 1] = string.format("x-ratelimit-limit-%s: %d\r\nx-ratelimit-remaining-%s: %d\r\nx-ratelimit-reset-%s: %s\r\n",
        r[2], limit, r[2], math.max(0, limit - window_sum(events, now)), r[2], duration(reset_in(events, now)))
    end
  end
  return table.concat(out)
end

local function refuse(self, id, now, message, wait)
  error(setmetatable({ status = 429, message = message, type = "rate_limit_error", code = "rate_limit_exceeded",
                       retry_after = math.max(1, math.ceil(wait)), headers = self:headers(id, now) },
                     openai.ApiError), 0)
end

--- Admits a request of prompt_tokens for an identity, or raises a 429 ApiError
-- (with its headers). An admitted request holds one of the key's concurrent
-- places until release(id).
function Gate:admit(id, now, prompt_tokens)
  local lim = id.limits
  if lim.concurrent > 0 and id.active >= lim.concurrent then
    refuse(self, id, now, string.format("this API key already has %d requests running, its limit; retry when one ends", id.active), 1)
  end
  if lim.requests_per_minute > 0 and window_sum(id.requests, now) >= lim.requests_per_minute then
    refuse(self, id, now, string.format("this API key's limit of %d requests per minute is reached", lim.requests_per_minute),
           reset_in(id.requests, now))
  end
  if lim.tokens_per_minute > 0 then
    if prompt_tokens > lim.tokens_per_minute then
      refuse(self, id, now, string.format("the prompt has %d tokens, more than this API key's limit of %d tokens per minute",
                                          prompt_tokens, lim.tokens_per_minute), WINDOW)
    end
    if window_sum(id.tokens, now) + prompt_tokens > lim.tokens_per_minute then
      refuse(self, id, now, string.format("this API key's limit of %d tokens per minute is reached", lim.tokens_per_minute),
             reset_in(id.tokens, now))
    end
  end
  id.active = id.active + 1
  id.requests[#id.requests + 1] = { now, 1 }
  if prompt_tokens > 0 then id.tokens[#id.tokens + 1] = { now, prompt_tokens } end
end

--- Tokens generated for an identity (they count against tokens per minute).
function Gate:spend(id, now, n)
  if id.limits.tokens_per_minute > 0 and n > 0 then
    local last = id.tokens[#id.tokens]
    -- one event per second at most: a long stream does not grow the list per token
    if last and last[1] > now - 1 then last[2] = last[2] + n else id.tokens[#id.tokens + 1] = { now, n } end
  end
end

--- The end of an admitted request: its concurrent place goes back.
function Gate:release(id) id.active = math.max(0, id.active - 1) end

M._duration = duration
return M
