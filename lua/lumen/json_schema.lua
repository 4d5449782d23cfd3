--- JSON Schema -> GBNF, for lumen.sampler.json_schema and a server's response_format.
--   local gbnf, err = require("lumen.json_schema").to_gbnf(schema)   -- nil, message when refused
-- schema: a Lua table (as lua-cjson decodes it), JSON text (decoded here, keeping
-- the order of object keys, which decides the order properties are generated in;
-- a table loses it and properties then come required first, by name), or
-- "json_object" for any JSON object.
--
-- Supported: type (also a list of types), properties, required,
-- additionalProperties (absent or false: only the declared properties; true or a
-- schema: more keys, never a declared one again), enum, const, nested objects,
-- items (a schema or a list: a tuple), prefixItems, minItems, maxItems, anyOf,
-- oneOf (as anyOf: the branches' exclusivity is not enforced, so give them
-- disjoint shapes), allOf of object schemas (merged), $ref to #, #/$defs/NAME
-- or #/definitions/NAME (recursion allowed), string minLength/maxLength,
-- pattern (a regex subset: literals, escapes \d \w \s \D \W \S \. ..., classes
-- [a-z] [^...], groups (...) (?:...), |, * + ? {m} {m,} {m,n}, . and the
-- anchors ^ $ at the ends; unanchored ends match anything, as JSON Schema
-- says), integer minimum/maximum/exclusiveMinimum/exclusiveMaximum (any
-- integers), number minimum/maximum (integer bounds >= 0), format date,
-- date-time, time, uuid, email, nullable (OpenAPI). Annotations (title,
-- description, examples, default, $schema, $id, $comment, ...) are ignored.
-- Anything else is refused with its name: the grammar never allows what the
-- schema forbids. Strings never contain raw control characters, and \u escapes
-- of surrogates are not generated (so each character is one code point).
local M = {}

local ANNOTATIONS = {
  title = true, description = true, examples = true, default = true, ["$schema"] = true, ["$id"] = true,
  ["$comment"] = true, deprecated = true, readOnly = true, writeOnly = true, ["$defs"] = true,
  definitions = true, contentMediaType = true, contentEncoding = true, ["$anchor"] = true, example = true,
}

local json_text = require "lumen.json_text"
local null = json_text.null
M.null = null
M.decode = json_text.decode
local utf8_char = json_text.utf8_char

local function keys_in_order(t, first)
  local keys = json_text.order(t)
  if keys then return keys end
  keys = {}
  for k in pairs(t) do if type(k) == "string" then keys[#keys + 1] = k end end
  table.sort(keys, function(a, b)
    local fa, fb = first and first[a] or false, first and first[b] or false
    if fa ~= fb then return fa end
    return a < b
  end)
  return keys
end

-- ---- GBNF text pieces ---------------------------------------------------------

-- a GBNF literal for the bytes of s
local function lit(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    if c == "\n" then return "\\n" elseif c == "\t" then return "\\t" elseif c == "\r" then return "\\r" end
    if c == '"' or c == "\\" then return "\\" .. c end
    return string.format("\\x%02X", c:byte())
  end) .. '"'
end

-- the JSON text of a value (compact)
local function to_json(v)
  local t = type(v)
  if v == null then return "null" end
  if t == "boolean" then return tostring(v) end
  if t == "number" then
    if v == math.floor(v) and math.abs(v) < 2 ^ 53 then return string.format("%d", v) end
    return string.format("%.17g", v)
  end
  if t == "string" then
    return '"' .. v:gsub('[%c"\\]', function(c)
      local named = { ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t", ["\b"] = "\\b", ["\f"] = "\\f" }
      return named[c] or string.format("\\u%04x", c:byte())
    end) .. '"'
  end
  if t == "table" then
    if #v > 0 or next(v) == nil then
      local parts = {}
      for i = 1, #v do parts[i] = to_json(v[i]) end
      return "[" .. table.concat(parts, ",") .. "]"
    end
    local parts = {}
    for _, k in ipairs(keys_in_order(v)) do parts[#parts + 1] = to_json(k) .. ":" .. to_json(v[k]) end
    return "{" .. table.concat(parts, ",") .. "}"
  end
  error({ msg = "a value of Lua type " .. t .. " in enum/const" })
end

local PRIMITIVES = {
  ws = [[| " " | "\n" [ ]{0,12}]],
  char = [=[[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" ([0-9a-cA-CefEF] [0-9a-fA-F]{3} | [dD] [0-7] [0-9a-fA-F]{2}))]=],
  string = [["\"" char{0,MAX_STRING} "\"" ws]],
  integer = [[("-"? ("0" | [1-9] [0-9]{0,15})) ws]],
  number = [[("-"? ("0" | [1-9] [0-9]{0,15})) ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,3})? ws]],
  boolean = [[("true" | "false") ws]],
  null = [["null" ws]],
  value = [[object | array | string | number | boolean | null]],
  object = [["{" ws ( string ":" ws value ("," ws string ":" ws value){0,MAX_KEYS} )? "}" ws]],
  array = [["[" ws ( value ("," ws value){0,MAX_ITEMS} )? "]" ws]],
  digit2 = "[0-9]{2}",
  date = [=["\"" date-body "\"" ws]=],
  ["date-body"] = [=[[0-9]{4} "-" (("0" [13578] | "1" [02]) "-" ("0" [1-9] | [12] [0-9] | "3" [01]) | ("0" [469] | "11") "-" ("0" [1-9] | [12] [0-9] | "30") | "02-" ("0" [1-9] | "1" [0-9] | "2" [0-8]))]=],
  ["time-body"] = [=[([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ("." [0-9]{1,6})? ("Z" | [+-] ([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9])]=],
  time = [=["\"" time-body "\"" ws]=],
  ["date-time"] = [=["\"" date-body "T" time-body "\"" ws]=],
  uuid = [=["\"" [0-9a-f]{8} "-" [0-9a-f]{4} "-" [0-9a-f]{4} "-" [0-9a-f]{4} "-" [0-9a-f]{12} "\"" ws]=],
  email = [=["\"" [a-zA-Z0-9._+-]{1,32} "@" [a-zA-Z0-9-]{1,32} ("." [a-zA-Z]{2,8}){1,2} "\"" ws]=],
}
local DEPS = {
  string = { "char", "ws" }, integer = { "ws" }, number = { "ws" }, boolean = { "ws" }, null = { "ws" },
  value = { "object", "array", "string", "number", "boolean", "null" },
  object = { "ws", "string", "value" }, array = { "ws", "value" },
  date = { "date-body", "ws" }, time = { "time-body", "ws" }, ["date-time"] = { "date-body", "time-body", "ws" },
  uuid = { "ws" }, email = { "ws" },
}

-- ---- the converter ----------------------------------------------------------------

local Conv = {} -- internal: the converter's state
Conv.__index = Conv

local function refuse(fmt, ...) error({ msg = "json schema: " .. string.format(fmt, ...) }) end

function Conv:add(name, body)
  self.rules[name] = body
  self.names[#self.names + 1] = name
  return name
end

function Conv:fresh(hint)
  hint = (hint or "r"):gsub("[^%w-]", "-"):gsub("^-+", ""):sub(1, 40)
  if hint == "" then hint = "r" end
  local name, i = hint, 1
  while self.rules[name] ~= nil or PRIMITIVES[name] or self.reserved[name] do i = i + 1; name = hint .. "-" .. i end
  self.reserved[name] = true
  return name
end

-- the bounds a schema leaves open (see to_gbnf's opts): "{0,N}", or "*" when unbounded
function Conv:upto(what, from)
  local n = self.limits[what]
  from = from or 0
  if not n then return from == 0 and "*" or string.format("{%d,}", from) end
  return string.format("{%d,%d}", from, math.max(from, n))
end

-- Any JSON value / object / array, nested at most max_depth levels (the levels
-- are rules value, value-2, ... whose innermost holds scalars only).
function Conv:generic()
  if self.rules.value then return end
  for _, p in ipairs({ "string", "number", "boolean", "null", "ws" }) do self:prim(p) end
  local D = self.max_depth
  local function lv(name, k) return k == 1 and name or name .. "-" .. k end
  for k = 1, D do
    local scalars = "string | number | boolean | null"
    if k == D then
      self:add(lv("value", k), scalars)
    else
      local v = lv("value", k + 1)
      self:add(lv("value", k), lv("object", k) .. " | " .. lv("array", k) .. " | " .. scalars)
      self:add(lv("object", k), '"{" ws ( string ":" ws ' .. v .. ' ("," ws string ":" ws ' .. v .. ")" .. self:upto("keys") .. ' )? "}" ws')
      self:add(lv("array", k), '"[" ws ( ' .. v .. ' ("," ws ' .. v .. ")" .. self:upto("items") .. ' )? "]" ws')
    end
  end
end

function Conv:prim(name)
  if name == "value" or name == "object" or name == "array" then self:generic(); return name end
  if not self.rules[name] then
    local body = PRIMITIVES[name]:gsub("{0,MAX_(%u+)}", function(w)
      return self:upto(({ STRING = "string", KEYS = "keys", ITEMS = "items" })[w])
    end)
    self:add(name, body)
    for _, d in ipairs(DEPS[name] or {}) do self:prim(d) end
  end
  return name
end

-- where the path of a schema is, for messages
local function at(path) return path == "" and "the schema" or path end

function Conv:check_keywords(s, path, known)
  local bad = {}
  for k in pairs(s) do
    if type(k) == "string" and not known[k] and not ANNOTATIONS[k] and not k:match("^x%-") then bad[#bad + 1] = k end
  end
  if #bad > 0 then
    table.sort(bad)
    refuse("unsupported keyword%s %s at %s", #bad > 1 and "s" or "", "'" .. table.concat(bad, "', '") .. "'", at(path))
  end
end

function Conv:resolve(ref, path)
  if ref == "#" then return self.root, "root" end
  local kind, name = ref:match("^#/(%$?%w+)/(.+)$")
  if not kind or (kind ~= "$defs" and kind ~= "definitions") then refuse("$ref '%s' at %s: only #, #/$defs/NAME and #/definitions/NAME are supported", ref, at(path)) end
  name = name:gsub("~1", "/"):gsub("~0", "~")
  local defs = self.root[kind]
  local target = type(defs) == "table" and defs[name]
  if type(target) ~= "table" then refuse("$ref '%s' at %s: no such definition", ref, at(path)) end
  return target, name
end

-- integer range [lo, hi] (either nil: open) as GBNF alternatives over digits
local function digits_range(a, b)
  -- a <= b, both >= 0, same number of digits (strings)
  if #a == 1 then return a == b and lit(a) or "[" .. a .. "-" .. b .. "]" end
  local a1, b1, ar, br = a:sub(1, 1), b:sub(1, 1), a:sub(2), b:sub(2)
  if a1 == b1 then return lit(a1) .. " (" .. digits_range(ar, br) .. ")" end
  local alts = { lit(a1) .. " (" .. digits_range(ar, string.rep("9", #ar)) .. ")" }
  if b1:byte() - a1:byte() > 1 then
    local lo, hi = string.char(a1:byte() + 1), string.char(b1:byte() - 1)
    alts[#alts + 1] = (lo == hi and lit(lo) or "[" .. lo .. "-" .. hi .. "]") .. " [0-9]{" .. #ar .. "}"
  end
  alts[#alts + 1] = lit(b1) .. " (" .. digits_range(string.rep("0", #br), br) .. ")"
  return table.concat(alts, " | ")
end

-- non-negative integers in [lo, hi] (hi nil: unbounded), no leading zeros
local function nonneg_range(lo, hi)
  local alts = {}
  local a = string.format("%d", lo)
  if hi then
    local b = string.format("%d", hi)
    for len = #a, #b do
      local from = len == #a and a or "1" .. string.rep("0", len - 1)
      local to = len == #b and b or string.rep("9", len)
      alts[#alts + 1] = "(" .. digits_range(from, to) .. ")"
    end
  else
    if #a > 16 then refuse("integer bound %s is too large", a) end
    alts[#alts + 1] = "(" .. digits_range(a, string.rep("9", #a)) .. ")"
    alts[#alts + 1] = "[1-9] [0-9]{" .. #a .. "," .. math.max(#a, 15) .. "}"
  end
  return table.concat(alts, " | ")
end

local function int_range(lo, hi)
  if lo and hi and lo > hi then refuse("integer range [%d, %d] is empty", lo, hi) end
  local alts = {}
  if not lo or lo < 0 then -- negatives: "-" then [max(1, -hi), -lo]
    local nlo = (hi and hi < 0) and -hi or 1
    local nhi = lo and -lo or nil
    alts[#alts + 1] = '"-" (' .. nonneg_range(nlo, nhi) .. ")"
  end
  if not hi or hi >= 0 then alts[#alts + 1] = nonneg_range(math.max(lo or 0, 0), hi) end
  return "(" .. table.concat(alts, " | ") .. ")"
end

-- ---- regex (pattern) -> GBNF over JSON string characters ------------------------------

local RAW_ANY = [=[[^"\\\x00-\x1F\x7F]]=]
local UNSAFE_CLASS = [=["\\\x00-\x1F\x7F]=]
local CLASS_ESC = { d = "0-9", w = "a-zA-Z0-9_", s = " " } -- \s: a space (tabs and newlines need escapes)
local CLASS_RANGES = { d = { { 48, 57 } }, w = { { 48, 57 }, { 65, 90 }, { 97, 122 }, { 95, 95 } }, s = { { 32, 32 } } }

-- the code point at s[pos] (UTF-8) and the position after it
local function read_cp(s, pos)
  local b = s:byte(pos)
  local n = b < 0x80 and 1 or b >= 0xF0 and 4 or b >= 0xE0 and 3 or b >= 0xC0 and 2 or 1
  local cp = n == 1 and b or b % (2 ^ (7 - n))
  for i = 1, n - 1 do cp = cp * 64 + (s:byte(pos + i) or 0x80) % 64 end
  return cp, pos + n
end

local function class_cp(cp)
  if cp < 0x20 or cp == 0x7F or cp == 0x5D or cp == 0x5B or cp == 0x5C or cp == 0x5E or cp == 0x2D or cp == 0x22 then
    return string.format("\\x%02X", cp)
  end
  return utf8_char(cp)
end

local function class_char(c) return class_cp((read_cp(c, 1))) end

local function emit_ranges(ranges)
  local out = {}
  for _, r in ipairs(ranges) do out[#out + 1] = r[1] == r[2] and class_cp(r[1]) or class_cp(r[1]) .. "-" .. class_cp(r[2]) end
  return table.concat(out)
end

-- the ranges without the characters a JSON string cannot hold raw
local function subtract_unsafe(ranges)
  local out = {}
  local cuts = { { 0, 31 }, { 34, 34 }, { 92, 92 }, { 127, 127 } }
  for _, r in ipairs(ranges) do
    local pieces = { { r[1], r[2] } }
    for _, c in ipairs(cuts) do
      local next_pieces = {}
      for _, p in ipairs(pieces) do
        if p[2] < c[1] or p[1] > c[2] then next_pieces[#next_pieces + 1] = p
        else
          if p[1] < c[1] then next_pieces[#next_pieces + 1] = { p[1], c[1] - 1 } end
          if p[2] > c[2] then next_pieces[#next_pieces + 1] = { c[2] + 1, p[2] } end
        end
      end
      pieces = next_pieces
    end
    for _, p in ipairs(pieces) do out[#out + 1] = p end
  end
  return out
end

function Conv:pattern(re, path)
  local pos = 1
  local function bad(msg) refuse("pattern '%s' at %s: %s", re, at(path), msg) end
  local alternation
  local function literal_char(c)
    if c == '"' then return [["\\\""]] end
    if c == "\\" then return [["\\\\"]] end
    if c:byte() < 32 then bad("control characters are not supported") end
    return lit(c)
  end
  local function atom()
    local c = re:sub(pos, pos)
    if c == "(" then
      pos = pos + 1
      if re:sub(pos, pos + 1) == "?:" then pos = pos + 2 elseif re:sub(pos, pos) == "?" then bad("group syntax '(?' other than (?: is not supported") end
      local inner = alternation()
      if re:sub(pos, pos) ~= ")" then bad("missing ')'") end
      pos = pos + 1
      return "(" .. inner .. ")"
    elseif c == "[" then
      pos = pos + 1
      local neg = re:sub(pos, pos) == "^"
      if neg then pos = pos + 1 end
      local ranges, first = {}, true
      while re:sub(pos, pos) ~= "]" or first do
        first = false
        local ch = re:sub(pos, pos)
        if ch == "" then bad("missing ']'") end
        local lo
        if ch == "\\" then
          local e = re:sub(pos + 1, pos + 1)
          pos = pos + 2
          if CLASS_RANGES[e] then
            for _, r in ipairs(CLASS_RANGES[e]) do ranges[#ranges + 1] = r end
            goto continue
          end
          if e == "" or e:match("[DWSbB1-9]") then bad("\\" .. e .. " inside a class is not supported") end
          lo = ({ n = 10, t = 9, r = 13 })[e] or e:byte()
        else
          lo, pos = read_cp(re, pos)
        end
        do
          local hi = lo
          if re:sub(pos, pos) == "-" and re:sub(pos + 1, pos + 1) ~= "]" and re:sub(pos + 1, pos + 1) ~= "" then
            if re:sub(pos + 1, pos + 1) == "\\" then bad("escaped range ends are not supported") end
            hi, pos = read_cp(re, pos + 1)
            if hi < lo then bad("a reversed range") end
          end
          ranges[#ranges + 1] = { lo, hi }
        end
        ::continue::
      end
      pos = pos + 1
      -- never a raw quote, backslash or control character inside a JSON string
      if neg then return "[^" .. emit_ranges(ranges) .. UNSAFE_CLASS .. "]" end
      ranges = subtract_unsafe(ranges)
      if #ranges == 0 then bad("a class of only characters JSON must escape is not supported") end
      return "[" .. emit_ranges(ranges) .. "]"
    elseif c == "." then
      pos = pos + 1
      return RAW_ANY
    elseif c == "\\" then
      local e = re:sub(pos + 1, pos + 1)
      pos = pos + 2
      if CLASS_ESC[e] then return "[" .. CLASS_ESC[e] .. "]" end
      if e == "D" then return '[^0-9"\\\\\\x00-\\x1F\\x7F]' end
      if e == "W" then return '[^a-zA-Z0-9_"\\\\\\x00-\\x1F\\x7F]' end
      if e == "S" then return '[^ \\t"\\\\\\x00-\\x1F\\x7F]' end
      if e:match("[bBAZzGkpP1-9]") or e == "" then bad("\\" .. e .. " is not supported") end
      if e == "n" or e == "t" or e == "r" then return lit("\\" .. e) end
      return literal_char(e)
    elseif c == "^" or c == "$" then
      bad("anchors are supported only at the start and end")
    elseif c:match("[*+?{]") then
      bad("a quantifier with nothing before it")
    else
      local start = pos
      local _, nxt = read_cp(re, pos)
      pos = nxt
      if nxt - start > 1 then return lit(re:sub(start, nxt - 1)) end
      return literal_char(c)
    end
  end
  local function quantified()
    local a = atom()
    local q = re:sub(pos, pos)
    -- unbounded repetitions get the string bound (opts.max_string), as strings do
    if q == "*" or q == "+" or q == "?" then
      pos = pos + 1
      if re:sub(pos, pos) == "?" or re:sub(pos, pos) == "+" then pos = pos + 1 end -- lazy/possessive: same language
      if q == "?" then return a .. q end
      return a .. self:upto("string", q == "+" and 1 or 0)
    elseif q == "{" then
      local body = re:match("^{(%d*,?%d*)}", pos)
      if not body or body == "" or body:sub(1, 1) == "," then bad("bad {m,n}") end
      pos = pos + #body + 2
      local m = body:match("^(%d+),$")
      if m then return a .. self:upto("string", tonumber(m)) end
      return a .. "{" .. body .. "}"
    end
    return a
  end
  local function sequence()
    local items = {}
    while pos <= #re do
      local c = re:sub(pos, pos)
      if c == "|" or c == ")" then break end
      if c == "$" and pos == #re then break end
      items[#items + 1] = quantified()
    end
    return #items > 0 and table.concat(items, " ") or '""'
  end
  function alternation()
    local alts = { sequence() }
    while re:sub(pos, pos) == "|" do pos = pos + 1; alts[#alts + 1] = sequence() end
    return table.concat(alts, " | ")
  end
  local anchored_start = re:sub(1, 1) == "^"
  if anchored_start then pos = 2 end
  local body = alternation()
  local anchored_end = re:sub(pos, pos) == "$" and pos == #re
  if anchored_end then pos = pos + 1 end
  if pos <= #re then bad("unexpected '" .. re:sub(pos, pos) .. "' at offset " .. (pos - 1)) end
  self:prim("char")
  local any = "char" .. self:upto("string")
  local pre, post = anchored_start and "" or any .. " ", anchored_end and "" or " " .. any
  return '"\\"" ' .. pre .. "(" .. body .. ")" .. post .. ' "\\"" ws'
end

-- ---- schemas -----------------------------------------------------------------------

local STRING_KEYS = { type = true, minLength = true, maxLength = true, pattern = true, format = true, nullable = true, enum = true, const = true }
local NUMBER_KEYS = { type = true, minimum = true, maximum = true, exclusiveMinimum = true, exclusiveMaximum = true, nullable = true, enum = true, const = true }
local OBJECT_KEYS = { type = true, properties = true, required = true, additionalProperties = true, minProperties = true, maxProperties = true, nullable = true, enum = true, const = true }
local ARRAY_KEYS = { type = true, items = true, prefixItems = true, minItems = true, maxItems = true, uniqueItems = true, nullable = true, enum = true, const = true }
local KEYS_OF = { string = STRING_KEYS, integer = NUMBER_KEYS, number = NUMBER_KEYS, object = OBJECT_KEYS, array = ARRAY_KEYS,
                  boolean = { type = true, nullable = true }, null = { type = true } }
local FORMATS = { date = "date", ["date-time"] = "date-time", time = "time", uuid = "uuid", email = "email" }

local function num(v, name, path)
  if v ~= nil and type(v) ~= "number" then refuse("%s at %s must be a number", name, at(path)) end
  return v
end

function Conv:string_rule(s, path)
  local minl, maxl = num(s.minLength, "minLength", path), num(s.maxLength, "maxLength", path)
  if s.format ~= nil then
    if s.pattern ~= nil or minl or maxl then refuse("format with pattern/minLength/maxLength at %s is not supported", at(path)) end
    local f = FORMATS[s.format]
    if not f then refuse("unsupported format '%s' at %s (supported: date, date-time, time, uuid, email)", tostring(s.format), at(path)) end
    return self:prim(f)
  end
  if s.pattern ~= nil then
    if type(s.pattern) ~= "string" then refuse("pattern at %s must be a string", at(path)) end
    if minl or maxl then refuse("pattern with minLength/maxLength at %s is not supported", at(path)) end
    self:prim("ws")
    return self:pattern(s.pattern, path)
  end
  if minl or maxl then
    minl = minl or 0
    if maxl and maxl < minl then refuse("maxLength below minLength at %s", at(path)) end
    if minl > 2000 or (maxl and maxl > 2000) then refuse("string lengths above 2000 at %s are not supported", at(path)) end
    self:prim("char"); self:prim("ws")
    local count = maxl and "{" .. math.floor(minl) .. "," .. math.floor(maxl) .. "}" or self:upto("string", math.floor(minl))
    return '"\\"" char' .. count .. ' "\\"" ws'
  end
  return self:prim("string")
end

function Conv:number_rule(s, path, integer)
  local lo, hi = num(s.minimum, "minimum", path), num(s.maximum, "maximum", path)
  local xlo, xhi = s.exclusiveMinimum, s.exclusiveMaximum
  if type(xlo) == "boolean" or type(xhi) == "boolean" then -- draft 4 style
    if xlo == true and lo then xlo = lo; lo = nil elseif xlo == false then xlo = nil end
    if xhi == true and hi then xhi = hi; hi = nil elseif xhi == false then xhi = nil end
  end
  num(xlo, "exclusiveMinimum", path); num(xhi, "exclusiveMaximum", path)
  if not (lo or hi or xlo or xhi) then return self:prim(integer and "integer" or "number") end
  self:prim("ws")
  if integer then
    local a = lo and math.ceil(lo) or nil
    if xlo then a = math.max(a or -math.huge, math.floor(xlo) + 1) end
    local b = hi and math.floor(hi) or nil
    if xhi then b = math.min(b or math.huge, math.ceil(xhi) - 1) end
    return int_range(a, b) .. " ws"
  end
  if xlo or xhi or (lo and lo ~= math.floor(lo)) or (hi and hi ~= math.floor(hi)) then
    refuse("number bounds at %s: only minimum/maximum with integer values are supported", at(path))
  end
  if lo and hi and hi < lo then refuse("maximum below minimum at %s", at(path)) end
  local frac = '("." [0-9]{1,16})?'
  -- magnitudes in [a, b] (b nil: unbounded): an integer part below b with any
  -- fraction, or b itself with a zero fraction
  local function mag(a, b)
    if not b then return "(" .. nonneg_range(a, nil) .. ") " .. frac end
    local exact = string.format('"%d" ("." "0"{1,16})?', b)
    if b == a then return exact end
    return "((" .. nonneg_range(a, b - 1) .. ") " .. frac .. " | " .. exact .. ")"
  end
  local alts = {}
  if not lo or lo < 0 then alts[#alts + 1] = '"-" ' .. mag((hi and hi < 0) and -hi or 0, lo and -lo or nil) end
  if not hi or hi >= 0 then alts[#alts + 1] = mag(math.max(lo or 0, 0), hi) end
  return "(" .. table.concat(alts, " | ") .. ") ws"
end

function Conv:literal_rule(values, path)
  local alts = {}
  for _, v in ipairs(values) do
    local ok, j = pcall(to_json, v)
    if not ok then refuse("enum/const at %s: %s", at(path), type(j) == "table" and j.msg or tostring(j)) end
    alts[#alts + 1] = lit(j)
  end
  if #alts == 0 then refuse("empty enum at %s", at(path)) end
  self:prim("ws")
  return "(" .. table.concat(alts, " | ") .. ") ws"
end

-- a JSON string that is none of the words (an extra property's key)
function Conv:key_not_in(words)
  local trie = { kids = {}, order = {} }
  for _, w in ipairs(words) do
    local node = trie
    for ch in w:gmatch("[%z\1-\127\194-\244][\128-\191]*") do
      if not node.kids[ch] then node.kids[ch] = { kids = {}, order = {} }; node.order[#node.order + 1] = ch end
      node = node.kids[ch]
    end
    node.word = true
  end
  self:prim("char")
  local function rule(node)
    local name = self:fresh("key-not")
    local alts, excl = {}, {}
    for _, ch in ipairs(node.order) do
      local j = to_json(ch):sub(2, -2)
      if j:sub(1, 1) ~= "\\" then excl[#excl + 1] = class_char(j) end
      alts[#alts + 1] = lit(j) .. " " .. rule(node.kids[ch])
    end
    local others = #excl > 0 and "[^" .. table.concat(excl) .. UNSAFE_CLASS .. "]" or RAW_ANY
    alts[#alts + 1] = "(" .. others .. ' | "\\\\" (["\\\\/bfnrt] | "u" [0-9a-fA-F]{4})) char' .. self:upto("string")
    if not node.word then alts[#alts + 1] = '""' end
    self:add(name, table.concat(alts, " | "))
    return name
  end
  return '"\\"" ' .. rule(trie) .. ' "\\""'
end

function Conv:object_rule(s, path, hint)
  if s.properties == nil and s.additionalProperties == nil and s.required == nil then return self:prim("object") end
  local props = s.properties or {}
  if type(props) ~= "table" then refuse("properties at %s must be an object", at(path)) end
  local req = {}
  if s.required ~= nil then
    if type(s.required) ~= "table" then refuse("required at %s must be a list", at(path)) end
    for _, k in ipairs(s.required) do
      if props[k] == nil and s.additionalProperties ~= true and type(s.additionalProperties) ~= "table" then
        refuse("required property '%s' at %s is not among the properties", tostring(k), at(path))
      end
      req[k] = true
    end
  end
  local items = {} -- { kind = "req"|"opt"|"extra", body }
  local declared, n_req = {}, 0
  for _, k in ipairs(keys_in_order(props, req)) do
    declared[#declared + 1] = k
    local v = self:visit(props[k], path .. "/properties/" .. k, (hint and hint .. "-" or "") .. k)
    if v then
      items[#items + 1] = { kind = req[k] and "req" or "opt", body = lit(to_json(k)) .. ' ws ":" ws ' .. v }
    elseif req[k] then
      return nil -- a required property cut off by the recursion depth
    end
    if req[k] then n_req = n_req + 1 end
  end
  for k in pairs(req) do
    if props[k] == nil then
      refuse("required property '%s' at %s has no schema in properties (not supported)", tostring(k), at(path))
    end
  end
  local ap = s.additionalProperties
  if ap ~= nil and ap ~= false and ap ~= true and type(ap) ~= "table" then refuse("additionalProperties at %s must be a boolean or a schema", at(path)) end
  local has_extra = ap == true or type(ap) == "table"
  if has_extra then
    local value = ap == true and self:prim("value") or self:visit(ap, path .. "/additionalProperties", (hint or "obj") .. "-extra")
    if value then items[#items + 1] = { kind = "extra", body = self:key_not_in(declared) .. ' ws ":" ws ' .. value } end
  end
  local minp, maxp = num(s.minProperties, "minProperties", path), num(s.maxProperties, "maxProperties", path)
  if minp and minp > n_req then refuse("minProperties above the number of required properties at %s is not supported", at(path)) end
  if maxp and (has_extra or maxp < #declared) then refuse("maxProperties at %s is not supported (below the declared properties, or with additionalProperties)", at(path)) end
  self:prim("ws")
  -- T[i]: the items from i on, each after a comma; F[i]: the same with none emitted yet
  local n = #items
  local T, F = { [n + 1] = '""' }, { [n + 1] = '""' }
  local base = self:fresh((hint or "obj"))
  for i = n, 1, -1 do
    local it = items[i]
    local t, f
    if it.kind == "req" then
      t = '"," ws ' .. it.body .. " " .. T[i + 1]
      f = it.body .. " " .. T[i + 1]
    elseif it.kind == "opt" then
      t = '("," ws ' .. it.body .. ")? " .. T[i + 1]
      f = it.body .. " " .. T[i + 1] .. " | " .. F[i + 1]
    else
      t = '("," ws ' .. it.body .. ")" .. self:upto("keys") .. " " .. T[i + 1]
      f = it.body .. ' ("," ws ' .. it.body .. ")" .. self:upto("keys") .. " " .. T[i + 1] .. " | " .. F[i + 1]
    end
    T[i] = self:add(base .. "-t" .. i, t)
    F[i] = self:add(base .. "-f" .. i, f)
  end
  return '"{" ws ' .. F[1] .. ' "}" ws'
end

function Conv:array_rule(s, path, hint)
  local minn, maxn = num(s.minItems, "minItems", path) or 0, num(s.maxItems, "maxItems", path)
  if s.uniqueItems == true then refuse("unsupported keyword 'uniqueItems' at %s (items cannot be kept distinct)", at(path)) end
  if maxn and maxn < minn then refuse("maxItems below minItems at %s", at(path)) end
  if minn > 1000 or (maxn and maxn > 1000) then refuse("minItems/maxItems above 1000 at %s are not supported", at(path)) end
  self:prim("ws")
  local tuple = s.prefixItems or (type(s.items) == "table" and #s.items > 0 and s.items) or nil
  if tuple then
    if s.prefixItems and s.items ~= nil and s.items ~= false then refuse("prefixItems with items at %s is not supported", at(path)) end
    local parts = {}
    for i, sub in ipairs(tuple) do
      local v = self:visit(sub, path .. "/prefixItems/" .. (i - 1), (hint or "tuple") .. "-" .. i)
      if not v then return nil end
      parts[#parts + 1] = (i > 1 and '"," ws ' or "") .. v
    end
    if minn > #tuple then refuse("minItems above the tuple's length at %s", at(path)) end
    -- a tuple may stop early when minItems allows it
    local body = ""
    for i = #parts, 1, -1 do
      local inner = parts[i] .. (body ~= "" and " " .. body or "")
      body = i > minn and "(" .. inner .. ")?" or inner
    end
    return '"[" ws ' .. body .. ' "]" ws'
  end
  local item = (s.items == nil or s.items == true) and self:prim("value") or s.items ~= false and self:visit(s.items, path .. "/items", (hint or "arr") .. "-item")
  if not item and s.items ~= false then
    if minn > 0 then return nil end
    return '"[" ws "]" ws'
  end
  if s.items == false then
    if minn > 0 then refuse("items false with minItems at %s", at(path)) end
    return '"[" ws "]" ws'
  end
  local name = self:fresh((hint or "arr") .. "-item")
  self:add(name, item)
  local rest
  if maxn then
    rest = maxn <= 1 and "" or string.format('("," ws %s){%d,%d}', name, math.max(minn - 1, 0), maxn - 1)
  else
    rest = string.format('("," ws %s)', name) .. self:upto("items", math.max(minn - 1, 0))
  end
  if maxn == 0 then return '"[" ws "]" ws' end
  local body = name .. (rest ~= "" and " " .. rest or "")
  if minn == 0 then body = "(" .. body .. ")?" end
  return '"[" ws ' .. body .. ' "]" ws'
end

function Conv:merge_all_of(s, path)
  local merged = { type = "object", properties = {}, required = {} }
  local order = {}
  for i, part in ipairs(s.allOf) do
    if type(part) ~= "table" then refuse("allOf item %d at %s is not a schema", i, at(path)) end
    if part["$ref"] then part = self:resolve(part["$ref"], path) end
    local t = part.type
    if t ~= nil and t ~= "object" then refuse("allOf at %s: only object schemas can be merged", at(path)) end
    for k in pairs(part) do
      if k ~= "type" and k ~= "properties" and k ~= "required" and k ~= "additionalProperties" and not ANNOTATIONS[k] then
        refuse("allOf at %s: keyword '%s' in a part is not supported", at(path), k)
      end
    end
    for _, k in ipairs(keys_in_order(part.properties or {})) do
      if merged.properties[k] ~= nil then refuse("allOf at %s: property '%s' appears twice", at(path), k) end
      merged.properties[k] = part.properties[k]
      order[#order + 1] = k
    end
    for _, k in ipairs(part.required or {}) do merged.required[#merged.required + 1] = k end
    if part.additionalProperties ~= nil then merged.additionalProperties = part.additionalProperties end
  end
  json_text.set_order(merged.properties, order)
  for k, v in pairs(s) do if k ~= "allOf" and not ANNOTATIONS[k] then
    if k == "type" and v == "object" then else refuse("allOf at %s with the sibling keyword '%s' is not supported", at(path), k) end
  end end
  return merged
end

-- Returns a GBNF expression for schema s (rules for its parts added on the way).
function Conv:visit(s, path, hint)
  if s == true then return self:prim("value") end
  if s == false then refuse("the schema false at %s allows nothing", at(path)) end
  if type(s) ~= "table" then refuse("expected a schema (an object) at %s, got %s", at(path), type(s)) end
  self.depth = self.depth + 1
  if self.depth > 64 then refuse("schemas nested more than 64 deep at %s", at(path)) end
  local out = self:visit_inner(s, path, hint)
  self.depth = self.depth - 1
  if s.nullable == true then out = out and "(" .. out .. " | " .. self:prim("null") .. ")" or self:prim("null") end
  return out
end

function Conv:visit_inner(s, path, hint)
  if s["$ref"] ~= nil then
    self:check_keywords(s, path, { ["$ref"] = true })
    -- a definition that refers to itself is unrolled max_depth levels deep: below
    -- that its recursive branches are cut (an optional property, an array item, an
    -- anyOf branch), so a small model cannot nest until it runs out of tokens
    local target, name = self:resolve(s["$ref"], path)
    local d = self.active[target] or 0
    if d >= self.max_depth then return nil end
    self.ref_rules[target] = self.ref_rules[target] or {}
    local rule = self.ref_rules[target][d]
    if rule == nil then
      rule = self:fresh(d == 0 and name or name .. "-d" .. d)
      self.ref_rules[target][d] = rule
      self:add(rule, "") -- placeholder: recursion finds the name
      self.active[target] = d + 1
      local body = self:visit(target, s["$ref"], name)
      self.active[target] = d
      if body == nil then self.rules[rule] = nil; self.ref_rules[target][d] = false; return nil end
      self.rules[rule] = body
    end
    return rule or nil
  end
  for _, kw in ipairs({ "anyOf", "oneOf" }) do
    if s[kw] ~= nil then
      local known = { [kw] = true }
      self:check_keywords(s, path, known)
      if type(s[kw]) ~= "table" or #s[kw] == 0 then refuse("%s at %s must be a non-empty list", kw, at(path)) end
      local alts = {}
      for i, sub in ipairs(s[kw]) do alts[#alts + 1] = self:visit(sub, path .. "/" .. kw .. "/" .. (i - 1), (hint or kw) .. "-" .. i) end
      if #alts == 0 then return nil end
      return "(" .. table.concat(alts, " | ") .. ")"
    end
  end
  if s.allOf ~= nil then return self:visit(self:merge_all_of(s, path), path, hint) end
  if s.const ~= nil then
    self:check_keywords(s, path, { const = true, type = true })
    return self:literal_rule({ s.const }, path)
  end
  if s.enum ~= nil then
    self:check_keywords(s, path, { enum = true, type = true })
    if type(s.enum) ~= "table" then refuse("enum at %s must be a list", at(path)) end
    return self:literal_rule(s.enum, path)
  end
  local t = s.type
  if type(t) == "table" then
    if #t == 0 then refuse("empty type list at %s", at(path)) end
    local alts = {}
    for _, one in ipairs(t) do
      -- each type takes only its own keywords (maxLength applies to strings only)
      local own = KEYS_OF[one] or {}
      local copy = {}
      for k, v in pairs(s) do
        local foreign = false
        for other, keys in pairs(KEYS_OF) do if other ~= one and keys[k] and not own[k] then foreign = true end end
        if not foreign then copy[k] = v end
      end
      copy.type = one
      alts[#alts + 1] = self:visit_inner(copy, path, hint)
    end
    if #alts == 0 then return nil end
    return "(" .. table.concat(alts, " | ") .. ")"
  end
  if t == nil then
    if s.properties or s.additionalProperties ~= nil or s.required then t = "object"
    elseif s.items ~= nil or s.prefixItems then t = "array"
    elseif s.minLength or s.maxLength or s.pattern or s.format then t = "string"
    else
      self:check_keywords(s, path, { nullable = true })
      return self:prim("value")
    end
  end
  if t == "string" then self:check_keywords(s, path, STRING_KEYS); return self:string_rule(s, path) end
  if t == "integer" or t == "number" then self:check_keywords(s, path, NUMBER_KEYS); return self:number_rule(s, path, t == "integer") end
  if t == "boolean" then self:check_keywords(s, path, { type = true, nullable = true }); return self:prim("boolean") end
  if t == "null" then self:check_keywords(s, path, { type = true }); return self:prim("null") end
  if t == "object" then self:check_keywords(s, path, OBJECT_KEYS); return self:object_rule(s, path, hint) end
  if t == "array" then self:check_keywords(s, path, ARRAY_KEYS); return self:array_rule(s, path, hint) end
  refuse("unknown type '%s' at %s", tostring(t), at(path))
end

--- schema -> GBNF text, or nil and the message naming what is refused.
-- opts: compact (no whitespace between tokens); bounds for what a schema leaves
-- unbounded, so that a model cannot run past its token budget inside one string
-- or list (a schema's own maxLength / maxItems win; false lifts a bound):
-- max_string (characters, default 256), max_items (default 64), max_keys
-- (additional properties, default 32), max_depth (recursive $refs, default 6).
function M.to_gbnf(schema, opts)
  opts = opts or {}
  if schema == "json_object" or schema == nil and opts.json_object then schema = { type = "object" } end
  if type(schema) == "string" then
    local err
    schema, err = M.decode(schema)
    if schema == nil then return nil, "json schema: " .. err end
  end
  local function limit(v, default) if v == false then return nil end return v or default end
  local c = setmetatable({ rules = {}, names = {}, reserved = { root = true }, ref_rules = {}, active = {}, root = schema,
                           depth = 0, max_depth = opts.max_depth or 6,
                           limits = { string = limit(opts.max_string, 256), items = limit(opts.max_items, 64),
                                      keys = limit(opts.max_keys, 32) } }, Conv)
  local ok, res = pcall(function()
    if type(schema) == "table" and schema.type == "object" and next(schema, nil) == "type" and next(schema, "type") == nil then
      return c:prim("object") -- any JSON object
    end
    local r = c:visit(schema, "", nil)
    if r == nil then refuse("the schema has no value within %d levels of recursion", c.max_depth) end
    return r
  end)
  if not ok then
    if type(res) == "table" and res.msg then return nil, res.msg end
    error(res, 0)
  end
  if opts.compact then c.rules.ws = '""' end
  local lines = { "root ::= " .. res }
  for _, name in ipairs(c.names) do if c.rules[name] then lines[#lines + 1] = name .. " ::= " .. c.rules[name] end end
  return table.concat(lines, "\n") .. "\n"
end

return M
