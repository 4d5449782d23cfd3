--- Small helpers shared by the Lua modules.
local ffi = require "ffi"
local C = require "lumen.ffi"

local util = {}

--- The C side's last error message.
function util.last_error()
  return ffi.string(C.lm_last_error())
end

--- Raises the C error (at the caller's caller) with an optional prefix.
function util.c_error(prefix, level)
  local msg = util.last_error()
  error(prefix and (prefix .. ": " .. msg) or msg, (level or 2) + 1)
end

--- Checks an argument's Lua type, naming the function and argument in the error.
function util.check_type(fname, argname, value, want, optional)
  if value == nil and optional then return end
  if type(value) ~= want then
    error(string.format("%s: %s must be a %s, got %s", fname, argname, want, type(value)), 3)
  end
end

--- Checks that value is an integer within [lo, hi].
function util.check_int(fname, argname, value, lo, hi)
  if type(value) ~= "number" or value ~= math.floor(value) or value < lo or value > hi then
    error(string.format("%s: %s must be an integer in [%d, %d], got %s", fname, argname, lo, hi, tostring(value)), 3)
  end
end

--- Length of the longest prefix of s that does not end inside a UTF-8 character.
function util.utf8_complete_len(s)
  return tonumber(C.lm_utf8_complete_len(s, #s))
end

local san_buf, san_cap = nil, 0
--- s with every ill-formed UTF-8 part (a stray byte of a byte-level token, a
-- character cut short) replaced by U+FFFD: generated text on its way into JSON.
function util.utf8_sanitize(s)
  local n = #s
  if C.lm_utf8_valid(s, n) then return s end
  if san_cap < 3 * n then
    san_cap = math.max(3 * n, 256)
    san_buf = ffi.new("char[?]", san_cap)
  end
  return ffi.string(san_buf, C.lm_utf8_sanitize(s, n, san_buf))
end

-- one growing buffer for the two encoders below
local enc_buf, enc_cap = nil, 0
local function encode_with(f, ptr, n, guess)
  if enc_cap < guess then enc_cap = math.max(guess, 4096); enc_buf = ffi.new("char[?]", enc_cap) end
  local k = f(ptr, n, enc_buf, enc_cap)
  if k < 0 then
    if k == -9223372036854775807LL - 1 then util.c_error(nil, 2) end
    enc_cap = tonumber(-k); enc_buf = ffi.new("char[?]", enc_cap)
    k = f(ptr, n, enc_buf, enc_cap)
  end
  return ffi.string(enc_buf, k)
end

--- n floats at ptr as a JSON array (in C: no element crosses into Lua).
function util.f32_json(ptr, n) return encode_with(C.lm_f32_to_json, ptr, n, 2 + n * 17) end

--- base64 of n bytes at ptr (OpenAI's base64 embeddings: the floats' bytes).
function util.base64(ptr, n) return encode_with(C.lm_base64_encode, ptr, n, (n + 2) / 3 * 4 + 4) end

--- The bytes of base64 text (standard alphabet, padding optional), or nil and
-- C's message naming the first bad character's offset.
function util.base64_decode(text)
  local cap = math.floor(#text / 4) * 3 + 3
  local buf = ffi.new("uint8_t[?]", cap)
  local k = C.lm_base64_decode(text, #text, buf, cap)
  if k < 0 then return nil, util.last_error() end
  return ffi.string(buf, k)
end

--- A seed for sampling when none is given: new each run (os.time() would repeat
-- within a second), from the kernel's random source.
function util.random_seed()
  local f = io.open("/dev/urandom", "rb")
  local b = f and f:read(6)
  if f then f:close() end
  if not b or #b < 6 then return os.time() end
  local v = 0
  for i = 1, 6 do v = v * 256 + b:byte(i) end
  return v -- < 2^48: exact in a double
end

--- Reads a whole file, or nil + message.
function util.read_file(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local s = f:read("*a")
  f:close()
  return s
end

--- Whether path can be opened for reading.
function util.file_exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

--- Whether path is a folder.
function util.is_dir(path)
  local f = io.open(path, "rb")
  if not f then return false end
  local ok, _, code = f:read(1)
  f:close()
  return ok == nil and code == 21 -- EISDIR: reading a folder fails so
end

--- The source tree: LUMEN_ROOT, or where this file lies.
function util.root()
  local r = os.getenv("LUMEN_ROOT")
  if r and r ~= "" then return r end
  local src = debug.getinfo(1, "S").source
  return src:sub(1, 1) == "@" and src:sub(2):match("^(.*)/lua/lumen/[^/]*$") or "."
end

--- Sampling settings merged: a new table with every layer's fields, later
-- layers winning (a model's registry defaults, then a command line's or a
-- request's settings). Layers may be nil. The one place where they merge
-- (lumen.sampler.merge, openai.lua's requests, generate, chat, the scheduler).
function util.merge_settings(...)
  local out = {}
  for i = 1, select("#", ...) do
    local layer = select(i, ...)
    if layer ~= nil then
      if type(layer) ~= "table" then error("merge_settings: layer " .. i .. " must be a table, got " .. type(layer), 2) end
      for k, v in pairs(layer) do out[k] = v end
    end
  end
  return out
end

--- prefix .. 24 random characters of [a-z0-9] (math.random; response and
-- request ids, as OpenAI's "chatcmpl-...", "batch_req_...").
function util.random_id(prefix)
  local t = {}
  for i = 1, 24 do t[i] = string.char(("abcdefghijklmnopqrstuvwxyz0123456789"):byte(math.random(36))) end
  return prefix .. table.concat(t)
end

return util
