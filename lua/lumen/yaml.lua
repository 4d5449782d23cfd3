--- YAML documents as Lua tables, parsed by libyaml through core/yaml.c.
--
--   local yaml = require "lumen.yaml"
--   local doc = yaml.load_file("configs/models.yaml")
--   local t = yaml.load_string("a: [1, ~, x]", "inline.yaml")  --> {a = {1, yaml.null, "x"}}
--
-- Mappings become tables, sequences arrays. Plain scalars are typed by the
-- YAML 1.2 core schema:
--   null   null, Null, NULL, ~, and an empty value
--   bool   true, True, TRUE, false, False, FALSE  (yes/no/on/off stay strings)
--   int    [-+]?[0-9]+, 0x[0-9a-fA-F]+, 0o[0-7]+  (beyond 2^53 precision is lost:
--          Lua numbers are doubles; quote such values to keep the text)
--   float  1.5, .5, 1e3, -2.5E-3, [-+].inf, .nan (and their Inf/INF/NaN/NAN forms)
--   everything else is a string. Quoted and block scalars are always strings.
-- Explicit tags are honoured: !!str, !!int, !!float, !!bool, !!null, !!seq,
-- !!map, and "!" (a string); any other tag is an error.
--
-- Null: a null in a sequence is the sentinel yaml.null, so that the array has no
-- holes; a null value in a mapping leaves the key absent (t.key == nil); a null
-- document (an empty file) loads as nil. Mapping keys are typed like values;
-- null and collection keys are refused, as are two keys that type to the same
-- Lua value (1 and 0x1).
--
-- An alias yields the same Lua table as its anchor (as PyYAML does), so changing
-- one changes the other. Errors are raised as "FILE:LINE:COL: problem".
local ffi = require "ffi"
local C = require "lumen.ffi"

local yaml = {}

local SCALAR, SEQ, MAP = 1, 2, 3
local PLAIN = 0

--- The null sentinel found in sequences.
yaml.null = setmetatable({}, {
  __tostring = function() return "yaml.null" end,
  __newindex = function() error("yaml.null is read-only", 2) end,
  __metatable = "yaml.null",
})

local NULLS = { [""] = true, ["~"] = true, null = true, Null = true, NULL = true }
local BOOLS = { ["true"] = true, True = true, TRUE = true, ["false"] = false, False = false, FALSE = false }
local SPECIAL_FLOATS = {
  [".inf"] = math.huge, [".Inf"] = math.huge, [".INF"] = math.huge,
  ["+.inf"] = math.huge, ["+.Inf"] = math.huge, ["+.INF"] = math.huge,
  ["-.inf"] = -math.huge, ["-.Inf"] = -math.huge, ["-.INF"] = -math.huge,
  [".nan"] = 0 / 0, [".NaN"] = 0 / 0, [".NAN"] = 0 / 0,
}

-- An integer of the core schema, or nil.
local function parse_int(s)
  if s:find("^[-+]?%d+$") then return tonumber(s) end
  local hex = s:match("^0x(%x+)$")
  if hex then return tonumber(hex, 16) end
  local oct = s:match("^0o([0-7]+)$")
  if oct then return tonumber(oct, 8) end
  return nil
end

-- A float of the core schema (ints included), or nil.
local function parse_float(s)
  local special = SPECIAL_FLOATS[s]
  if special then return special end
  local mantissa, exponent = s:match("^([-+]?[%d.]+)(.*)$")
  if not mantissa then return nil end
  if not (mantissa:find("^[-+]?%.%d+$") or mantissa:find("^[-+]?%d+%.?%d*$")) then return nil end
  if exponent ~= "" and not exponent:find("^[eE][-+]?%d+$") then return nil end
  return tonumber(s)
end

-- A plain, untagged scalar typed by the core schema; NULL for null.
local NULL = {}
local function resolve_plain(s)
  if NULLS[s] then return NULL end
  local b = BOOLS[s]
  if b ~= nil then return b end
  return parse_int(s) or parse_float(s) or s
end

local function where(doc, n)
  return string.format("%s:%d:%d: ", doc.name, n.line, n.column)
end

local function fail(doc, n, msg)
  error(where(doc, n) .. msg, 0)
end

local function scalar(doc, n)
  local s = ffi.string(n.value, n.len)
  local tag = n.tag ~= nil and ffi.string(n.tag) or nil
  if tag == nil then
    if n.style == PLAIN then return resolve_plain(s) end
    return s
  end
  if tag == "!!str" or tag == "!" then return s end
  if tag == "!!null" then
    if not NULLS[s] then fail(doc, n, "invalid !!null value '" .. s .. "'") end
    return NULL
  end
  if tag == "!!bool" then
    local b = BOOLS[s]
    if b == nil then fail(doc, n, "invalid !!bool value '" .. s .. "'") end
    return b
  end
  if tag == "!!int" then
    local v = parse_int(s)
    if not v then fail(doc, n, "invalid !!int value '" .. s .. "'") end
    return v
  end
  if tag == "!!float" then
    local v = parse_float(s)
    if not v then fail(doc, n, "invalid !!float value '" .. s .. "'") end
    return v
  end
  fail(doc, n, "unsupported tag '" .. tag .. "' on a scalar")
end

local convert

local function sequence(doc, n, t)
  for i = 0, n.n_items - 1 do
    local v = convert(doc, n.items[i])
    t[i + 1] = v == NULL and yaml.null or v
  end
end

local function mapping(doc, n, t)
  for i = 0, n.n_items - 1, 2 do
    local kn = C.lm_yaml_node_at(doc.y, n.items[i])
    if kn.kind ~= SCALAR then fail(doc, kn, "only scalar keys are supported") end
    local k = scalar(doc, kn)
    if k == NULL then fail(doc, kn, "null keys are not supported") end
    if k ~= k then fail(doc, kn, "NaN keys are not supported") end
    if doc.seen[k] then
      fail(doc, kn, "duplicate key '" .. ffi.string(kn.value, kn.len) .. "'")
    end
    doc.seen[k] = true
    local v = convert(doc, n.items[i + 1])
    if v ~= NULL then t[k] = v end
  end
end

-- The Lua value of node i; NULL for a null (the caller decides what it becomes).
function convert(doc, i)
  local n = C.lm_yaml_node_at(doc.y, i)
  if n.kind == SCALAR then return scalar(doc, n) end
  local done = doc.tables[i]
  if done then return done end
  local tag = n.tag ~= nil and ffi.string(n.tag) or nil
  local t = {}
  doc.tables[i] = t
  if n.kind == SEQ then
    if tag and tag ~= "!!seq" and tag ~= "!" then fail(doc, n, "unsupported tag '" .. tag .. "' on a sequence") end
    sequence(doc, n, t)
  else
    if tag and tag ~= "!!map" and tag ~= "!" then fail(doc, n, "unsupported tag '" .. tag .. "' on a mapping") end
    local outer = doc.seen
    doc.seen = {}
    mapping(doc, n, t)
    doc.seen = outer
  end
  return t
end

-- Converts and frees a parsed document; ok, value or false, message.
local function finish(y)
  if y == nil then return false, ffi.string(C.lm_last_error()) end
  y = ffi.gc(y, C.lm_yaml_free)
  local doc = { y = y, name = ffi.string(C.lm_yaml_name(y)), tables = {} }
  local ok, v = pcall(convert, doc, 0)
  ffi.gc(y, nil)
  C.lm_yaml_free(y)
  if not ok then return false, v end
  if v == NULL then v = nil end
  return true, v
end

--- Parses the YAML file at path.
function yaml.load_file(path)
  if type(path) ~= "string" then
    error("yaml.load_file: path must be a string, got " .. type(path), 2)
  end
  local ok, v = finish(C.lm_yaml_load_file(path))
  if not ok then error(v, 0) end
  return v
end

--- Parses YAML text; name (default "<string>") is used in error messages.
function yaml.load_string(text, name)
  if type(text) ~= "string" then
    error("yaml.load_string: text must be a string, got " .. type(text), 2)
  end
  if name ~= nil and type(name) ~= "string" then
    error("yaml.load_string: name must be a string, got " .. type(name), 2)
  end
  local ok, v = finish(C.lm_yaml_load_string(text, #text, name or "<string>"))
  if not ok then error(v, 0) end
  return v
end

return yaml
