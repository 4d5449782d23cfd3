--- Chat templates: a compiler for the subset of Jinja2 that Hugging Face chat templates use.
--
--   local T = require "lumen.template"
--   local render = T.compile(src)          -- cached by template text
--   local text = render{messages = {...}, add_generation_prompt = true, bos_token = "<s>"}
--   T.render(src, ctx)                     -- the same in one call
--
-- The template is lexed the way transformers' apply_chat_template configures Jinja (trim_blocks and lstrip_blocks
-- on, one trailing newline dropped), parsed into a small AST and turned into Lua source that is loaded once. The
-- generated code only ever sees template text as escaped string literals and identifiers, so templates cannot
-- inject Lua.
--
-- Values keep Python's meaning where a template can tell the difference:
--   * undefined is Lua nil: it renders as "", is falsy, and attribute access on it gives undefined again;
--   * Python's None is the sentinel T.none (put it in a context table where JSON has null);
--   * lists are Lua arrays, dicts are tables without [1]; T.list{} and T.dict{} mark the empty ones, and
--     T.dict(t, keys) records the key order that tojson and iteration use (otherwise keys are sorted);
--   * numbers are Lua numbers: an integral float renders like an int ("2", not Python's "2.0").
-- Errors: compile errors read "chat template line 3: unexpected 'endfor'"; raise_exception(msg) raises
-- "chat template: msg"; other runtime errors name the template line. All are raised at the caller (level 2).
--
-- Beyond what Jinja does: attribute access on undefined is undefined rather than an error (ChainableUndefined).
-- Not supported: include/extends/import/block, call blocks and caller(), recursive loops, loop.changed, *args in
-- calls, Markup semantics (|safe is a no-op, so `"x"|safe + s` does not HTML-escape s), case mapping of
-- non-ASCII letters, int/float distinction. T.globals, T.filters and T.tests may be extended; T.source(src)
-- shows the generated Lua.
local T = {}

local type, pairs, ipairs, next, tostring, tonumber = type, pairs, ipairs, next, tostring, tonumber
local error, pcall, xpcall, getmetatable, setmetatable, rawget = error, pcall, xpcall, getmetatable, setmetatable, rawget
local concat, sort, unpack = table.concat, table.sort, unpack
local floor, huge, abs = math.floor, math.huge, math.abs
local sfmt, sbyte, schar, ssub, sfind, sgsub, srep, slower, supper =
  string.format, string.byte, string.char, string.sub, string.find, string.gsub, string.rep, string.lower, string.upper

---------------------------------------------------------------------------------------------------------------
-- Values
---------------------------------------------------------------------------------------------------------------
local NONE = setmetatable({}, {__tostring = function() return "None" end})
local ListMT, DictMT, NSMT, LoopMT = {}, {}, {}, {}
local TupleMT = {}   -- a list that Python shows as a tuple: items() pairs, (a, b) literals
local key_order = setmetatable({}, {__mode = "k"})   -- dict -> array of keys in insertion order
local jcallable = setmetatable({}, {__mode = "k"})   -- functions called as f(args, kwargs)
local EMPTY = setmetatable({}, ListMT)               -- shared, never mutated

T.none = NONE
T.null = NONE

--- Marks t (default {}) as a Jinja list, so an empty one is not taken for a dict.
function T.list(t)
  t = t or {}
  if getmetatable(t) == nil then setmetatable(t, ListMT) end
  return t
end

--- Marks t (default {}) as a dict; keys, if given, is its key order (Python dicts keep insertion order).
function T.dict(t, keys)
  t = t or {}
  if getmetatable(t) == nil then setmetatable(t, DictMT) end
  if keys then key_order[t] = keys end
  return t
end

--- The key order T.dict recorded for t (nil when none was).
function T.key_order(t) return key_order[t] end

local function kind(v)
  local tv = type(v)
  if tv == "string" or tv == "number" then return tv end
  if tv == "nil" then return "undefined" end
  if tv == "boolean" then return "bool" end
  if tv == "table" then
    if v == NONE then return "none" end
    local mt = getmetatable(v)
    if mt == ListMT or mt == TupleMT then return "list" elseif mt == DictMT then return "dict"
    elseif mt == NSMT then return "namespace" elseif mt == LoopMT then return "loop" end
    if v[1] ~= nil then return "list" end
    if mt and mt.__call then return "function" end
    return "dict"
  end
  if tv == "function" then return "function" end
  return "object"
end
T.kind = kind

local PYTYPE = {string = "str", bool = "bool", undefined = "Undefined", none = "NoneType", list = "list",
  dict = "dict", namespace = "Namespace", loop = "LoopContext", ["function"] = "function", object = "object"}
local function pytype(v)
  if type(v) == "number" then return v == floor(v) and "int" or "float" end
  return PYTYPE[kind(v)]
end

local function rterr(fmt, ...) error(sfmt(fmt, ...), 0) end

local function is_list(v)
  if type(v) ~= "table" then return false end
  local mt = getmetatable(v)
  if mt == ListMT or mt == TupleMT then return true end
  return v[1] ~= nil and mt ~= DictMT and mt ~= NSMT and mt ~= LoopMT and v ~= NONE
end

local function is_dict(v)
  if type(v) ~= "table" or v == NONE then return false end
  local mt = getmetatable(v)
  if mt == DictMT then return true end
  return mt ~= ListMT and mt ~= TupleMT and mt ~= NSMT and mt ~= LoopMT and v[1] == nil and not (mt and mt.__call)
end

local function keycmp(a, b)
  local ta, tb = type(a), type(b)
  if ta ~= tb then return ta < tb end
  if ta == "number" or ta == "string" then return a < b end
  return tostring(a) < tostring(b)
end

--- A dict's keys: the recorded order first, then any others sorted.
local function dict_keys(d)
  local keys, n, seen = {}, 0, nil
  local order = key_order[d]
  if order then
    seen = {}
    for i = 1, #order do
      local k = order[i]
      if not seen[k] and rawget(d, k) ~= nil then n = n + 1; keys[n] = k; seen[k] = true end
    end
  end
  local extra
  for k in pairs(d) do
    if not (seen and seen[k]) then extra = extra or {}; extra[#extra + 1] = k end
  end
  if extra then
    sort(extra, keycmp)
    for i = 1, #extra do n = n + 1; keys[n] = extra[i] end
  end
  return setmetatable(keys, ListMT)
end

local function truthy(v)
  if v == nil or v == false or v == NONE then return false end
  local tv = type(v)
  if tv == "string" then return v ~= "" end
  if tv == "number" then return v ~= 0 end
  if tv == "table" then
    local mt = getmetatable(v)
    if mt == nil or mt == ListMT or mt == DictMT or mt == TupleMT then return next(v) ~= nil end
  end
  return true
end

-- Python's whitespace in the ASCII range (str.strip, str.split, \s in the lexer)
local WS = {[9] = true, [10] = true, [11] = true, [12] = true, [13] = true, [32] = true,
  [28] = true, [29] = true, [30] = true, [31] = true}

local function rstrip_ws(s)
  local e = #s
  while e > 0 and WS[sbyte(s, e)] do e = e - 1 end
  return ssub(s, 1, e)
end

local function strip_set(s, chars, left, right)
  local set
  if chars ~= nil and chars ~= NONE then
    set = {}
    for i = 1, #chars do set[sbyte(chars, i)] = true end
  else
    set = WS
  end
  local b, e = 1, #s
  if left then while b <= e and set[sbyte(s, b)] do b = b + 1 end end
  if right then while e >= b and set[sbyte(s, e)] do e = e - 1 end end
  return ssub(s, b, e)
end

local function is_ascii(s) return not sfind(s, "[\128-\255]") end

local function utf8_chars(s)
  local t, n = {}, 0
  for ch in s:gmatch("[%z\1-\127\192-\255][\128-\191]*") do n = n + 1; t[n] = ch end
  return t
end

local function utf8_len(s)
  if is_ascii(s) then return #s end
  local _, c = sgsub(s, "[^\128-\191]", "")
  return c
end

local function utf8_encode(cp)
  if cp < 0x80 then return schar(cp) end
  if cp < 0x800 then return schar(0xC0 + floor(cp / 64), 0x80 + cp % 64) end
  if cp < 0x10000 then
    return schar(0xE0 + floor(cp / 4096), 0x80 + floor(cp / 64) % 64, 0x80 + cp % 64)
  end
  return schar(0xF0 + floor(cp / 262144), 0x80 + floor(cp / 4096) % 64, 0x80 + floor(cp / 64) % 64, 0x80 + cp % 64)
end

--- Python's str()/repr() of a float: the shortest digits that read back, in Python's layout.
local function num2str(x)
  if x ~= x then return "nan" end
  if x == huge then return "inf" elseif x == -huge then return "-inf" end
  if x == floor(x) and abs(x) < 1e16 then return sfmt("%d", x) end
  local s
  for p = 1, 17 do
    s = sfmt("%." .. (p - 1) .. "e", x)
    if tonumber(s) == x then break end
  end
  local sign, d1, drest, e = s:match("^(-?)(%d)%.?(%d*)e([-+]%d+)$")
  local digits = (d1 .. drest):gsub("0+$", "")
  if digits == "" then digits = "0" end
  e = tonumber(e)
  local n = #digits
  if e < -4 or e >= 16 then
    local m = ssub(digits, 1, 1) .. (n > 1 and ("." .. ssub(digits, 2)) or "")
    return sfmt("%s%se%s%02d", sign, m, e < 0 and "-" or "+", abs(e))
  elseif e < 0 then
    return sign .. "0." .. srep("0", -e - 1) .. digits
  elseif n <= e + 1 then
    return sign .. digits .. srep("0", e + 1 - n) .. ".0"
  end
  return sign .. ssub(digits, 1, e + 1) .. "." .. ssub(digits, e + 2)
end

local REPR_ESC = {["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t"}
local function repr_str(s)
  local q = (sfind(s, "'", 1, true) and not sfind(s, '"', 1, true)) and '"' or "'"
  return q .. sgsub(s, "[%z\1-\31\127\\'\"]", function(c)
    if c == "'" or c == '"' then return c == q and "\\" .. c or c end
    return REPR_ESC[c] or sfmt("\\x%02x", sbyte(c))
  end) .. q
end

local str
local function repr(v)
  local k = kind(v)
  if k == "string" then return repr_str(v) end
  if k == "list" then
    local parts = {}
    for i = 1, #v do parts[i] = repr(v[i]) end
    if getmetatable(v) == TupleMT then return "(" .. concat(parts, ", ") .. (#parts == 1 and ",)" or ")") end
    return "[" .. concat(parts, ", ") .. "]"
  end
  if k == "dict" or k == "namespace" then
    local parts, keys = {}, dict_keys(v)
    for i = 1, #keys do parts[i] = repr(keys[i]) .. ": " .. repr(v[keys[i]]) end
    local body = "{" .. concat(parts, ", ") .. "}"
    return k == "dict" and body or "<Namespace " .. body .. ">"
  end
  if k == "loop" then return sfmt("<LoopContext %d/%d>", v.index or 0, v.length or 0) end
  if k == "function" then return "<function>" end
  return str(v)
end

--- Python's str() of a value, with undefined as "".
function str(v)
  local tv = type(v)
  if tv == "string" then return v end
  if tv == "nil" then return "" end
  if tv == "number" then return num2str(v) end
  if tv == "boolean" then return v and "True" or "False" end
  if v == NONE then return "None" end
  if tv == "table" then return repr(v) end
  return tostring(v)
end

local function mklist(t) return setmetatable(t, ListMT) end

--- What a for loop walks: list items, dict keys, string characters; undefined walks nothing.
local function seq(v)
  local k = kind(v)
  if k == "list" then return v end
  if k == "dict" then return dict_keys(v) end
  if k == "string" then return mklist(utf8_chars(v)) end
  if k == "undefined" then return EMPTY end
  if k == "loop" then return v.seq end
  rterr("'%s' object is not iterable", pytype(v))
end

local function len(v)
  local k = kind(v)
  if k == "string" then return utf8_len(v) end
  if k == "list" then return #v end
  if k == "dict" then
    local c = 0
    for _ in pairs(v) do c = c + 1 end
    return c
  end
  if k == "undefined" then return 0 end
  if k == "loop" then return v.length end
  rterr("object of type '%s' has no len()", pytype(v))
end

---------------------------------------------------------------------------------------------------------------
-- JSON (transformers' tojson: json.dumps with ensure_ascii=False unless asked)
---------------------------------------------------------------------------------------------------------------
local JSON_ESC = {['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t",
  ["\b"] = "\\b", ["\f"] = "\\f"}

local function json_str(s, ensure_ascii)
  s = sgsub(s, '[%z\1-\31"\\]', function(c) return JSON_ESC[c] or sfmt("\\u%04x", sbyte(c)) end)
  if ensure_ascii and sfind(s, "[\127-\255]") then
    local out = {}
    for _, ch in ipairs(utf8_chars(s)) do
      local b = sbyte(ch)
      if b < 0x7f then
        out[#out + 1] = ch
      else
        local cp = b
        if #ch == 2 then cp = (b % 32) * 64 + sbyte(ch, 2) % 64
        elseif #ch == 3 then cp = (b % 16) * 4096 + (sbyte(ch, 2) % 64) * 64 + sbyte(ch, 3) % 64
        elseif #ch == 4 then cp = (b % 8) * 262144 + (sbyte(ch, 2) % 64) * 4096 + (sbyte(ch, 3) % 64) * 64 + sbyte(ch, 4) % 64 end
        if cp >= 0x10000 then
          cp = cp - 0x10000
          out[#out + 1] = sfmt("\\u%04x\\u%04x", 0xD800 + floor(cp / 1024), 0xDC00 + cp % 1024)
        else
          out[#out + 1] = sfmt("\\u%04x", cp)
        end
      end
    end
    s = concat(out)
  end
  return '"' .. s .. '"'
end

local function json_num(x)
  if x ~= x then return "NaN" end
  if x == huge then return "Infinity" elseif x == -huge then return "-Infinity" end
  return num2str(x)
end

local function json_enc(v, o, opt, level)
  local k = kind(v)
  if k == "string" then o[#o + 1] = json_str(v, opt.ascii)
  elseif k == "number" then o[#o + 1] = json_num(v)
  elseif k == "bool" then o[#o + 1] = v and "true" or "false"
  elseif k == "none" or k == "undefined" then o[#o + 1] = "null"
  elseif k == "list" or k == "dict" then
    local keys = k == "dict" and dict_keys(v) or nil
    local n = keys and #keys or #v
    local open, close = k == "list" and "[" or "{", k == "list" and "]" or "}"
    if n == 0 then o[#o + 1] = open .. close; return end
    if opt.sort and keys then sort(keys, keycmp) end
    local nl = opt.indent and ("\n" .. srep(opt.indent, level + 1)) or ""
    o[#o + 1] = open
    for i = 1, n do
      o[#o + 1] = i == 1 and nl or (opt.item_sep .. nl)
      if keys then
        local key = keys[i]
        local tk = kind(key)
        if tk == "string" then o[#o + 1] = json_str(key, opt.ascii)
        elseif tk == "number" then o[#o + 1] = '"' .. json_num(key) .. '"'
        elseif tk == "bool" then o[#o + 1] = key and '"true"' or '"false"'
        else rterr("keys must be str, int, float, bool or None, not %s", pytype(key)) end
        o[#o + 1] = opt.key_sep
        json_enc(v[key], o, opt, level + 1)
      else
        json_enc(v[i], o, opt, level + 1)
      end
    end
    if opt.indent then o[#o + 1] = "\n" .. srep(opt.indent, level) end
    o[#o + 1] = close
  else
    rterr("Object of type %s is not JSON serializable", pytype(v))
  end
end

local function nonone(v) if v == NONE then return nil end return v end

--- Python json.dumps(v, ensure_ascii, indent, separators, sort_keys).
local function tojson(v, ensure_ascii, indent, separators, sort_keys)
  indent = nonone(indent)
  if type(indent) == "number" then indent = srep(" ", indent) end
  separators = nonone(separators)
  local opt = {ascii = truthy(ensure_ascii), indent = indent, sort = truthy(sort_keys),
    item_sep = indent and "," or ", ", key_sep = ": "}
  if separators then opt.item_sep, opt.key_sep = separators[1], separators[2] end
  local o = {}
  json_enc(v, o, opt, 0)
  return concat(o)
end
T.tojson = tojson

---------------------------------------------------------------------------------------------------------------
-- Operators (R: what generated code calls)
---------------------------------------------------------------------------------------------------------------
local R = {NONE = NONE, EMPTY = EMPTY, truthy = truthy, str = str, seq = seq}

local function num(v)
  if type(v) == "number" then return v end
  if type(v) == "boolean" then return v and 1 or 0 end
  return nil
end

local function binerr(op, a, b)
  if a == nil or b == nil then rterr("undefined value in '%s' (%s and %s)", op, pytype(a), pytype(b)) end
  rterr("unsupported operand type(s) for %s: '%s' and '%s'", op, pytype(a), pytype(b))
end

function R.add(a, b)
  local ta, tb = type(a), type(b)
  if ta == "string" and tb == "string" then return a .. b end
  local x, y = num(a), num(b)
  if x and y then return x + y end
  if is_list(a) and is_list(b) then
    local t = {}
    for i = 1, #a do t[i] = a[i] end
    for i = 1, #b do t[#a + i] = b[i] end
    return mklist(t)
  end
  binerr("+", a, b)
end

function R.sub(a, b)
  local x, y = num(a), num(b)
  if x and y then return x - y end
  binerr("-", a, b)
end

function R.mul(a, b)
  local x, y = num(a), num(b)
  if x and y then return x * y end
  if type(a) == "string" and y then return srep(a, y) end
  if type(b) == "string" and x then return srep(b, x) end
  if is_list(a) and y then
    local t = {}
    for _ = 1, y do for i = 1, #a do t[#t + 1] = a[i] end end
    return mklist(t)
  end
  binerr("*", a, b)
end

function R.div(a, b)
  local x, y = num(a), num(b)
  if not (x and y) then binerr("/", a, b) end
  if y == 0 then rterr("division by zero") end
  return x / y
end

function R.fdiv(a, b)
  local x, y = num(a), num(b)
  if not (x and y) then binerr("//", a, b) end
  if y == 0 then rterr("integer division or modulo by zero") end
  return floor(x / y)
end

local printf
function R.mod(a, b)
  if type(a) == "string" then return printf(a, b) end
  local x, y = num(a), num(b)
  if not (x and y) then binerr("%", a, b) end
  if y == 0 then rterr("integer division or modulo by zero") end
  return x % y
end

function R.pow(a, b)
  local x, y = num(a), num(b)
  if x and y then return x ^ y end
  binerr("**", a, b)
end

function R.neg(a)
  local x = num(a)
  if x then return -x end
  rterr("bad operand type for unary -: '%s'", pytype(a))
end

local function eq(a, b)
  if a == b then return true end
  local ta, tb = type(a), type(b)
  if ta ~= "table" or tb ~= "table" or a == NONE or b == NONE then
    if ta == "boolean" and tb == "number" or ta == "number" and tb == "boolean" then return num(a) == num(b) end
    return false
  end
  local la, lb = is_list(a), is_list(b)
  if la ~= lb then return false end
  if la then
    if #a ~= #b then return false end
    for i = 1, #a do if not eq(a[i], b[i]) then return false end end
    return true
  end
  if is_dict(a) and is_dict(b) then
    for k, v in pairs(a) do if not eq(v, b[k]) then return false end end
    for k in pairs(b) do if a[k] == nil then return false end end
    return true
  end
  return false
end
R.eq = eq

local function cmp_ok(op, a, b)
  local x, y = num(a), num(b)
  if x and y then return x, y end
  if type(a) == "string" and type(b) == "string" then return a, b end
  rterr("'%s' not supported between instances of '%s' and '%s'", op, pytype(a), pytype(b))
end
function R.lt(a, b) local x, y = cmp_ok("<", a, b); return x < y end
function R.le(a, b) local x, y = cmp_ok("<=", a, b); return x <= y end
function R.gt(a, b) local x, y = cmp_ok(">", a, b); return x > y end
function R.ge(a, b) local x, y = cmp_ok(">=", a, b); return x >= y end

--- Python's `item in container`.
function R.contains(c, item)
  local k = kind(c)
  if k == "string" then
    if type(item) ~= "string" then rterr("'in <string>' requires string as left operand, not %s", pytype(item)) end
    return sfind(c, item, 1, true) ~= nil
  end
  if k == "list" then
    for i = 1, #c do if eq(c[i], item) then return true end end
    return false
  end
  if k == "dict" or k == "namespace" then return item ~= nil and c[item] ~= nil end
  if k == "undefined" then return false end
  rterr("argument of type '%s' is not iterable", pytype(c))
end

--- obj.name: a dict entry, a namespace or loop field; undefined for anything else.
function R.ga(obj, name)
  if type(obj) ~= "table" or obj == NONE then
    if type(obj) == "userdata" or type(obj) == "cdata" then
      local ok, v = pcall(function() return obj[name] end)
      if ok then return v end
    end
    return nil
  end
  if is_list(obj) then return nil end
  return obj[name]
end

local function str_chars(s)
  if is_ascii(s) then return nil end
  return utf8_chars(s)
end

--- obj[key]: list and string indices count from 0 and may be negative; out of range is undefined.
function R.gi(obj, key)
  local to = type(obj)
  if to == "string" then
    if type(key) ~= "number" or key ~= floor(key) then return nil end
    local chars = str_chars(obj)
    local n = chars and #chars or #obj
    if key < 0 then key = key + n end
    if key < 0 or key >= n then return nil end
    return chars and chars[key + 1] or ssub(obj, key + 1, key + 1)
  end
  if to ~= "table" or obj == NONE then
    if to == "userdata" or to == "cdata" then return R.ga(obj, key) end
    return nil
  end
  if is_list(obj) then
    if type(key) == "boolean" then key = key and 1 or 0 end
    if type(key) ~= "number" or key ~= floor(key) then return nil end
    local n = #obj
    if key < 0 then key = key + n end
    if key < 0 or key >= n then return nil end
    return obj[key + 1]
  end
  if key == nil then return nil end
  return obj[key]
end

local function slice_bounds(n, a, b, c)
  a, b, c = nonone(a), nonone(b), nonone(c)
  c = c or 1
  if c == 0 then rterr("slice step cannot be zero") end
  if c > 0 then
    a = a == nil and 0 or (a < 0 and math.max(a + n, 0) or math.min(a, n))
    b = b == nil and n or (b < 0 and math.max(b + n, 0) or math.min(b, n))
  else
    a = a == nil and n - 1 or (a < 0 and math.max(a + n, -1) or math.min(a, n - 1))
    b = b == nil and -1 or (b < 0 and math.max(b + n, -1) or math.min(b, n - 1))
  end
  return a, b, c
end

--- obj[a:b:c] for lists and strings, with Python's bounds.
function R.slice(obj, a, b, c)
  local k = kind(obj)
  local items
  if k == "list" then items = obj
  elseif k == "string" then items = str_chars(obj)
  else return nil end
  local n = items and #items or #obj
  local i, stop, step = slice_bounds(n, a, b, c)
  local out = {}
  while (step > 0 and i < stop) or (step < 0 and i > stop) do
    out[#out + 1] = items and items[i + 1] or ssub(obj, i + 1, i + 1)
    i = i + step
  end
  if k == "string" then return concat(out) end
  return mklist(out)
end

--- Calls a template-visible function: macros and builtins take (args, kwargs), Lua functions plain arguments.
function R.call(f, name, args, kw)
  if jcallable[f] then return f(args, kw) end
  local tf = type(f)
  if tf == "function" or tf == "table" and getmetatable(f) and getmetatable(f).__call then
    if kw and next(kw) then return (f(unpack(args, 1, args.n or #args), kw)) end
    return (f(unpack(args, 1, args.n or #args)))
  end
  if f == nil then rterr("'%s' is undefined", name) end
  rterr("'%s' object is not callable", pytype(f))
end

function R.macro(f)
  jcallable[f] = true
  return f
end

function R.lookup(ctx, globals, name)
  local v = ctx[name]
  if v == nil then v = globals[name] end
  return v
end

function R.setattr(obj, name, v)
  if getmetatable(obj) ~= NSMT then rterr("cannot assign attribute on non-namespace object") end
  obj[name] = v
end

function R.unpack(v, n)
  local items = seq(v)
  if #items ~= n then rterr("cannot unpack %d values into %d names", #items, n) end
  return unpack(items, 1, n)
end

function R.newloop(s, n)
  return setmetatable({seq = s, length = n, depth = 1, depth0 = 0}, LoopMT)
end

function R.loopstep(L, i)
  local n, s = L.length, L.seq
  L.index, L.index0, L.first, L.last = i, i - 1, i == 1, i == n
  L.revindex, L.revindex0 = n - i + 1, n - i
  L.previtem, L.nextitem = s[i - 1], s[i + 1]
end

function R.mklist(t) t.n = nil; return mklist(t) end
function R.mktuple(t) t.n = nil; return setmetatable(t, TupleMT) end

function R.mkdict(kv)
  local t, keys = {}, {}
  for i = 1, #kv, 2 do
    local k = kv[i]
    if k ~= nil then
      if t[k] == nil then keys[#keys + 1] = k end
      t[k] = kv[i + 1]
    end
  end
  return T.dict(t, keys)
end

function R.varargs(args, from)
  local t = {}
  for i = from + 1, args.n or #args do t[#t + 1] = args[i] end
  return setmetatable(t, TupleMT)
end

---------------------------------------------------------------------------------------------------------------
-- Python string formatting (`fmt % args` and the format filter)
---------------------------------------------------------------------------------------------------------------
function printf(fmt, args)
  local list = is_list(args) and args or {args}
  local i = 0
  local out = sgsub(fmt, "%%([-+ #0]*%d*%.?%d*)([diouxXeEfFgGcrsa%%])", function(flags, conv)
    if conv == "%" then return "%" end
    i = i + 1
    local v = list[i]
    if conv == "s" then return sfmt("%" .. flags .. "s", str(v)) end
    if conv == "r" or conv == "a" then return sfmt("%" .. flags .. "s", repr(v)) end
    if conv == "c" then return type(v) == "number" and utf8_encode(v) or str(v) end
    local x = num(v)
    if not x then rterr("%%%s format: a number is required, not %s", conv, pytype(v)) end
    if conv == "i" or conv == "u" or conv == "d" then conv = "d"; x = x < 0 and -floor(-x) or floor(x) end
    if conv == "F" then conv = "f" end
    return sfmt("%" .. flags .. conv, x)
  end)
  return out
end

---------------------------------------------------------------------------------------------------------------
-- Filters: F[name](value, args, kwargs); args and kwargs may be nil
---------------------------------------------------------------------------------------------------------------
local function arg(args, kw, i, name, default)
  local v
  if args then v = args[i] end
  if v == nil and kw then v = kw[name] end
  if v == nil then return default end
  return v
end

local F = {}
local X = {}

local function attr_get(item, path)
  if path == nil then return item end
  for part in sgsub(str(path), "^%s+", ""):gmatch("[^%.]+") do
    local k = tonumber(part)
    item = R.gi(item, k or part)
    if item == nil and k then item = R.gi(item, part) end
  end
  return item
end

local function cap(s)
  local chars = str_chars(s)
  if not chars then return supper(ssub(s, 1, 1)) .. slower(ssub(s, 2)) end
  return supper(chars[1] or "") .. slower(concat(chars, "", 2))
end

F.trim = function(v, a, k) return strip_set(str(v), arg(a, k, 1, "chars"), true, true) end
F.upper = function(v) return supper(str(v)) end
F.lower = function(v) return slower(str(v)) end
F.capitalize = function(v) return cap(str(v)) end
F.title = function(v)
  -- Jinja's title: words start after whitespace, '-', or an opening bracket
  return (sgsub(str(v), "([^%s%-%(%[{<]+)", function(w) return cap(w) end))
end
F.length = function(v) return len(v) end
F.count = F.length
F.string = function(v) return str(v) end
F.safe = function(v) return v end
F.list = function(v)
  local s, t = seq(v), {}
  for i = 1, #s do t[i] = s[i] end
  return mklist(t)
end
F.first = function(v) return seq(v)[1] end
F.last = function(v)
  if kind(v) == "undefined" then return nil end
  local s = seq(v)
  return s[#s]
end
F.default = function(v, a, k)
  local dflt, boolean = arg(a, k, 1, "default_value", ""), arg(a, k, 2, "boolean", false)
  if v == nil or truthy(boolean) and not truthy(v) then return dflt end
  return v
end
F.d = F.default
F.join = function(v, a, k)
  local sep, attribute = str(arg(a, k, 1, "d", "")), arg(a, k, 2, "attribute")
  local s, parts = seq(v), {}
  for i = 1, #s do parts[i] = str(attr_get(s[i], attribute)) end
  return concat(parts, sep)
end

local function str_replace(s, old, new, count)
  count = count and count >= 0 and count or huge
  if old == "" then
    local chars, out, c = utf8_chars(s), {}, 0
    for i = 1, #chars + 1 do
      if c < count then out[#out + 1] = new; c = c + 1 end
      out[#out + 1] = chars[i]
    end
    return concat(out)
  end
  local out, i, c = {}, 1, 0
  while c < count do
    local b, e = sfind(s, old, i, true)
    if not b then break end
    out[#out + 1] = ssub(s, i, b - 1)
    out[#out + 1] = new
    i, c = e + 1, c + 1
  end
  out[#out + 1] = ssub(s, i)
  return concat(out)
end

F.replace = function(v, a, k)
  local count = nonone(arg(a, k, 3, "count"))
  return str_replace(str(v), str(arg(a, k, 1, "old")), str(arg(a, k, 2, "new")), count)
end
F.items = function(v)
  if v == nil then return EMPTY end
  if not is_dict(v) then rterr("can only get item pairs from a mapping") end
  local keys, t = dict_keys(v), {}
  for i = 1, #keys do t[i] = setmetatable({keys[i], v[keys[i]]}, TupleMT) end
  return mklist(t)
end
F.tojson = function(v, a, k)
  return tojson(v, arg(a, k, 1, "ensure_ascii", false), arg(a, k, 2, "indent"), arg(a, k, 3, "separators"),
    arg(a, k, 4, "sort_keys", false))
end

F.int = function(v, a, k)
  local dflt = arg(a, k, 1, "default", 0)
  if type(v) == "boolean" then return v and 1 or 0 end
  local x = type(v) == "number" and v or (type(v) == "string" and tonumber((sgsub(v, "_", ""))))
  if not x or x ~= x or x == huge or x == -huge then return dflt end
  return x < 0 and -floor(-x) or floor(x)
end
F.float = function(v, a, k)
  local x = num(v) or (type(v) == "string" and tonumber(v))
  if not x then return arg(a, k, 1, "default", 0) end
  return x
end
F.abs = function(v)
  local x = num(v)
  if not x then rterr("bad operand type for abs(): '%s'", pytype(v)) end
  return abs(x)
end
F.round = function(v, a, k)
  local precision, method = arg(a, k, 1, "precision", 0), arg(a, k, 2, "method", "common")
  local x, m = num(v) or 0, 10 ^ precision
  if method == "ceil" then return math.ceil(x * m) / m end
  if method == "floor" then return floor(x * m) / m end
  local y = x * m
  return (y < 0 and -floor(-y + 0.5) or floor(y + 0.5)) / m
end

local function sort_key(v, attribute, case_sensitive)
  if attribute ~= nil then v = attr_get(v, attribute) end
  if type(v) == "string" and not case_sensitive then v = slower(v) end
  return v
end

local function sorted(items, reverse, case_sensitive, attribute)
  local t = {}
  for i = 1, #items do t[i] = {sort_key(items[i], attribute, case_sensitive), i, items[i]} end
  sort(t, function(x, y)
    if eq(x[1], y[1]) then return x[2] < y[2] end
    local less = R.lt(x[1], y[1])
    if reverse then return not less end
    return less
  end)
  local out = {}
  for i = 1, #t do out[i] = t[i][3] end
  return mklist(out)
end

F.sort = function(v, a, k)
  return sorted(seq(v), truthy(arg(a, k, 1, "reverse", false)), truthy(arg(a, k, 2, "case_sensitive", false)),
    arg(a, k, 3, "attribute"))
end
F.dictsort = function(v, a, k)
  local pairs_ = F.items(v)
  local by_value = arg(a, k, 3, "by", "key") == "value"
  return sorted(pairs_, truthy(arg(a, k, 2, "reverse", false)), truthy(arg(a, k, 1, "case_sensitive", false)),
    by_value and 1 or 0)
end
F.reverse = function(v)
  if type(v) == "string" then
    local chars = utf8_chars(v)
    local out = {}
    for i = #chars, 1, -1 do out[#out + 1] = chars[i] end
    return concat(out)
  end
  local s, t = seq(v), {}
  for i = #s, 1, -1 do t[#t + 1] = s[i] end
  return mklist(t)
end
F.unique = function(v, a, k)
  local s, t = seq(v), {}
  local cs, attribute = truthy(arg(a, k, 1, "case_sensitive", false)), arg(a, k, 2, "attribute")
  local seen = {}
  for i = 1, #s do
    local key = sort_key(s[i], attribute, cs)
    local dup = false
    for j = 1, #seen do if eq(seen[j], key) then dup = true; break end end
    if not dup then seen[#seen + 1] = key; t[#t + 1] = s[i] end
  end
  return mklist(t)
end
F.sum = function(v, a, k)
  local attribute, total = arg(a, k, 1, "attribute"), arg(a, k, 2, "start", 0)
  local s = seq(v)
  for i = 1, #s do total = R.add(total, attr_get(s[i], attribute)) end
  return total
end
local function minmax(v, a, k, want_max)
  local s = seq(v)
  if #s == 0 then return nil end
  local cs, attribute = truthy(arg(a, k, 1, "case_sensitive", false)), arg(a, k, 2, "attribute")
  local best, bestkey = s[1], sort_key(s[1], attribute, cs)
  for i = 2, #s do
    local key = sort_key(s[i], attribute, cs)
    if want_max and R.gt(key, bestkey) or not want_max and R.lt(key, bestkey) then best, bestkey = s[i], key end
  end
  return best
end
F.min = function(v, a, k) return minmax(v, a, k, false) end
F.max = function(v, a, k) return minmax(v, a, k, true) end
F.attr = function(v, a, k) return R.ga(v, arg(a, k, 1, "name")) end
F.format = function(v, a)
  return printf(str(v), mklist({unpack(a or EMPTY, 1, a and a.n or 0)}))
end
local HTML = {["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&#34;", ["'"] = "&#39;"}
F.escape = function(v) return (sgsub(str(v), "[&<>\"']", HTML)) end
F.e = F.escape
F.forceescape = F.escape
F.center = function(v, a, k)
  local s, width = str(v), arg(a, k, 1, "width", 80)
  local n = utf8_len(s)
  if n >= width then return s end
  local left = floor((width - n) / 2)
  if (width - n) % 2 == 1 and n % 2 == 1 then left = left + 1 end
  return srep(" ", left) .. s .. srep(" ", width - n - left)
end
F.wordcount = function(v)
  local c = 0
  for _ in str(v):gmatch("[%w_]+") do c = c + 1 end
  return c
end
F.indent = function(v, a, k)
  local width, first, blank = arg(a, k, 1, "width", 4), arg(a, k, 2, "first", false), arg(a, k, 3, "blank", false)
  local pad = type(width) == "string" and width or srep(" ", width)
  local s = str(v) .. "\n"
  local lines = {}
  for line in s:gmatch("([^\n]*)\n") do lines[#lines + 1] = line end
  local out
  if truthy(blank) then
    out = concat(lines, "\n" .. pad)
  else
    local parts = {lines[1]}
    for i = 2, #lines do parts[i] = lines[i] ~= "" and pad .. lines[i] or lines[i] end
    out = concat(parts, "\n")
  end
  if truthy(first) then out = pad .. out end
  return out
end

local function test_fn(name)
  local t = X[name]
  if not t then rterr("no test named '%s'", str(name)) end
  return t
end

local function select_items(v, a, want, by_attr)
  local s, out = seq(v), {}
  local attribute, testname, rest
  if by_attr then attribute, testname = a and a[1], a and a[2] else testname = a and a[1] end
  local first_rest = by_attr and 3 or 2
  if a and #a >= first_rest then rest = {n = #a - first_rest + 1, unpack(a, first_rest, #a)} end
  local t = testname ~= nil and test_fn(testname)
  for i = 1, #s do
    local x = s[i]
    if by_attr then x = attr_get(x, attribute) end
    local ok
    if t then ok = t(x, rest) else ok = truthy(x) end
    if ok == want then out[#out + 1] = s[i] end
  end
  return mklist(out)
end
F.select = function(v, a) return select_items(v, a, true, false) end
F.reject = function(v, a) return select_items(v, a, false, false) end
F.selectattr = function(v, a) return select_items(v, a, true, true) end
F.rejectattr = function(v, a) return select_items(v, a, false, true) end
F.map = function(v, a, k)
  local s, out = seq(v), {}
  if k and k.attribute ~= nil then
    for i = 1, #s do
      local x = attr_get(s[i], k.attribute)
      if x == nil then x = k.default end
      out[i] = x
    end
  elseif a and a[1] ~= nil then
    local f = F[a[1]]
    if not f then rterr("no filter named '%s'", str(a[1])) end
    local rest = #a > 1 and {n = #a - 1, unpack(a, 2, #a)} or nil
    for i = 1, #s do out[i] = f(s[i], rest, nil) end
  else
    for i = 1, #s do out[i] = s[i] end
  end
  return mklist(out)
end
F.batch = function(v, a, k)
  local size, fill = arg(a, k, 1, "linecount"), arg(a, k, 2, "fill_with")
  local s, out, cur = seq(v), {}, nil
  for i = 1, #s do
    if not cur or #cur == size then cur = {}; out[#out + 1] = cur end
    cur[#cur + 1] = s[i]
  end
  if fill ~= nil and cur then while #cur < size do cur[#cur + 1] = fill end end
  for i = 1, #out do mklist(out[i]) end
  return mklist(out)
end

---------------------------------------------------------------------------------------------------------------
-- Tests: X[name](value, args) -> boolean
---------------------------------------------------------------------------------------------------------------
X.defined = function(v) return v ~= nil end
X.undefined = function(v) return v == nil end
X.none = function(v) return v == NONE end
X.boolean = function(v) return type(v) == "boolean" end
X["true"] = function(v) return v == true end
X["false"] = function(v) return v == false end
X.string = function(v) return type(v) == "string" end
X.number = function(v) return type(v) == "number" or type(v) == "boolean" end
X.integer = function(v) return type(v) == "number" and v == floor(v) end
X.float = function(v) return type(v) == "number" and v ~= floor(v) end
X.mapping = function(v) return is_dict(v) end
X.iterable = function(v)
  local k = kind(v)
  return k == "list" or k == "dict" or k == "string" or k == "undefined" or k == "loop"
end
X.sequence = function(v)
  local k = kind(v)
  return k == "list" or k == "dict" or k == "string" or k == "undefined"
end
X.callable = function(v) return kind(v) == "function" end
X.sameas = function(v, a) return v == (a and a[1]) end
X.escaped = function() return false end
X.lower = function(v) return type(v) == "string" and slower(v) == v end
X.upper = function(v) return type(v) == "string" and supper(v) == v end
X.odd = function(v) return num(v) ~= nil and num(v) % 2 == 1 end
X.even = function(v) return num(v) ~= nil and num(v) % 2 == 0 end
X.divisibleby = function(v, a) return num(v) % num(a[1]) == 0 end
X.eq = function(v, a) return eq(v, a and a[1]) end
X.ne = function(v, a) return not eq(v, a and a[1]) end
X.lt = function(v, a) return R.lt(v, a[1]) end
X.le = function(v, a) return R.le(v, a[1]) end
X.gt = function(v, a) return R.gt(v, a[1]) end
X.ge = function(v, a) return R.ge(v, a[1]) end
X["in"] = function(v, a) return R.contains(a[1], v) end
X.filter = function(v) return F[v] ~= nil end
X.test = function(v) return X[v] ~= nil end
X.equalto, X["=="], X["!="] = X.eq, X.eq, X.ne
X.lessthan, X.greaterthan, X["<"], X["<="], X[">"], X[">="] = X.lt, X.gt, X.lt, X.le, X.gt, X.ge

---------------------------------------------------------------------------------------------------------------
-- Methods of str, dict, list and loop objects (obj.name(...))
---------------------------------------------------------------------------------------------------------------
local M = {string = {}, dict = {}, list = {}, loop = {}}

local function split_ws(s, maxsplit, from_right)
  local words = {}
  for w in s:gmatch("[^ \t\n\r\f\v\28-\31]+") do words[#words + 1] = w end
  if maxsplit < 0 or #words <= maxsplit + 1 then return words end
  -- keep the rest of the string unsplit (Python keeps its inner whitespace)
  if not from_right then
    local out, pos = {}, 1
    for i = 1, maxsplit do
      local _, e = sfind(s, words[i], pos, true)
      out[i] = words[i]; pos = e + 1
    end
    out[maxsplit + 1] = strip_set(ssub(s, pos), nil, true, false)
    return out
  end
  local out, pos = {}, #s
  local n = #words
  for i = 0, maxsplit - 1 do
    local w = words[n - i]
    local b
    local p = 1
    while true do
      local b2 = sfind(s, w, p, true)
      if not b2 or b2 + #w - 1 > pos then break end
      b, p = b2, b2 + 1
    end
    out[maxsplit + 1 - i] = w; pos = b - 1
  end
  out[1] = rstrip_ws(ssub(s, 1, pos))
  return out
end

local function split(s, sep, maxsplit, from_right)
  maxsplit = nonone(maxsplit) or -1
  sep = nonone(sep)
  if sep == nil then return mklist(split_ws(s, maxsplit, from_right)) end
  if sep == "" then rterr("empty separator") end
  local parts = {}
  local pos = 1
  while true do
    local b, e = sfind(s, sep, pos, true)
    if not b then break end
    parts[#parts + 1] = ssub(s, pos, b - 1)
    pos = e + 1
  end
  parts[#parts + 1] = ssub(s, pos)
  if maxsplit >= 0 and #parts > maxsplit + 1 then
    if from_right then
      local head = concat(parts, sep, 1, #parts - maxsplit)
      local out = {head}
      for i = #parts - maxsplit + 1, #parts do out[#out + 1] = parts[i] end
      parts = out
    else
      local out = {}
      for i = 1, maxsplit do out[i] = parts[i] end
      out[maxsplit + 1] = concat(parts, sep, maxsplit + 1)
      parts = out
    end
  end
  return mklist(parts)
end

local function affix_test(s, affix, at_end)
  local list = is_list(affix) and affix or {affix}
  for i = 1, #list do
    local x = list[i]
    if type(x) ~= "string" then rterr("startswith/endswith first arg must be str or a tuple of str") end
    if at_end and (x == "" or ssub(s, -#x) == x) or not at_end and ssub(s, 1, #x) == x then return true end
  end
  return false
end

local function cp_index(s, byte_index)
  if byte_index == nil then return -1 end
  return utf8_len(ssub(s, 1, byte_index - 1))
end

local S = M.string
S.startswith = function(s, a) return affix_test(s, a[1], false) end
S.endswith = function(s, a) return affix_test(s, a[1], true) end
S.strip = function(s, a) return strip_set(s, a[1], true, true) end
S.lstrip = function(s, a) return strip_set(s, a[1], true, false) end
S.rstrip = function(s, a) return strip_set(s, a[1], false, true) end
S.split = function(s, a, k) return split(s, arg(a, k, 1, "sep"), arg(a, k, 2, "maxsplit"), false) end
S.rsplit = function(s, a, k) return split(s, arg(a, k, 1, "sep"), arg(a, k, 2, "maxsplit"), true) end
S.splitlines = function(s, a, k)
  local keep, out = truthy(arg(a, k, 1, "keepends", false)), {}
  local pos = 1
  while pos <= #s do
    local b, e = sfind(s, "\r?\n", pos)
    if not b then b, e = sfind(s, "\r", pos, true) end
    if not b then out[#out + 1] = ssub(s, pos); break end
    out[#out + 1] = ssub(s, pos, keep and e or b - 1)
    pos = e + 1
  end
  return mklist(out)
end
S.upper = function(s) return supper(s) end
S.lower = function(s) return slower(s) end
S.capitalize = function(s) return cap(s) end
S.title = function(s)
  -- Python's str.title: a letter is upper-cased when the character before it is not a letter
  local prev_cased = false
  return (sgsub(s, ".", function(c)
    local b = sbyte(c)
    local letter = c:find("%a") ~= nil or b >= 128
    local out = c
    if c:find("%a") then out = prev_cased and slower(c) or supper(c) end
    prev_cased = letter
    return out
  end))
end
S.replace = function(s, a) return str_replace(s, str(a[1]), str(a[2]), nonone(a[3])) end
S.find = function(s, a) return cp_index(s, (sfind(s, str(a[1]), 1, true))) end
S.rfind = function(s, a)
  local sub, last, p = str(a[1]), nil, 1
  while true do
    local b = sfind(s, sub, p, true)
    if not b then break end
    last, p = b, b + 1
    if p > #s + 1 then break end
  end
  return cp_index(s, last)
end
S.index = function(s, a)
  local i = S.find(s, a)
  if i < 0 then rterr("substring not found") end
  return i
end
S.count = function(s, a)
  local sub = str(a[1])
  if sub == "" then return utf8_len(s) + 1 end
  local c, p = 0, 1
  while true do
    local b, e = sfind(s, sub, p, true)
    if not b then return c end
    c, p = c + 1, e + 1
  end
end
S.join = function(s, a)
  local items, parts = seq(a[1]), {}
  for i = 1, #items do
    if type(items[i]) ~= "string" then rterr("sequence item %d: expected str instance, %s found", i - 1, pytype(items[i])) end
    parts[i] = items[i]
  end
  return concat(parts, s)
end
S.format = function(s, a, k)
  local auto = 0
  local out = sgsub(s, "({+)([^{}]*)(}*)", function(open, field, close)
    if #open % 2 == 0 and field == "" then return srep("{", #open / 2) .. srep("}", floor(#close / 2)) end
    local lit = srep("{", floor(#open / 2))
    if #open % 2 == 0 then return lit .. field .. srep("}", floor(#close / 2)) end
    local name = field:match("^([^:!]*)")
    local v
    if name == "" then auto = auto + 1; v = a and a[auto]
    elseif tonumber(name) then v = a and a[tonumber(name) + 1]
    else v = k and k[name] end
    return lit .. str(v) .. srep("}", floor((#close - 1) / 2))
  end)
  return out
end
S.isdigit = function(s) return s ~= "" and not sfind(s, "%D") end
S.isalpha = function(s) return s ~= "" and not sfind(s, "%A") end
S.isalnum = function(s) return s ~= "" and not sfind(s, "%W") end
S.isspace = function(s) return s ~= "" and not sfind(s, "[^ \t\n\r\f\v]") end
S.islower = function(s) return sfind(s, "%l") ~= nil and not sfind(s, "%u") end
S.isupper = function(s) return sfind(s, "%u") ~= nil and not sfind(s, "%l") end
S.removeprefix = function(s, a)
  local p = str(a[1])
  return ssub(s, 1, #p) == p and ssub(s, #p + 1) or s
end
S.removesuffix = function(s, a)
  local p = str(a[1])
  return p ~= "" and ssub(s, -#p) == p and ssub(s, 1, #s - #p) or s
end

local D = M.dict
D.get = function(d, a)
  local v = d[a[1]]
  if v == nil then
    v = a[2]
    if v == nil then v = NONE end
  end
  return v
end
D.keys = function(d) return dict_keys(d) end
D.values = function(d)
  local keys, t = dict_keys(d), {}
  for i = 1, #keys do t[i] = d[keys[i]] end
  return mklist(t)
end
D.items = function(d) return F.items(d) end

local Lm = M.list
Lm.index = function(l, a)
  for i = 1, #l do if eq(l[i], a[1]) then return i - 1 end end
  rterr("%s is not in list", repr(a[1]))
end
Lm.count = function(l, a)
  local c = 0
  for i = 1, #l do if eq(l[i], a[1]) then c = c + 1 end end
  return c
end

M.loop.cycle = function(L, a)
  local n = a.n or #a
  if n == 0 then rterr("no items for cycling given") end
  return a[(L.index0 % n) + 1]
end

local UNSAFE = {append = true, extend = true, insert = true, pop = true, remove = true, clear = true,
  update = true, setdefault = true, popitem = true, sort = true, reverse = true}

--- obj.name(args): a built-in method of the value's type, else a callable stored under that name.
function R.cm(obj, name, args, kw)
  local k = kind(obj)
  local methods = M[k]
  local m = methods and methods[name]
  if m then return m(obj, args, kw) end
  if UNSAFE[name] and (k == "list" or k == "dict") then
    rterr("access to attribute '%s' of '%s' object is unsafe", name, pytype(obj))
  end
  local f = R.ga(obj, name)
  if f ~= nil then return R.call(f, name, args, kw) end
  if k == "undefined" then rterr("'%s' called on an undefined value", name) end
  rterr("'%s' object has no attribute '%s'", pytype(obj), name)
end

---------------------------------------------------------------------------------------------------------------
-- Globals
---------------------------------------------------------------------------------------------------------------
local G = {}

G.range = R.macro(function(a)
  local n = a.n or #a
  local start, stop, step = 0, a[1], 1
  if n >= 2 then start, stop = a[1], a[2] end
  if n >= 3 then step = a[3] end
  if type(start) ~= "number" or type(stop) ~= "number" or type(step) ~= "number" then
    rterr("range() arguments must be integers")
  end
  if step == 0 then rterr("range() arg 3 must not be zero") end
  local t = {}
  local i = start
  while step > 0 and i < stop or step < 0 and i > stop do t[#t + 1] = i; i = i + step end
  return mklist(t)
end)

G.namespace = R.macro(function(a, kw)
  local ns = setmetatable({}, NSMT)
  if a and a[1] ~= nil then for k, v in pairs(a[1]) do ns[k] = v end end
  if kw then for k, v in pairs(kw) do ns[k] = v end end
  return ns
end)

G.dict = R.macro(function(a, kw)
  local t = {}
  if a and a[1] ~= nil then for k, v in pairs(a[1]) do t[k] = v end end
  if kw then for k, v in pairs(kw) do t[k] = v end end
  return T.dict(t)
end)

G.raise_exception = R.macro(function(a)
  error({raise = str(a and a[1])}, 0)
end)

G.strftime_now = R.macro(function(a)
  return os.date(str(a and a[1]))
end)

T.globals, T.filters, T.tests = G, F, X

---------------------------------------------------------------------------------------------------------------
-- Lexer
---------------------------------------------------------------------------------------------------------------
local function cerr(line, fmt, ...)
  error({tpl_line = line, msg = sfmt(fmt, ...)}, 0)
end

local function line_index(src)
  local starts = {1}
  for p in src:gmatch("()\n") do starts[#starts + 1] = p + 1 end
  return function(pos)
    local lo, hi = 1, #starts
    while lo < hi do
      local mid = floor((lo + hi + 1) / 2)
      if starts[mid] <= pos then lo = mid else hi = mid - 1 end
    end
    return lo
  end, #starts
end

local function skip_ws(src, i)
  while WS[sbyte(src, i) or 0] do i = i + 1 end
  return i
end

local ESC = {n = "\n", t = "\t", r = "\r", ["\\"] = "\\", ["'"] = "'", ['"'] = '"', a = "\a", b = "\b",
  f = "\f", v = "\v", ["\n"] = ""}

--- A string literal's body, with Python's escapes (Jinja decodes them as unicode-escape).
local function unescape(s, line)
  if not sfind(s, "\\", 1, true) then return s end
  local out, i, n = {}, 1, #s
  local pending_high
  local function put_cp(cp)
    if cp >= 0xD800 and cp <= 0xDBFF then pending_high = cp; return end
    if cp >= 0xDC00 and cp <= 0xDFFF and pending_high then
      cp = 0x10000 + (pending_high - 0xD800) * 1024 + (cp - 0xDC00)
    end
    pending_high = nil
    out[#out + 1] = utf8_encode(cp)
  end
  while i <= n do
    local j = sfind(s, "\\", i, true)
    if not j then out[#out + 1] = ssub(s, i); break end
    if j > i then out[#out + 1] = ssub(s, i, j - 1); pending_high = nil end
    local c = ssub(s, j + 1, j + 1)
    if ESC[c] then
      out[#out + 1] = ESC[c]; i = j + 2
    elseif c == "x" or c == "u" or c == "U" then
      local w = c == "x" and 2 or c == "u" and 4 or 8
      local hex = ssub(s, j + 2, j + 1 + w)
      if #hex ~= w or sfind(hex, "%X") then cerr(line, "truncated \\%s escape in a string", c) end
      put_cp(tonumber(hex, 16)); i = j + 2 + w
    elseif sfind(c, "[0-7]") then
      local oct = s:match("^[0-7][0-7]?[0-7]?", j + 1)
      put_cp(tonumber(oct, 8)); i = j + 1 + #oct
    elseif c == "N" then
      cerr(line, "\\N{...} escapes are not supported")
    else
      out[#out + 1] = "\\" .. c; i = j + 2
    end
  end
  return concat(out)
end

local OPS2 = {["//"] = true, ["**"] = true, ["=="] = true, ["!="] = true, [">="] = true, ["<="] = true}
local OPS1 = {}
for c in ("+-*/%~<>=.,:|()[]{}"):gmatch(".") do OPS1[c] = true end
local OPEN, CLOSE = {["("] = true, ["["] = true, ["{"] = true}, {[")"] = true, ["]"] = true, ["}"] = true}

--- Tokens of one {{ }} or {% %} tag starting at i; returns them, the position after the closing
--- delimiter and its whitespace sign ("-", "+" or "").
local function lex_tag(src, i, is_var, lineof, tagline)
  local toks, depth, n = {}, 0, #src
  while true do
    i = skip_ws(src, i)
    if i > n then cerr(tagline, is_var and "'{{' is not closed" or "'{%%' is not closed") end
    if depth == 0 then
      if is_var then
        if ssub(src, i, i + 2) == "-}}" then return toks, i + 3, "-" end
        if ssub(src, i, i + 1) == "}}" then return toks, i + 2, "" end
      else
        local c3 = ssub(src, i, i + 2)
        if c3 == "-%}" then return toks, i + 3, "-" end
        if c3 == "+%}" then return toks, i + 3, "+" end
        if ssub(src, i, i + 1) == "%}" then return toks, i + 2, "" end
      end
    end
    local line = lineof(i)
    local c = ssub(src, i, i)
    if sfind(c, "[%a_]") then
      local _, e = sfind(src, "^[%w_]+", i)
      toks[#toks + 1] = {t = "name", v = ssub(src, i, e), line = line}
      i = e + 1
    elseif sfind(c, "%d") then
      local _, e = sfind(src, "^%d[%d_]*", i)
      local prev = toks[#toks]
      if not (prev and prev.t == "op" and prev.v == ".") then   -- x.0.1 is two indices, not a float
        local _, e2 = sfind(src, "^%.%d[%d_]*", e + 1)
        if e2 then e = e2 end
        local _, e3 = sfind(src, "^[eE][+-]?%d[%d_]*", e + 1)
        if e3 then e = e3 end
      end
      toks[#toks + 1] = {t = "num", v = tonumber((sgsub(ssub(src, i, e), "_", ""))), line = line}
      i = e + 1
    elseif c == "'" or c == '"' then
      local j = i + 1
      while true do
        local ch = ssub(src, j, j)
        if ch == "" then cerr(line, "unterminated string") end
        if ch == "\\" then j = j + 2 elseif ch == c then break else j = j + 1 end
      end
      toks[#toks + 1] = {t = "str", v = unescape(ssub(src, i + 1, j - 1), line), line = line}
      i = j + 1
    else
      local op = ssub(src, i, i + 1)
      if OPS2[op] then
        i = i + 2
      elseif OPS1[c] then
        op = c; i = i + 1
      else
        cerr(line, "unexpected character '%s'", c)
      end
      if OPEN[op] then depth = depth + 1
      elseif CLOSE[op] then
        depth = depth - 1
        if depth < 0 then cerr(line, "unexpected '%s'", op) end
      end
      toks[#toks + 1] = {t = "op", v = op, line = line}
    end
  end
end

--- Splits template text into text, {{ }} and {% %} items, applying whitespace control, trim_blocks and
--- lstrip_blocks exactly as Jinja's lexer does; comments and raw blocks are resolved here.
local function lex(src)
  src = sgsub(sgsub(src, "\r\n", "\n"), "\r", "\n")
  if ssub(src, -1) == "\n" then src = ssub(src, 1, -2) end   -- keep_trailing_newline=False
  local lineof, nlines = line_index(src)
  local items, pos, n = {}, 1, #src
  local line_starting = true

  local function push_text(text)
    if text == "" then return end
    local last = items[#items]
    if last and last.kind == "text" then last.text = last.text .. text
    else items[#items + 1] = {kind = "text", text = text} end
  end
  local function strip_before(text, sign, is_block)
    if sign == "-" then return rstrip_ws(text) end
    if sign ~= "+" and is_block then
      local lp = 1
      local nl = text:match(".*()\n")
      if nl then lp = nl + 1 end
      if (lp > 1 or line_starting) and not sfind(text, "[^ \t\f\v\r\28-\31]", lp) then return ssub(text, 1, lp - 1) end
    end
    return text
  end
  local function after_end(p, sign, is_block)
    if sign == "-" then p = skip_ws(src, p)
    elseif sign == "" and is_block and ssub(src, p, p) == "\n" then p = p + 1 end
    line_starting = ssub(src, p - 1, p - 1) == "\n"
    return p
  end

  while pos <= n do
    local s = sfind(src, "{[{%%#]", pos)
    if not s then push_text(ssub(src, pos)); break end
    local c = ssub(src, s + 1, s + 1)
    local p = s + 2
    local sign = ssub(src, p, p)
    if sign == "-" or sign == "+" then p = p + 1 else sign = "" end
    push_text(strip_before(ssub(src, pos, s - 1), sign, c ~= "{"))
    local line = lineof(s)
    if c == "#" then
      local e = sfind(src, "#}", p, true)
      if not e then cerr(line, "comment is not closed") end
      local esign = e > p and ssub(src, e - 1, e - 1) or ""
      pos = after_end(e + 2, (esign == "-" or esign == "+") and esign or "", true)
    else
      local toks, after, esign = lex_tag(src, p, c == "{", lineof, line)
      if c == "%" and #toks == 1 and toks[1].t == "name" and toks[1].v == "raw" then
        -- {% raw %} never trims the newline after it; its body is text up to {% endraw %}
        pos = esign == "-" and skip_ws(src, after) or after
        line_starting = ssub(src, pos - 1, pos - 1) == "\n"
        local rs, re, bsign, asign = sfind(src, "{%%([-+]?)%s*endraw%s*([-+]?)%%}", pos)
        if not rs then cerr(line, "'raw' is not closed (missing 'endraw')") end
        push_text(strip_before(ssub(src, pos, rs - 1), bsign, true))
        pos = after_end(re + 1, asign, true)
      else
        items[#items + 1] = {kind = c == "{" and "var" or "block", toks = toks, line = line}
        pos = after_end(after, esign, c == "%")
      end
    end
  end
  return items, nlines
end

---------------------------------------------------------------------------------------------------------------
-- Parser: items -> AST. Statements: text, output, if, for, set, setattr, setblock, macro, filterblock,
-- with, block, break, continue. Expressions: const, name, list, dict, getattr, getitem, slice, call, filter,
-- test, not, neg, bin, compare, and, or, concat, condexpr.
---------------------------------------------------------------------------------------------------------------
local P = {} -- internal: the template parser
P.__index = P

local function tokdesc(t)
  if not t then return "end of tag" end
  if t.t == "str" then return "string " .. repr_str(t.v) end
  if t.t == "num" then return "number " .. num2str(t.v) end
  return "'" .. t.v .. "'"
end

function P:fail(fmt, ...)
  local t = self.toks[self.i]
  cerr(t and t.line or self.line, fmt, ...)
end
function P:peek(k) return self.toks[self.i + (k or 0)] end
function P:is_op(v) local t = self.toks[self.i]; return t and t.t == "op" and t.v == v end
function P:is_name(v) local t = self.toks[self.i]; return t and t.t == "name" and (v == nil or t.v == v) end
function P:accept_op(v) if self:is_op(v) then self.i = self.i + 1; return true end end
function P:accept_name(v) if self:is_name(v) then self.i = self.i + 1; return true end end
function P:expect_op(v)
  if not self:accept_op(v) then self:fail("expected '%s', got %s", v, tokdesc(self:peek())) end
end
function P:expect_name()
  local t = self:peek()
  if not t or t.t ~= "name" then self:fail("expected a name, got %s", tokdesc(t)) end
  self.i = self.i + 1
  return t.v
end
function P:begin_tag(it) self.toks, self.i, self.line = it.toks, 1, it.line end
function P:end_tag()
  local t = self:peek()
  if t then self:fail("unexpected %s", tokdesc(t)) end
end
function P:node(tag, t) t = t or {}; t.tag = tag; t.line = t.line or self.line; return t end

-- expressions --------------------------------------------------------------------------------------------
local CMP = {["=="] = true, ["!="] = true, ["<"] = true, [">"] = true, ["<="] = true, [">="] = true}
local NOT_TEST_ARG = {["else"] = true, ["or"] = true, ["and"] = true, ["if"] = true, ["in"] = true,
  ["not"] = true, ["is"] = true}

function P:expression(with_condexpr)
  if with_condexpr == false then return self:or_expr() end
  local e = self:or_expr()
  while self:accept_name("if") do
    local test = self:or_expr()
    local other
    if self:accept_name("else") then other = self:expression() end
    e = self:node("condexpr", {test = test, a = e, b = other})
  end
  return e
end

--- An expression, or a bare tuple `a, b` (a list), as after `set x =`.
function P:tuple_expr()
  local e = self:expression()
  if not self:is_op(",") then return e end
  local items = {e}
  while self:accept_op(",") do
    if not self:peek() then break end
    items[#items + 1] = self:expression()
  end
  return self:node("list", {items = items, tuple = true})
end

function P:or_expr()
  local e = self:and_expr()
  while self:accept_name("or") do e = self:node("or", {a = e, b = self:and_expr()}) end
  return e
end

function P:and_expr()
  local e = self:not_expr()
  while self:accept_name("and") do e = self:node("and", {a = e, b = self:not_expr()}) end
  return e
end

function P:not_expr()
  if self:accept_name("not") then
    return self:node("not", {x = self:not_expr()})
  end
  return self:compare()
end

function P:compare()
  local e = self:math1()
  local ops = {}
  while true do
    local t = self:peek()
    if t and t.t == "op" and CMP[t.v] then
      self.i = self.i + 1
      ops[#ops + 1] = {op = t.v, x = self:math1()}
    elseif self:accept_name("in") then
      ops[#ops + 1] = {op = "in", x = self:math1()}
    elseif self:is_name("not") and self:peek(1) and self:peek(1).t == "name" and self:peek(1).v == "in" then
      self.i = self.i + 2
      ops[#ops + 1] = {op = "notin", x = self:math1()}
    else
      break
    end
  end
  if #ops == 0 then return e end
  return self:node("compare", {x = e, ops = ops})
end

function P:math1()
  local e = self:concat()
  while self:is_op("+") or self:is_op("-") do
    local op = self:peek().v
    self.i = self.i + 1
    e = self:node("bin", {op = op, a = e, b = self:concat()})
  end
  return e
end

function P:concat()
  local e = self:math2()
  if not self:is_op("~") then return e end
  local args = {e}
  while self:accept_op("~") do args[#args + 1] = self:math2() end
  return self:node("concat", {args = args})
end

function P:math2()
  local e = self:pow()
  while self:is_op("*") or self:is_op("/") or self:is_op("//") or self:is_op("%") do
    local op = self:peek().v
    self.i = self.i + 1
    e = self:node("bin", {op = op, a = e, b = self:pow()})
  end
  return e
end

function P:pow()
  local e = self:unary(true)
  while self:accept_op("**") do e = self:node("bin", {op = "**", a = e, b = self:unary(true)}) end
  return e
end

function P:unary(with_filter)
  local e
  if self:accept_op("-") then e = self:node("neg", {x = self:unary(false)})
  elseif self:accept_op("+") then e = self:unary(false)
  else e = self:primary() end
  e = self:postfix(e)
  if with_filter then e = self:filter_expr(e) end
  return e
end

local CONSTS = {["true"] = true, ["True"] = true, ["false"] = false, ["False"] = false}

function P:primary()
  local t = self:peek()
  if not t then self:fail("expected an expression, got end of tag") end
  self.i = self.i + 1
  if t.t == "name" then
    if CONSTS[t.v] ~= nil then return self:node("const", {value = CONSTS[t.v]}) end
    if t.v == "none" or t.v == "None" then return self:node("const", {value = NONE}) end
    self.names[t.v] = true
    return self:node("name", {name = t.v, line = t.line})
  elseif t.t == "str" then
    local s = t.v
    while self:peek() and self:peek().t == "str" do s = s .. self:peek().v; self.i = self.i + 1 end
    return self:node("const", {value = s})
  elseif t.t == "num" then
    return self:node("const", {value = t.v})
  elseif t.v == "(" then
    if self:accept_op(")") then return self:node("list", {items = {}, tuple = true}) end
    local e = self:expression()
    if self:is_op(",") then
      local items = {e}
      while self:accept_op(",") do
        if self:is_op(")") then break end
        items[#items + 1] = self:expression()
      end
      e = self:node("list", {items = items, tuple = true})
    end
    self:expect_op(")")
    return e
  elseif t.v == "[" then
    local items = {}
    while not self:is_op("]") do
      items[#items + 1] = self:expression()
      if not self:accept_op(",") then break end
    end
    self:expect_op("]")
    return self:node("list", {items = items})
  elseif t.v == "{" then
    local kv = {}
    while not self:is_op("}") do
      kv[#kv + 1] = self:expression()
      self:expect_op(":")
      kv[#kv + 1] = self:expression()
      if not self:accept_op(",") then break end
    end
    self:expect_op("}")
    return self:node("dict", {kv = kv})
  end
  self.i = self.i - 1
  self:fail("unexpected %s", tokdesc(t))
end

function P:call_args()
  local args, kwargs = {}, nil
  while not self:is_op(")") do
    if self:is_op("*") or self:is_op("**") then self:fail("*args and **kwargs in calls are not supported") end
    local t1 = self:peek(1)
    if self:is_name() and t1 and t1.t == "op" and t1.v == "=" then
      local name = self:expect_name()
      self.i = self.i + 1
      kwargs = kwargs or {}
      kwargs[#kwargs + 1] = {name = name, value = self:expression()}
    else
      if kwargs then self:fail("positional argument after keyword argument") end
      args[#args + 1] = self:expression()
    end
    if not self:accept_op(",") then break end
  end
  self:expect_op(")")
  return args, kwargs
end

function P:postfix(e)
  while true do
    if self:accept_op(".") then
      local t = self:peek()
      if t and t.t == "name" then
        self.i = self.i + 1
        e = self:node("getattr", {obj = e, name = t.v})
      elseif t and t.t == "num" then
        self.i = self.i + 1
        e = self:node("getitem", {obj = e, key = self:node("const", {value = t.v})})
      else
        self:fail("expected an attribute name after '.', got %s", tokdesc(t))
      end
    elseif self:accept_op("[") then
      local a, b, c, is_slice
      if not self:is_op(":") then a = self:expression() end
      if self:accept_op(":") then
        is_slice = true
        if not self:is_op("]") and not self:is_op(":") then b = self:expression() end
        if self:accept_op(":") and not self:is_op("]") then c = self:expression() end
      end
      self:expect_op("]")
      if is_slice then e = self:node("slice", {obj = e, a = a, b = b, c = c})
      else e = self:node("getitem", {obj = e, key = a}) end
    elseif self:accept_op("(") then
      local args, kwargs = self:call_args()
      e = self:node("call", {fn = e, args = args, kwargs = kwargs})
    else
      return e
    end
  end
end

function P:filter_expr(e)
  while true do
    if self:accept_op("|") then
      local name = self:expect_name()
      local args, kwargs
      if self:accept_op("(") then args, kwargs = self:call_args() end
      if not F[name] then self:fail("unknown filter '%s'", name) end
      e = self:node("filter", {x = e, name = name, args = args, kwargs = kwargs})
    elseif self:accept_name("is") then
      local negate = self:accept_name("not")
      local t = self:peek()
      local name
      if t and (t.t == "name" or t.t == "op" and X[t.v]) then self.i = self.i + 1; name = t.v
      else self:fail("expected a test name after 'is', got %s", tokdesc(t)) end
      if not X[name] then cerr(t.line, "unknown test '%s'", name) end
      local args, kwargs
      local nt = self:peek()
      if self:accept_op("(") then
        args, kwargs = self:call_args()
      elseif nt and (nt.t == "str" or nt.t == "num" or nt.t == "name" and not NOT_TEST_ARG[nt.v]
          or nt.t == "op" and (nt.v == "(" or nt.v == "[" or nt.v == "{")) then
        args = {self:postfix(self:primary())}
      end
      e = self:node("test", {x = e, name = name, args = args, kwargs = kwargs})
      if negate then e = self:node("not", {x = e}) end
    elseif self:is_op("(") then
      self.i = self.i + 1
      local args, kwargs = self:call_args()
      e = self:node("call", {fn = e, args = args, kwargs = kwargs})
    else
      return e
    end
  end
end

-- statements ---------------------------------------------------------------------------------------------
local END_TAGS = {endif = true, endfor = true, elif = true, ["else"] = true, endset = true, endmacro = true,
  endraw = true, endfilter = true, endgeneration = true, endwith = true, endcall = true, endblock = true,
  endautoescape = true}
local UNSUPPORTED = {include = true, extends = true, import = true, from = true, block = true, call = true,
  recursive = true, trans = true, ["do"] = true}

function P:body(ends, opener)
  local body = {}
  while true do
    local it = self.items[self.k]
    if not it then
      if ends then
        local want = {}
        for k in pairs(ends) do want[#want + 1] = "'" .. k .. "'" end
        sort(want)
        cerr(self.nlines, "unexpected end of template: '%s' on line %d is not closed (expected %s)",
          opener.name, opener.line, concat(want, " or "))
      end
      return body
    end
    self.k = self.k + 1
    if it.kind == "text" then
      body[#body + 1] = {tag = "text", text = it.text}
    elseif it.kind == "var" then
      self:begin_tag(it)
      local e = self:expression()
      self:end_tag()
      body[#body + 1] = {tag = "output", x = e, line = it.line}
    else
      self:begin_tag(it)
      local t = self:peek()
      if not t or t.t ~= "name" then self:fail("expected a tag name, got %s", tokdesc(t)) end
      self.i = self.i + 1
      if ends and ends[t.v] then return body, t.v end
      local h = P["stmt_" .. t.v]
      if not h then
        if END_TAGS[t.v] then cerr(it.line, "unexpected '%s'", t.v) end
        if UNSUPPORTED[t.v] then cerr(it.line, "the '%s' tag is not supported", t.v) end
        cerr(it.line, "unknown tag '%s'", t.v)
      end
      body[#body + 1] = h(self, it)
    end
  end
end

local IF_ENDS, ENDIF = {elif = true, ["else"] = true, endif = true}, {endif = true}
local FOR_ENDS, ENDFOR = {["else"] = true, endfor = true}, {endfor = true}

P["stmt_if"] = function(self, it)
  local node = {tag = "if", line = it.line, branches = {}}
  local cond = self:expression()
  self:end_tag()
  local opener = {name = "if", line = it.line}
  while true do
    local line = self.line
    local body, term = self:body(IF_ENDS, opener)
    node.branches[#node.branches + 1] = {cond = cond, body = body, line = line}
    if term == "elif" then
      cond = self:expression()
      self:end_tag()
    else
      self:end_tag()
      if term == "else" then
        node.else_ = self:body(ENDIF, opener)
        self:end_tag()
      end
      return node
    end
  end
end

P["stmt_for"] = function(self, it)
  local targets = {}
  local paren = self:accept_op("(")
  repeat targets[#targets + 1] = self:expect_name() until not self:accept_op(",") or paren and self:is_op(")")
  if paren then self:expect_op(")") end
  for _, name in ipairs(targets) do self.names[name] = true end
  if not self:accept_name("in") then self:fail("expected 'in', got %s", tokdesc(self:peek())) end
  local iter = self:expression(false)
  local cond
  if self:accept_name("if") then cond = self:expression() end
  if self:is_name("recursive") then self:fail("recursive loops are not supported") end
  self:end_tag()
  local opener = {name = "for", line = it.line}
  self.loop_depth = self.loop_depth + 1
  local body, term = self:body(FOR_ENDS, opener)
  self.loop_depth = self.loop_depth - 1
  self:end_tag()
  local else_
  if term == "else" then
    else_ = self:body(ENDFOR, opener)
    self:end_tag()
  end
  return {tag = "for", line = it.line, targets = targets, iter = iter, cond = cond, body = body, else_ = else_}
end

function P:filter_chain(x)
  while self:accept_op("|") do
    local name = self:expect_name()
    local args, kwargs
    if self:accept_op("(") then args, kwargs = self:call_args() end
    if not F[name] then self:fail("unknown filter '%s'", name) end
    x = self:node("filter", {x = x, name = name, args = args, kwargs = kwargs})
  end
  return x
end

P["stmt_set"] = function(self, it)
  local name = self:expect_name()
  self.names[name] = true
  if self:accept_op(".") then
    local attr = self:expect_name()
    self:expect_op("=")
    local value = self:tuple_expr()
    self:end_tag()
    return {tag = "setattr", line = it.line, name = name, attr = attr, x = value}
  end
  local names = {name}
  while self:accept_op(",") do
    names[#names + 1] = self:expect_name()
    self.names[names[#names]] = true
  end
  if self:accept_op("=") then
    local value = self:tuple_expr()
    self:end_tag()
    return {tag = "set", line = it.line, names = names, x = value}
  end
  if #names > 1 then self:fail("expected '='") end
  local capture = self:filter_chain({tag = "captured", line = it.line})
  self:end_tag()
  local body = self:body({endset = true}, {name = "set", line = it.line})
  self:end_tag()
  return {tag = "setblock", line = it.line, name = name, body = body, x = capture}
end

P["stmt_macro"] = function(self, it)
  local name = self:expect_name()
  self.names[name] = true
  self:expect_op("(")
  local params = {}
  while not self:is_op(")") do
    local p = {name = self:expect_name()}
    self.names[p.name] = true
    if self:accept_op("=") then p.default = self:expression() end
    params[#params + 1] = p
    if not self:accept_op(",") then break end
  end
  self:expect_op(")")
  self:end_tag()
  local saved = self.loop_depth
  self.loop_depth = 0
  local body = self:body({endmacro = true}, {name = "macro", line = it.line})
  self.loop_depth = saved
  self:end_tag()
  return {tag = "macro", line = it.line, name = name, params = params, body = body}
end

P["stmt_filter"] = function(self, it)
  self.i = self.i - 1   -- reuse the filter chain parser: pretend the tag name was a '|'
  self.toks[self.i] = {t = "op", v = "|", line = it.line}
  local x = self:filter_chain({tag = "captured", line = it.line})
  self:end_tag()
  local body = self:body({endfilter = true}, {name = "filter", line = it.line})
  self:end_tag()
  return {tag = "filterblock", line = it.line, body = body, x = x}
end

P["stmt_with"] = function(self, it)
  local assigns = {}
  while self:is_name() do
    local name = self:expect_name()
    self.names[name] = true
    self:expect_op("=")
    assigns[#assigns + 1] = {name = name, x = self:expression()}
    if not self:accept_op(",") then break end
  end
  self:end_tag()
  local body = self:body({endwith = true}, {name = "with", line = it.line})
  self:end_tag()
  return {tag = "with", line = it.line, assigns = assigns, body = body}
end

local function plain_block(endtag)
  return function(self, it)
    while self:peek() do self.i = self.i + 1 end   -- {% autoescape false %}: arguments do not matter here
    local body = self:body({[endtag] = true}, {name = ssub(endtag, 4), line = it.line})
    self:end_tag()
    return {tag = "block", line = it.line, body = body}
  end
end
P["stmt_generation"] = plain_block("endgeneration")
P["stmt_autoescape"] = plain_block("endautoescape")

local function loop_control(tag)
  return function(self, it)
    self:end_tag()
    if self.loop_depth == 0 then cerr(it.line, "'%s' outside of a loop", tag) end
    return {tag = tag, line = it.line}
  end
end
P["stmt_break"] = loop_control("break")
P["stmt_continue"] = loop_control("continue")

local function parse(src)
  local items, nlines = lex(src)
  local p = setmetatable({items = items, k = 1, names = {}, loop_depth = 0, nlines = nlines, toks = {}, i = 1,
    line = 1}, P)
  return p:body(nil), p.names
end

---------------------------------------------------------------------------------------------------------------
-- Code generation: AST -> Lua source. Each Jinja scope (template, loop body, macro, with) declares its
-- variables as Lua locals up front, so Lua's lexical scoping gives Jinja's: a `set` inside a loop does not
-- leak out of it, a `set` inside an `if` does.
---------------------------------------------------------------------------------------------------------------
local function lua_str(s)
  return '"' .. sgsub(s, '[%z\1-\31"\\\127-\255]', function(c) return sfmt("\\%03d", sbyte(c)) end) .. '"'
end

local function lua_num(x)
  if x == floor(x) and abs(x) < 2 ^ 53 then return sfmt("%d", x) end
  if x ~= x then return "(0/0)" end
  if x == huge then return "(1/0)" elseif x == -huge then return "(-1/0)" end
  return sfmt("%.17g", x)
end

--- Names a statement list assigns in its own scope (not inside nested loops, macros or with blocks).
local function assigned(body, acc)
  acc = acc or {}
  for _, st in ipairs(body) do
    local tag = st.tag
    if tag == "set" then for _, n in ipairs(st.names) do acc[n] = true end
    elseif tag == "setblock" or tag == "macro" then acc[st.name] = true; if tag == "setblock" then assigned(st.body, acc) end
    elseif tag == "if" then
      for _, b in ipairs(st.branches) do assigned(b.body, acc) end
      if st.else_ then assigned(st.else_, acc) end
    elseif tag == "block" or tag == "filterblock" then assigned(st.body, acc) end
  end
  return acc
end

--- Whether a name is read anywhere in x, not counting nested loop bodies and macros (they rebind it).
local function uses_name(x, name)
  if type(x) ~= "table" then return false end
  if x.tag == "name" then return x.name == name end
  if x.tag == "for" then return uses_name(x.iter, name) end
  if x.tag == "macro" then return false end
  for _, v in pairs(x) do
    if type(v) == "table" and uses_name(v, name) then return true end
  end
  return false
end

local Gen = {} -- internal: the Lua code generator
Gen.__index = Gen

function Gen:emit(code)
  local n = #self.buf + 1
  self.buf[n] = code
  self.lines[n] = self.line
end

function Gen:capture(fn, ...)
  local buf, lines = self.buf, self.lines
  self.buf, self.lines = {}, {}
  local r = fn(self, ...)
  local b, l = self.buf, self.lines
  self.buf, self.lines = buf, lines
  return r, b, l
end

function Gen:splice(b, l)
  for i = 1, #b do
    local n = #self.buf + 1
    self.buf[n], self.lines[n] = b[i], l[i]
  end
end

function Gen:tmp()
  self.ntmp = self.ntmp + 1
  return "t" .. self.ntmp
end

function Gen:ref(name)
  for i = #self.scopes, 1, -1 do
    local sc = self.scopes[i]
    if sc.vars[name] then return sc.table and (sc.table .. "[" .. lua_str(name) .. "]") or ("v_" .. name) end
  end
  error("internal: unresolved name " .. name)
end

--- Opens a scope declaring names as locals initialised from the enclosing scope (or from init[name]).
function Gen:push_scope(names, init)
  local decls = {}
  for _, name in ipairs(names) do decls[#decls + 1] = {name, (init and init[name]) or self:ref(name)} end
  local vars = {}
  for _, name in ipairs(names) do vars[name] = true end
  self.scopes[#self.scopes + 1] = {vars = vars}
  for _, d in ipairs(decls) do self:emit("local v_" .. d[1] .. " = " .. d[2]) end
end

function Gen:pop_scope() self.scopes[#self.scopes] = nil end

local function sorted_keys(set, exclude)
  local t = {}
  for k in pairs(set) do if not (exclude and exclude[k]) then t[#t + 1] = k end end
  sort(t)
  return t
end

-- expressions: E returns a Lua expression (emitting any statements it needs first); C a Lua boolean --------
local E, C = {}, {}

function Gen:expr(x)
  if x.line then self.line = x.line end
  return E[x.tag](self, x)
end

function Gen:cond(x)
  local f = C[x.tag]
  if f then return f(self, x) end
  return "truthy(" .. self:expr(x) .. ")"
end

function Gen:args(list, kwargs)
  local parts = {}
  for i, a in ipairs(list or {}) do parts[i] = self:expr(a) end
  local a = (#parts == 0) and "EMPTY" or ("{n = " .. #parts .. ", " .. concat(parts, ", ") .. "}")
  if not kwargs then return a, "nil" end
  local kp = {}
  for _, kv in ipairs(kwargs) do kp[#kp + 1] = "[" .. lua_str(kv.name) .. "] = " .. self:expr(kv.value) end
  return a, "{" .. concat(kp, ", ") .. "}"
end

E.const = function(g, x)
  local v = x.value
  if v == NONE then return "NONE" end
  if type(v) == "string" then return lua_str(v) end
  if type(v) == "number" then return lua_num(v) end
  return tostring(v)
end
E.name = function(g, x) return g:ref(x.name) end
E.list = function(g, x)
  local mk = x.tuple and "mktuple" or "mklist"
  if #x.items == 0 then return mk .. "({})" end
  local parts = {}
  for i, it in ipairs(x.items) do parts[i] = g:expr(it) end
  return mk .. "({n = " .. #parts .. ", " .. concat(parts, ", ") .. "})"
end
E.dict = function(g, x)
  local parts = {}
  for i, it in ipairs(x.kv) do parts[i] = g:expr(it) end
  return "mkdict({" .. concat(parts, ", ") .. "})"
end
E.getattr = function(g, x) return "ga(" .. g:expr(x.obj) .. ", " .. lua_str(x.name) .. ")" end
E.getitem = function(g, x) return "gi(" .. g:expr(x.obj) .. ", " .. g:expr(x.key) .. ")" end
E.slice = function(g, x)
  local function opt(e) return e and g:expr(e) or "nil" end
  local obj = g:expr(x.obj)
  local a, b, c = opt(x.a), opt(x.b), opt(x.c)
  return "slice(" .. obj .. ", " .. a .. ", " .. b .. ", " .. c .. ")"
end
E.call = function(g, x)
  if x.fn.tag == "getattr" then
    local obj = g:expr(x.fn.obj)
    local a, k = g:args(x.args, x.kwargs)
    return "cm(" .. obj .. ", " .. lua_str(x.fn.name) .. ", " .. a .. ", " .. k .. ")"
  end
  local f = g:expr(x.fn)
  local a, k = g:args(x.args, x.kwargs)
  local shown = x.fn.tag == "name" and x.fn.name or "expression"
  return "call(" .. f .. ", " .. lua_str(shown) .. ", " .. a .. ", " .. k .. ")"
end
E.filter = function(g, x)
  local v = g:expr(x.x)
  if x.name == "safe" then return v end
  if not x.args and not x.kwargs then return "F[" .. lua_str(x.name) .. "](" .. v .. ")" end
  local a, k = g:args(x.args, x.kwargs)
  return "F[" .. lua_str(x.name) .. "](" .. v .. ", " .. a .. ", " .. k .. ")"
end
E.captured = function(g) return g.captured end
E.neg = function(g, x)
  if x.x.tag == "const" and type(x.x.value) == "number" then return lua_num(-x.x.value) end
  return "neg(" .. g:expr(x.x) .. ")"
end
local BIN = {["+"] = "add", ["-"] = "sub", ["*"] = "mul", ["/"] = "div", ["//"] = "fdiv", ["%"] = "mod", ["**"] = "pow"}
E.bin = function(g, x)
  local a = g:expr(x.a)
  local b = g:expr(x.b)
  return BIN[x.op] .. "(" .. a .. ", " .. b .. ")"
end
E.concat = function(g, x)
  local parts = {}
  for i, a in ipairs(x.args) do
    if a.tag == "const" and type(a.value) == "string" then parts[i] = lua_str(a.value)
    else parts[i] = "str(" .. g:expr(a) .. ")" end
  end
  return "(" .. concat(parts, " .. ") .. ")"
end
E["not"] = function(g, x) return g:cond(x) end
E.test = function(g, x) return g:cond(x) end
E.compare = function(g, x) return g:cond(x) end
E["and"] = function(g, x)
  local t = g:tmp()
  g:emit("local " .. t .. " = " .. g:expr(x.a))
  g:emit("if truthy(" .. t .. ") then")
  local b = g:expr(x.b)
  g:emit(t .. " = " .. b)
  g:emit("end")
  return t
end
E["or"] = function(g, x)
  local t = g:tmp()
  g:emit("local " .. t .. " = " .. g:expr(x.a))
  g:emit("if not truthy(" .. t .. ") then")
  local b = g:expr(x.b)
  g:emit(t .. " = " .. b)
  g:emit("end")
  return t
end
E.condexpr = function(g, x)
  local t = g:tmp()
  g:emit("local " .. t)
  g:emit("if " .. g:cond(x.test) .. " then")
  local a = g:expr(x.a)
  g:emit(t .. " = " .. a)
  if x.b then
    g:emit("else")
    local b = g:expr(x.b)
    g:emit(t .. " = " .. b)
  end
  g:emit("end")
  return t
end

C.const = function(g, x) return truthy(x.value) and "true" or "false" end
C["not"] = function(g, x) return "not " .. g:cond(x.x) end
local function lazy_bool(g, x, op)
  local a = g:cond(x.a)
  local b, lines, lmap = g:capture(g.cond, x.b)
  if #lines == 0 then return "(" .. a .. " " .. op .. " " .. b .. ")" end
  local t = g:tmp()
  g:emit("local " .. t .. " = " .. a)
  g:emit(op == "and" and ("if " .. t .. " then") or ("if not " .. t .. " then"))
  g:splice(lines, lmap)
  g:emit(t .. " = " .. b)
  g:emit("end")
  return t
end
C["and"] = function(g, x) return lazy_bool(g, x, "and") end
C["or"] = function(g, x) return lazy_bool(g, x, "or") end

local INLINE_TEST = {defined = "(%s ~= nil)", undefined = "(%s == nil)", none = "(%s == NONE)",
  string = "(type(%s) == \"string\")", ["true"] = "(%s == true)", ["false"] = "(%s == false)"}
C.test = function(g, x)
  local v = g:expr(x.x)
  if not x.args and INLINE_TEST[x.name] then return sfmt(INLINE_TEST[x.name], v) end
  local a = x.args and g:args(x.args) or "nil"
  return "X[" .. lua_str(x.name) .. "](" .. v .. ", " .. a .. ")"
end

local function is_str_const(x) return x.tag == "const" and type(x.value) == "string" end
local CMPFN = {["<"] = "lt", ["<="] = "le", [">"] = "gt", [">="] = "ge"}
local function compare_one(op, a, b, ax, bx)
  if op == "==" or op == "!=" then
    local e = (is_str_const(ax) or is_str_const(bx)) and ("(" .. a .. " == " .. b .. ")") or ("eq(" .. a .. ", " .. b .. ")")
    return op == "==" and e or ("not " .. e)
  elseif op == "in" then return "contains(" .. b .. ", " .. a .. ")"
  elseif op == "notin" then return "not contains(" .. b .. ", " .. a .. ")" end
  return CMPFN[op] .. "(" .. a .. ", " .. b .. ")"
end
C.compare = function(g, x)
  local a, ax = g:expr(x.x), x.x
  if #x.ops == 1 then
    local b = g:expr(x.ops[1].x)
    return compare_one(x.ops[1].op, a, b, ax, x.ops[1].x)
  end
  -- a < b < c: each middle operand is evaluated once
  local parts = {}
  for i, o in ipairs(x.ops) do
    local b = g:expr(o.x)
    if i < #x.ops then
      local t = g:tmp()
      g:emit("local " .. t .. " = " .. b)
      b = t
    end
    parts[#parts + 1] = compare_one(o.op, a, b, ax, o.x)
    a, ax = b, o.x
  end
  return "(" .. concat(parts, " and ") .. ")"
end

-- statements -----------------------------------------------------------------------------------------------
local S_ = {}

function Gen:body(body)
  for _, st in ipairs(body) do
    if st.line then self.line = st.line end
    S_[st.tag](self, st)
  end
end

--- Emits `do <pre> <stmt(expr)> end`, or just the statement when the expression needs no preparation.
function Gen:with_expr(x, stmt)
  local e, lines, lmap = self:capture(self.expr, x)
  if #lines == 0 then self:emit(stmt(e)); return end
  self:emit("do")
  self:splice(lines, lmap)
  self:emit(stmt(e))
  self:emit("end")
end

S_.text = function(g, st) g:emit("n = n + 1; o[n] = " .. lua_str(st.text)) end
S_.output = function(g, st)
  local x = st.x
  if x.tag == "const" then
    g:emit("n = n + 1; o[n] = " .. lua_str(str(x.value)))
    return
  end
  g:with_expr(x, function(e) return "n = n + 1; o[n] = str(" .. e .. ")" end)
end

S_["if"] = function(g, st)
  local closers = 0
  for i, br in ipairs(st.branches) do
    g.line = br.line or st.line
    local c, lines, lmap = g:capture(g.cond, br.cond)
    if i == 1 then
      g:emit("do")
      g:splice(lines, lmap)
      g:emit("if " .. c .. " then")
      closers = 2
    elseif #lines == 0 then
      g:emit("elseif " .. c .. " then")
    else
      g:emit("else")
      g:splice(lines, lmap)
      g:emit("if " .. c .. " then")
      closers = closers + 1
    end
    g:body(br.body)
  end
  if st.else_ then
    g:emit("else")
    g:body(st.else_)
  end
  for _ = 1, closers do g:emit("end") end
end

S_["for"] = function(g, st)
  g.uid = g.uid + 1
  local id = g.uid
  local s, n, L, i = "s" .. id, "n" .. id, "L" .. id, "i" .. id
  local targets = st.targets
  local function bind(item)
    if #targets == 1 then return item end
    return "unpackn(" .. item .. ", " .. #targets .. ")"
  end
  g:emit("do")
  local iter = g:expr(st.iter)
  g:emit("local " .. s .. " = seq(" .. iter .. ")")
  if st.cond then
    local f = "f" .. id
    g:emit("local " .. f .. " = {}")
    g:emit("for " .. i .. " = 1, #" .. s .. " do")
    local none = {}
    for _, t in ipairs(targets) do none[t] = "nil" end
    g:push_scope(targets, none)
    local names = {}
    for k, t in ipairs(targets) do names[k] = "v_" .. t end
    g:emit(concat(names, ", ") .. " = " .. bind(s .. "[" .. i .. "]"))
    local c = g:cond(st.cond)
    g:emit("if " .. c .. " then " .. f .. "[#" .. f .. " + 1] = " .. s .. "[" .. i .. "] end")
    g:pop_scope()
    g:emit("end")
    g:emit(s .. " = " .. f)
  end
  g:emit("local " .. n .. " = #" .. s)
  local uses_loop = uses_name(st.body, "loop")
  if uses_loop then g:emit("local " .. L .. " = newloop(" .. s .. ", " .. n .. ")") end
  g:emit("for " .. i .. " = 1, " .. n .. " do")
  local own = {}
  for _, t in ipairs(targets) do own[t] = true end
  own.loop = true
  local hoist = sorted_keys(assigned(st.body), own)
  local init = {}
  for _, t in ipairs(targets) do init[t] = "nil" end
  if uses_loop then init.loop = L end
  local names = {}
  for _, t in ipairs(targets) do names[#names + 1] = t end
  if uses_loop then names[#names + 1] = "loop" end
  for _, h in ipairs(hoist) do names[#names + 1] = h end
  g:push_scope(names, init)
  local tnames = {}
  for k, t in ipairs(targets) do tnames[k] = "v_" .. t end
  g:emit(concat(tnames, ", ") .. " = " .. bind(s .. "[" .. i .. "]"))
  if uses_loop then g:emit("loopstep(" .. L .. ", " .. i .. ")") end
  local loopinfo = {id = id}
  g.loops[#g.loops + 1] = loopinfo
  g:emit("do")
  g:body(st.body)
  g:emit("end")
  g.loops[#g.loops] = nil
  if loopinfo.continued then g:emit("::c" .. id .. "::") end
  g:pop_scope()
  g:emit("end")
  if st.else_ then
    g:emit("if " .. n .. " == 0 then")
    g:push_scope(sorted_keys(assigned(st.else_)))
    g:body(st.else_)
    g:pop_scope()
    g:emit("end")
  end
  g:emit("end")
end

S_["break"] = function(g) g:emit("do break end") end
S_["continue"] = function(g)
  local loop = g.loops[#g.loops]
  loop.continued = true
  g:emit("goto c" .. loop.id)
end

S_.set = function(g, st)
  if #st.names == 1 then
    local ref = g:ref(st.names[1])
    g:with_expr(st.x, function(e) return ref .. " = " .. e end)
    return
  end
  local refs = {}
  for i, name in ipairs(st.names) do refs[i] = g:ref(name) end
  g:with_expr(st.x, function(e) return concat(refs, ", ") .. " = unpackn(" .. e .. ", " .. #refs .. ")" end)
end

S_.setattr = function(g, st)
  local ref = g:ref(st.name)
  g:with_expr(st.x, function(e) return "setattr(" .. ref .. ", " .. lua_str(st.attr) .. ", " .. e .. ")" end)
end

--- Renders body into a fresh buffer and hands the text (as a Lua expression) to done.
function Gen:captured_body(body, filters, done)
  local t = self:tmp()
  self:emit("do")
  self:emit("local " .. t)
  self:emit("do")
  self:emit("local o, n = {}, 0")
  self:body(body)
  self:emit(t .. " = concat(o, \"\", 1, n)")
  self:emit("end")
  local saved = self.captured
  self.captured = t
  local e = self:expr(filters)
  self.captured = saved
  self:emit(done(e))
  self:emit("end")
end

S_.setblock = function(g, st)
  local ref = g:ref(st.name)
  g:captured_body(st.body, st.x, function(e) return ref .. " = " .. e end)
end

S_.filterblock = function(g, st)
  g:captured_body(st.body, st.x, function(e) return "n = n + 1; o[n] = str(" .. e .. ")" end)
end

S_.block = function(g, st) g:body(st.body) end

S_.with = function(g, st)
  g:emit("do")
  local names, init = {}, {}
  for _, a in ipairs(st.assigns) do
    local t = g:tmp()
    g:with_expr(a.x, function(e) return "local " .. t .. " = " .. e end)
    names[#names + 1] = a.name
    init[a.name] = t
  end
  local own = {}
  for _, n in ipairs(names) do own[n] = true end
  for _, h in ipairs(sorted_keys(assigned(st.body), own)) do names[#names + 1] = h end
  g:push_scope(names, init)
  g:body(st.body)
  g:pop_scope()
  g:emit("end")
end

S_.macro = function(g, st)
  local ref = g:ref(st.name)
  g:emit(ref .. " = macro(function(args, kw)")
  local own, names, init = {}, {}, {}
  for _, p in ipairs(st.params) do own[p.name] = true; names[#names + 1] = p.name; init[p.name] = "nil" end
  local extras = {"varargs", "kwargs"}
  for _, e in ipairs(extras) do
    if uses_name(st.body, e) and not own[e] then own[e] = true; names[#names + 1] = e; init[e] = "nil" end
  end
  for _, h in ipairs(sorted_keys(assigned(st.body), own)) do names[#names + 1] = h end
  g:push_scope(names, init)
  for k, p in ipairs(st.params) do
    local v = "v_" .. p.name
    g:emit(v .. " = args[" .. k .. "]")
    g:emit("if " .. v .. " == nil and kw then " .. v .. " = kw[" .. lua_str(p.name) .. "] end")
    if p.default then
      g:emit("if " .. v .. " == nil then")
      local d = g:expr(p.default)
      g:emit(v .. " = " .. d)
      g:emit("end")
    end
  end
  if own.varargs and init.varargs then g:emit("v_varargs = varargs(args, " .. #st.params .. ")") end
  if own.kwargs and init.kwargs then g:emit("v_kwargs = kw and dictof(kw) or mkdict({})") end
  local saved_loops = g.loops
  g.loops = {}
  g:emit("local o, n = {}, 0")
  g:body(st.body)
  g:emit("return concat(o, \"\", 1, n)")
  g.loops = saved_loops
  g:pop_scope()
  g:emit("end)")
end

local HEADER = {
  "local R, F, X, G = ...",
  "local NONE, EMPTY, truthy, str, seq = R.NONE, R.EMPTY, R.truthy, R.str, R.seq",
  "local ga, gi, slice, call, cm = R.ga, R.gi, R.slice, R.call, R.cm",
  "local add, sub, mul, div, fdiv, mod, pow, neg = R.add, R.sub, R.mul, R.div, R.fdiv, R.mod, R.pow, R.neg",
  "local eq, lt, le, gt, ge, contains = R.eq, R.lt, R.le, R.gt, R.ge, R.contains",
  "local newloop, loopstep, unpackn, mklist, mkdict, mktuple = R.newloop, R.loopstep, R.unpack, R.mklist, R.mkdict, R.mktuple",
  "local setattr, macro, lookup, varargs, dictof, concat = R.setattr, R.macro, R.lookup, R.varargs, R.dictof, R.concat",
  "local type = R.type",
  "return function(ctx)",
  "local o, n = {}, 0",
}
R.concat, R.type = concat, type
function R.dictof(t) return T.dict(t) end

local MAX_LOCALS = 120   -- Lua allows 200 locals per function and LuaJIT 60 upvalues per closure

local function generate(ast, names, vars_in_table)
  local g = setmetatable({buf = {}, lines = {}, line = 0, ntmp = 0, uid = 0, scopes = {}, loops = {}}, Gen)
  for _, h in ipairs(HEADER) do g:emit(h) end
  local all = sorted_keys(names)
  if vars_in_table or #all > MAX_LOCALS then
    -- too many for Lua locals: keep the template's variables in a table
    g:emit("local V = {}")
    for _, name in ipairs(all) do g:emit("V[" .. lua_str(name) .. "] = lookup(ctx, G, " .. lua_str(name) .. ")") end
    g.scopes[1] = {vars = names, table = "V"}
  else
    for _, name in ipairs(all) do g:emit("local v_" .. name .. " = lookup(ctx, G, " .. lua_str(name) .. ")") end
    g.scopes[1] = {vars = names}
  end
  g:body(ast)
  g.line = 0
  g:emit("return concat(o, \"\", 1, n)")
  g:emit("end")
  return concat(g.buf, "\n"), g.lines
end

---------------------------------------------------------------------------------------------------------------
-- Public API
---------------------------------------------------------------------------------------------------------------
local cache = {}
local ncompiled = 0

local function compile_source(src, vars_in_table)
  local ok, ast, names = pcall(parse, src)
  if not ok then return nil, ast end
  local ok2, code, lines = pcall(generate, ast, names, vars_in_table)
  if not ok2 then return nil, code end
  return code, lines
end

local function err_text(e)
  if type(e) == "table" and e.msg then return sfmt("chat template line %d: %s", e.tpl_line or 0, e.msg) end
  return "chat template: " .. tostring(e)
end

--- The Lua source a template compiles to (for debugging), or nil and the error.
function T.source(src)
  if type(src) ~= "string" then error("template.source: template must be a string", 2) end
  local code, lines = compile_source(src)
  if not code then return nil, err_text(lines) end
  return code
end

--- The cached render function of src, or nil and the compile error.
local function get(src)
  local cached = cache[src]
  if cached then return cached end
  local code, lines = compile_source(src)
  if not code then return nil, err_text(lines) end
  ncompiled = ncompiled + 1
  local chunkname = "=chat template #" .. ncompiled
  local chunk, lerr = loadstring(code, chunkname)
  if not chunk and (lerr:find("too many", 1, true) or lerr:find("upvalues", 1, true)) then
    code, lines = compile_source(src, true)
    chunk, lerr = loadstring(code, chunkname)
  end
  if not chunk then return nil, "chat template: could not load generated code: " .. tostring(lerr) end
  setfenv(chunk, {})
  local main = chunk(R, F, X, G)

  local function handler(e)
    if type(e) == "table" and e.raise then return "chat template: " .. e.raise end
    local msg = type(e) == "table" and (e.msg or tostring(e)) or tostring(e)
    for level = 2, 200 do
      local info = debug.getinfo(level, "Sl")
      if not info then break end
      if info.source == chunkname then
        local line = lines[info.currentline]
        if line and line > 0 then return sfmt("chat template line %d: %s", line, msg) end
        break
      end
    end
    return "chat template: " .. msg
  end

  local function render(ctx)
    if ctx ~= nil and type(ctx) ~= "table" then error("template: context must be a table", 2) end
    local ok, res = xpcall(main, handler, ctx or {})
    if not ok then error(res, 2) end
    return res
  end
  cache[src] = render
  return render
end

--- Compiles a template into a function of a context table that returns the rendered text.
function T.compile(src)
  if type(src) ~= "string" then error("template.compile: template must be a string, got " .. type(src), 2) end
  local f, err = get(src)
  if not f then error(err, 2) end
  return f
end

--- Compiles (or reuses) src and renders it with ctx.
function T.render(src, ctx)
  if type(src) ~= "string" then error("template.render: template must be a string, got " .. type(src), 2) end
  local f, err = get(src)
  if not f then error(err, 2) end
  local ok, res = pcall(f, ctx)   -- f raises at its caller, pcall, so res carries no position
  if not ok then error(res, 2) end
  return res
end

return T
