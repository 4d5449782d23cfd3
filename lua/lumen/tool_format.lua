--- Tool calls as a model's chat template writes them. A template that takes
-- `tools` has its own call syntax (Qwen2.5/Qwen3/Hermes: `<tool_call>\n{"name":
-- ..., "arguments": {...}}\n</tool_call>`; Llama 3.x: a bare `{"name": ...,
-- "parameters": {...}}`; Mistral: `[TOOL_CALLS][{..., "id": ...}]`); FORMATS
-- lists the ones known, each recognised by what the template's text contains.
-- A template without one (SmolLM2's, Gemma 3's) gets lumen's documented JSON
-- format instead (lua/lumen/structured.lua): the tools in a system message, a
-- call as `{"name": ..., "arguments": {...}}` or an array of them. No I/O.
--
-- Used by lumen.chat (the tools and the history's calls and results go
-- through the template) and lumen.structured (the grammar of the answer and
-- reading the calls back).
local T = require "lumen.template"
local openai = require "lumen.openai"

local M = {}
local null = openai.json.null

--- The known formats. A template is in a format when its text contains
-- every string of `detect` (first match wins). A call is written
-- open .. {"name": NAME, ARGS: {...}} .. close, several calls separated by
-- `sep`; or, with `prefix`, all calls are one JSON list after the prefix.
-- With `id` (a length) each call carries "id": that many letters and digits,
-- written by the model, which its tool result names. `max_calls` bounds the
-- calls (1: the template takes one call a turn); a text answer (tool_choice
-- auto) may not begin with a character of `not_first`. To add a format: one
-- entry.
M.FORMATS = {
  { name = "hermes",   -- Qwen2.5, Qwen3, QwQ, Hermes 2 Pro / 3 and the templates that copied them
    detect = { "tools", "<tool_call>", "</tool_call>" },
    open = "<tool_call>\n", close = "\n</tool_call>", sep = "\n", args = "arguments", max_calls = 8, not_first = "<" },
  { name = "llama3",   -- Llama 3.1, 3.2, 3.3 (custom tools; their templates refuse two calls in one turn)
    detect = { "tools", "<|start_header_id|>", '"parameters": ' },
    open = "", close = "", args = "parameters", max_calls = 1, not_first = "{" },
  { name = "mistral",  -- Mistral Nemo, Small and Large of 2407 and later: their templates demand ids of 9 characters
    detect = { "tools", "[TOOL_CALLS]" },
    prefix = "[TOOL_CALLS]", args = "arguments", id = 9, max_calls = 8, not_first = "[" },
}

-- lumen's own format, for templates that have none
M.JSON = { name = "json", args = "arguments", max_calls = 8, not_first = "{[" }

local detected = {}

--- The tool format of a chat template's source: a FORMATS entry, or nil
-- (the template has no tool support: lumen's JSON format applies).
function M.detect(src)
  local hit = detected[src]
  if hit == nil then
    hit = false
    for _, f in ipairs(M.FORMATS) do
      local all = true
      for _, s in ipairs(f.detect) do
        if not src:find(s, 1, true) then all = false break end
      end
      if all then hit = f break end
    end
    detected[src] = hit
  end
  return hit or nil
end

-- JSON Schema keywords whose value is a list (an empty Lua table from
-- lua-cjson is taken for a dict otherwise: `"required": []` must stay [])
local LIST_KEYS = { required = true, enum = true, prefixItems = true, anyOf = true, oneOf = true, allOf = true,
                    examples = true, type = true }

-- a decoded JSON value as the template sees it: null -> None, lists and
-- dicts marked, dict keys in `first` order then sorted (a Lua table has no
-- order: the request's own is lost)
local function value(v, key, first)
  if v == null then return T.none end
  if type(v) ~= "table" then return v end
  if v[1] ~= nil or (next(v) == nil and LIST_KEYS[key]) then
    local out = {}
    for i, x in ipairs(v) do out[i] = value(x) end
    return T.list(out)
  end
  local keys, seen = {}, {}
  for _, k in ipairs(first or {}) do
    if v[k] ~= nil then keys[#keys + 1] = k; seen[k] = true end
  end
  local rest = {}
  for k in pairs(v) do if not seen[k] then rest[#rest + 1] = k end end
  table.sort(rest, function(a, b) return tostring(a) < tostring(b) end)
  for _, k in ipairs(rest) do keys[#keys + 1] = k end
  local out = {}
  for _, k in ipairs(keys) do out[k] = value(v[k], k, k == "parameters" and { "type", "properties", "required" } or nil) end
  return T.dict(out, keys)
end

--- The request's tools as the template's `tools` (OpenAI's shape: {type,
-- function = {name, description, parameters}}, in that key order).
function M.template_tools(tools)
  local out = {}
  for i, t in ipairs(tools) do
    local f = value(t["function"], nil, { "name", "description", "parameters" })
    out[i] = T.dict({ type = "function", ["function"] = f }, { "type", "function" })
  end
  return T.list(out)
end

--- Messages as the template sees them. An assistant message's calls
-- (`tool_calls` = {{id, name, arguments (a table)}...}, as lumen.openai
-- validates them) go to a tool-format template as OpenAI's tool_calls, which
-- it renders in its own syntax; for any other template they become the
-- message's content in lumen's JSON format, what the model was asked to write.
-- A tool result keeps its tool_call_id and name for a template that uses them.
function M.history(fmt, messages)
  local out = {}
  for i, m in ipairs(messages) do
    local calls = m.tool_calls
    if calls and #calls > 0 then
      if fmt then
        local list = {}
        for j, c in ipairs(calls) do
          local f = T.dict({ name = c.name, arguments = value(c.arguments) }, { "name", "arguments" })
          list[j] = T.dict({ id = c.id, type = "function", ["function"] = f }, { "id", "type", "function" })
        end
        out[i] = { role = m.role, content = m.content or "", tool_calls = T.list(list) }
      else
        local plain = {}
        for j, c in ipairs(calls) do plain[j] = { name = c.name, arguments = c.arguments } end
        out[i] = { role = m.role, content = openai.encode(#plain == 1 and plain[1] or plain) }
      end
    elseif fmt and m.role == "tool" then
      out[i] = { role = m.role, content = m.content, tool_call_id = m.tool_call_id, name = m.name }
    else
      out[i] = { role = m.role, content = m.content }
    end
  end
  return out
end

-- GBNF text of a literal string
local function lit(s)
  return '"' .. s:gsub('[\\"]', "\\%0"):gsub("\n", "\\n"):gsub("\r", "\\r"):gsub("\t", "\\t") .. '"'
end

--- The grammar rules (GBNF) of one answer of calls in this template format,
-- given the rule `call-json` (one call's JSON object) and whether several
-- calls may come: defines `calls`.
function M.calls_gbnf(fmt, parallel)
  local n = parallel and fmt.max_calls or 1
  local more = n > 1 and string.format(" (%s call){0,%d}", lit(fmt.sep or ", "), n - 1) or ""
  if fmt.prefix then
    return string.format('calls ::= %s "[" call%s "]"\ncall ::= call-json\n', lit(fmt.prefix), more)
  end
  local one = 'call ::= ' .. (fmt.open ~= "" and lit(fmt.open) .. " " or "") .. "call-json"
              .. (fmt.close ~= "" and " " .. lit(fmt.close) or "")
  return "calls ::= call" .. more .. "\n" .. one .. "\n"
end

--- The properties of one call's JSON object beyond name and arguments: the
-- id, for a format whose calls carry one ({} otherwise).
function M.call_properties(fmt)
  if not (fmt and fmt.id) then return {} end
  return { id = { type = "string", pattern = string.format("^[a-zA-Z0-9]{%d}$", fmt.id) } }
end

-- one call's JSON value: {"name": "...", ARGS: {...}} -> {name, arguments, id} or nil
local function call_of(fmt, v)
  if type(v) ~= "table" or type(v.name) ~= "string" then return nil end
  local args = v[fmt.args]
  if type(args) ~= "table" or (args[1] ~= nil) then return nil end
  local id
  if fmt.id then
    id = v.id
    if type(id) ~= "string" or #id ~= fmt.id or not id:match("^%w+$") then return nil end
  end
  return { name = v.name, arguments = args, id = id }
end

local function read_call(fmt, text)
  local ok, v = pcall(openai.json.decode, text)
  return ok and call_of(fmt, v) or nil
end

--- The calls in a finished answer of this format: {{name, arguments}...}, or
-- nil when it is text (it does not begin with a call, as the grammar has it)
-- or a call does not parse.
function M.read(fmt, text)
  local s = text:match("^%s*(.-)%s*$")
  if fmt.prefix then
    if s:sub(1, #fmt.prefix) ~= fmt.prefix then return nil end
    local ok, list = pcall(openai.json.decode, s:sub(#fmt.prefix + 1))
    if not ok or type(list) ~= "table" or list[1] == nil then return nil end
    local calls = {}
    for i, v in ipairs(list) do
      calls[i] = call_of(fmt, v)
      if not calls[i] then return nil end
    end
    return calls
  end
  if fmt.open == "" then
    local c = read_call(fmt, s)
    return c and { c } or nil
  end
  local open, close = fmt.open:match("^%s*(.-)%s*$"), fmt.close:match("^%s*(.-)%s*$")
  local calls, pos = {}, 1
  while pos <= #s do
    local a, b = s:find(open, pos, true)
    if a ~= pos then return nil end
    local c, d = s:find(close, b + 1, true)
    if not c then return nil end
    local call = read_call(fmt, s:sub(b + 1, c - 1))
    if not call then return nil end
    calls[#calls + 1] = call
    pos = (s:find("%S", d + 1)) or #s + 1
  end
  return #calls > 0 and calls or nil
end

--- Whether the start of an answer shows it is text, not calls (tool_choice
-- auto): its first character, which the grammar keeps from beginning a call
-- (fmt nil: lumen's JSON format).
function M.is_text(fmt, start)
  local c = start:match("^%s*(%S)")
  return c ~= nil and not (fmt or M.JSON).not_first:find(c, 1, true)
end

return M
