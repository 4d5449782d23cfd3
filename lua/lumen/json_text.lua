--- JSON text decoded with the order of object keys remembered (lua-cjson
-- forgets it, and a JSON Schema's property order is the order a model should
-- write them in).
--   local json_text = require "lumen.json_text"
--   local v, err = json_text.decode(text)     -- nil, "JSON at byte N: ..." on error
--   json_text.order(t)                        -- an object's keys in order, or nil
-- null is lua-cjson's null (when lua-cjson is there).
local M = {}

local null
do
  local ok, cjson = pcall(require, "cjson")
  null = ok and cjson.null or {}
end
M.null = null

--- The UTF-8 bytes of code point cp.
function M.utf8_char(cp)
  if cp < 0x80 then return string.char(cp) end
  if cp < 0x800 then return string.char(0xC0 + math.floor(cp / 64), 0x80 + cp % 64) end
  if cp < 0x10000 then return string.char(0xE0 + math.floor(cp / 4096), 0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64) end
  return string.char(0xF0 + math.floor(cp / 262144), 0x80 + math.floor(cp / 4096) % 64, 0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
end

local order_of = setmetatable({}, { __mode = "k" })  -- object table -> its keys in order

--- The keys of an object decoded by this module, in the order the text gave them (or nil).
function M.order(t) return order_of[t] end

--- Records the key order of object t (as decode does), for to_gbnf and encoders.
function M.set_order(t, keys) order_of[t] = keys end

--- Decodes JSON text (objects remember their key order); nil, message on error.
function M.decode(text)
  local pos = 1
  local function fail(msg) error({ msg = string.format("JSON at byte %d: %s", pos, msg) }) end
  local function ws() pos = text:find("[^ \t\r\n]", pos) or #text + 1 end
  local value
  local escapes = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }
  local function str()
    pos = pos + 1
    local out = {}
    while true do
      local c = text:sub(pos, pos)
      if c == "" then fail("unterminated string") end
      if c == '"' then pos = pos + 1; return table.concat(out) end
      if c == "\\" then
        local e = text:sub(pos + 1, pos + 1)
        if e == "u" then
          local cp = tonumber(text:sub(pos + 2, pos + 5), 16) or fail("bad \\u escape")
          pos = pos + 6
          if cp >= 0xD800 and cp < 0xDC00 and text:sub(pos, pos + 1) == "\\u" then
            local lo = tonumber(text:sub(pos + 2, pos + 5), 16)
            if lo and lo >= 0xDC00 and lo < 0xE000 then cp = 0x10000 + (cp - 0xD800) * 1024 + (lo - 0xDC00); pos = pos + 6 end
          end
          out[#out + 1] = M.utf8_char(cp)
        else
          out[#out + 1] = escapes[e] or fail("bad escape")
          pos = pos + 2
        end
      else
        local j = text:find('["\\]', pos) or #text + 1
        out[#out + 1] = text:sub(pos, j - 1)
        pos = j
      end
    end
  end
  function value()
    ws()
    local c = text:sub(pos, pos)
    if c == "{" then
      pos = pos + 1
      local t, keys = {}, {}
      ws()
      if text:sub(pos, pos) == "}" then pos = pos + 1; order_of[t] = keys; return t end
      while true do
        ws()
        if text:sub(pos, pos) ~= '"' then fail("expecting a key") end
        local k = str()
        ws()
        if text:sub(pos, pos) ~= ":" then fail("expecting ':'") end
        pos = pos + 1
        if t[k] == nil then keys[#keys + 1] = k end
        t[k] = value()
        ws()
        local d = text:sub(pos, pos)
        pos = pos + 1
        if d == "}" then order_of[t] = keys; return t end
        if d ~= "," then fail("expecting ',' or '}'") end
      end
    elseif c == "[" then
      pos = pos + 1
      local t = {}
      ws()
      if text:sub(pos, pos) == "]" then pos = pos + 1; return t end
      while true do
        t[#t + 1] = value()
        ws()
        local d = text:sub(pos, pos)
        pos = pos + 1
        if d == "]" then return t end
        if d ~= "," then fail("expecting ',' or ']'") end
      end
    elseif c == '"' then return str()
    elseif text:sub(pos, pos + 3) == "true" then pos = pos + 4; return true
    elseif text:sub(pos, pos + 4) == "false" then pos = pos + 5; return false
    elseif text:sub(pos, pos + 3) == "null" then pos = pos + 4; return null
    else
      local num = text:match("^-?%d+%.?%d*[eE]?[-+]?%d*", pos)
      if not num or num == "" or not tonumber(num) then fail("unexpected character") end
      pos = pos + #num
      return tonumber(num)
    end
  end
  local ok, res = pcall(function()
    local v = value()
    ws()
    if pos <= #text then fail("text after the value") end
    return v
  end)
  if ok then return res end
  if type(res) == "table" then return nil, res.msg end
  error(res, 0)
end

return M
