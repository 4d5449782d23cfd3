--- Structured output for the OpenAI API: `response_format` (json_object,
-- json_schema), the `grammar` extension (GBNF text, as llama.cpp's server
-- takes it) and `tools` / `tool_choice` as constrained tool calls. No I/O: a
-- request body in, a grammar (GBNF) and what the prompt needs out; a finished
-- text in, tool calls out.
--
-- Tool calls take the model's chat template's own format when it has one
-- (lua/lumen/tool_format.lua: Qwen/Hermes `<tool_call>` blocks, Llama 3.x, Mistral):
-- the tools go to the template as its `tools`, and the answer is constrained
-- to that syntax. Otherwise lumen's documented JSON format: the model is told
-- the tools in a system message and a call is the whole answer, `{"name":
-- "...", "arguments": {...}}` (with parallel_tool_calls, a JSON array of
-- them). Either way a call's arguments are constrained by a grammar built from
-- the tool's parameter schema, at most 8 calls come at once, tool_choice
-- "required" or a named function allows only calls, "auto" allows calls or
-- plain text (which may not begin like a call), and "none" leaves the tools out.
local grammar = require "lumen.grammar"
local json_text = require "lumen.json_text"
local openai = require "lumen.openai"
local tool_format = require "lumen.tool_format"

local M = {}
local fail = openai.fail
local json = openai.json
local null = json.null

local function present(v) return v ~= nil and v ~= null end

local function schema_gbnf(schema, param)
  local gbnf, err = grammar.from_schema(schema)
  if not gbnf then fail(400, tostring(err), param, "invalid_value") end
  return gbnf
end

-- the converter names its start rule "root": rename it to put it under ours
local function as_rule(gbnf, name)
  return (("\n" .. gbnf):gsub("\nroot%s*::=", "\n" .. name .. " ::=")):sub(2)
end

local function check_compiles(gbnf, param)
  local g, err = grammar.compile(gbnf)
  if not g then fail(400, "the grammar does not compile: " .. tostring(err), param, "invalid_value") end
  return gbnf
end

local function parse_tools(body)
  local tools = body.tools
  if not present(tools) then return nil end
  if not openai.is_array(tools) then fail(400, "'tools' must be an array", "tools", "invalid_type") end
  if #tools == 0 then return nil end
  local list, seen = {}, {}
  for i, t in ipairs(tools) do
    local where = string.format("tools[%d]", i - 1)
    if type(t) ~= "table" or t.type ~= "function" or type(t["function"]) ~= "table" then
      fail(400, where .. " must be {\"type\": \"function\", \"function\": {...}}", "tools", "invalid_value")
    end
    local f = t["function"]
    if type(f.name) ~= "string" or not f.name:match("^[%w_%-]+$") or #f.name > 64 then
      fail(400, where .. ".function.name must be 1-64 letters, digits, _ or -", "tools", "invalid_value")
    end
    if seen[f.name] then fail(400, "two tools are named '" .. f.name .. "'", "tools", "invalid_value") end
    seen[f.name] = true
    local params = present(f.parameters) and f.parameters or { type = "object", properties = {} }
    if type(params) ~= "table" then fail(400, where .. ".function.parameters must be a JSON Schema object", "tools", "invalid_type") end
    list[i] = { name = f.name, description = present(f.description) and tostring(f.description) or "", parameters = params,
                tool = t }
  end
  return list
end

--- Reads response_format, grammar, tools, tool_choice and parallel_tool_calls
-- from a request body; `fmt` is the model's tool format (lumen.chat.tool_format,
-- nil for lumen's JSON format). Returns nil (nothing to constrain) or {gbnf,
-- tools, choice, parallel, format, system, vars}: the grammar for the sampler,
-- and for tools either the system message that tells the model the JSON
-- format or the template variables (`tools`) for lumen.chat.render.
function M.parse(body, fmt)
  local spec
  local rf = body.response_format
  if present(rf) then
    if type(rf) ~= "table" or type(rf.type) ~= "string" then
      fail(400, "'response_format' must be an object with a 'type'", "response_format", "invalid_type")
    end
    if rf.type == "json_object" then
      spec = { gbnf = schema_gbnf("json_object", "response_format"), kind = "json" }
    elseif rf.type == "json_schema" then
      local js = rf.json_schema
      if type(js) ~= "table" or type(js.schema) ~= "table" then
        fail(400, "'response_format.json_schema' needs a 'schema' object", "response_format", "invalid_value")
      end
      if present(js.name) and (type(js.name) ~= "string" or not js.name:match("^[%w_%-]+$")) then
        fail(400, "'response_format.json_schema.name' must be letters, digits, _ or -", "response_format", "invalid_value")
      end
      spec = { gbnf = schema_gbnf(js.schema, "response_format"), kind = "json" }
    elseif rf.type ~= "text" then
      fail(400, "'response_format.type' must be text, json_object or json_schema", "response_format", "invalid_value")
    end
  end
  if present(body.grammar) then
    if type(body.grammar) ~= "string" then fail(400, "'grammar' must be GBNF text", "grammar", "invalid_type") end
    if spec then fail(400, "give either 'grammar' or 'response_format', not both", "grammar", "invalid_value") end
    spec = { gbnf = body.grammar, kind = "grammar" }
  end
  local tools = parse_tools(body)
  local choice = body.tool_choice
  if present(choice) and not tools then fail(400, "'tool_choice' needs 'tools'", "tool_choice", "invalid_value") end
  if tools then
    if not present(choice) then choice = "auto" end
    local name
    if type(choice) == "table" then
      name = type(choice["function"]) == "table" and choice["function"].name
      if choice.type ~= "function" or type(name) ~= "string" then
        fail(400, "'tool_choice' must be none, auto, required or {\"type\": \"function\", \"function\": {\"name\": ...}}", "tool_choice", "invalid_value")
      end
      local found
      for _, t in ipairs(tools) do if t.name == name then found = true end end
      if not found then fail(400, "'tool_choice' names '" .. name .. "', which is not among the tools", "tool_choice", "invalid_value") end
      choice = "named"
    elseif choice ~= "none" and choice ~= "auto" and choice ~= "required" then
      fail(400, "'tool_choice' must be none, auto, required or a named function", "tool_choice", "invalid_value")
    end
    if choice ~= "none" then
      if spec then fail(400, "'tools' cannot be combined with 'response_format' or 'grammar'", "tools", "invalid_value") end
      local parallel = body.parallel_tool_calls ~= false
      spec = M.tools_spec(tools, choice, name, parallel, fmt)
    end
  end
  if spec then check_compiles(spec.gbnf, spec.kind == "grammar" and "grammar" or (spec.tools and "tools" or "response_format")) end
  return spec
end

--- The grammar for calling these tools, and the system message (lumen's JSON
-- format) or template variables (a template's own format, `fmt`) that tell
-- the model about them.
function M.tools_spec(tools, choice, only, parallel, fmt)
  local branches = {}
  local args = fmt and fmt.args or "arguments"
  for _, t in ipairs(tools) do
    if choice ~= "named" or t.name == only then
      local props, order = { name = { const = t.name }, [args] = t.parameters }, { "name", args }
      for k, schema in pairs(tool_format.call_properties(fmt)) do props[k] = schema; order[#order + 1] = k end
      json_text.set_order(props, order) -- the name first, as every format shows a call
      branches[#branches + 1] = { type = "object", additionalProperties = false, required = order,
                                  properties = props }
    end
  end
  local one = #branches == 1 and branches[1] or { anyOf = branches }
  local not_first = (fmt or tool_format.JSON).not_first
  local text = string.format("text ::= [^%s \\t\\n] [^\\x00]*\n", not_first)
  if fmt then
    parallel = parallel and fmt.max_calls > 1
    local gbnf = (choice == "auto" and "root ::= calls | text\n" .. text or "root ::= calls\n")
                 .. tool_format.calls_gbnf(fmt, parallel) .. as_rule(schema_gbnf(one, "tools"), "call-json")
    local list = {}
    for i, t in ipairs(tools) do list[i] = t.tool end
    return { gbnf = gbnf, kind = "tools", tools = tools, choice = choice, parallel = parallel, format = fmt,
             vars = { tools = list } }
  end
  -- at most 8 calls at once: a small model repeating a call would otherwise run to its token budget
  local schema = parallel and { type = "array", items = one, minItems = 1, maxItems = tool_format.JSON.max_calls } or one
  local call = as_rule(schema_gbnf(schema, "tools"), "call")
  local gbnf
  if choice == "auto" then
    gbnf = "root ::= call | text\n" .. text .. call
  else
    gbnf = "root ::= call\n" .. call
  end
  local lines = { "You can call these tools (functions):" }
  for _, t in ipairs(tools) do
    lines[#lines + 1] = string.format("- %s: %s Parameters (JSON Schema): %s", t.name, t.description, json.encode(t.parameters))
  end
  lines[#lines + 1] = parallel and
    'To call tools, answer with only a JSON array of calls: [{"name": "<tool name>", "arguments": {<its parameters>}}].'
    or 'To call a tool, answer with only JSON: {"name": "<tool name>", "arguments": {<its parameters>}}.'
  if choice == "auto" then lines[#lines + 1] = "Otherwise answer in plain text." end
  return { gbnf = gbnf, kind = "tools", tools = tools, choice = choice, parallel = parallel,
           system = table.concat(lines, "\n") }
end

local counter = 0
local function call_id()
  counter = counter + 1
  local t = {}
  for i = 1, 24 do t[i] = string.char(("abcdefghijklmnopqrstuvwxyz0123456789"):byte(math.random(36))) end
  return "call_" .. table.concat(t)
end

--- A finished answer -> OpenAI tool_calls ({id, type, function = {name,
-- arguments (JSON text)}}...), or nil when it is plain text.
function M.tool_calls(spec, text)
  if not (spec and spec.tools) then return nil end
  local calls
  if spec.format then
    calls = tool_format.read(spec.format, text)
  else
    local s = text:match("^%s*(.-)%s*$")
    local c = s:sub(1, 1)
    if c ~= "{" and c ~= "[" then return nil end
    local ok, v = pcall(json.decode, s)
    if not ok or type(v) ~= "table" then return nil end
    calls = openai.is_array(v) and #v > 0 and v or { v }
    for _, call in ipairs(calls) do
      if type(call) ~= "table" or type(call.name) ~= "string" or type(call.arguments) ~= "table" then return nil end
    end
  end
  if not calls then return nil end
  local out = {}
  for i, call in ipairs(calls) do
    out[i] = { id = type(call.id) == "string" and call.id or call_id(), type = "function",
               ["function"] = { name = call.name, arguments = openai.encode(call.arguments) } }
  end
  return out
end

--- Whether the start of an answer shows it is text rather than tool calls
-- (tool_choice auto): then it can be streamed as it comes.
function M.is_text(spec, start) return tool_format.is_text(spec.format, start) end

--- The messages with the tools' system message in front (joined to the
-- request's own system message when it has one).
function M.with_system(spec, messages)
  if not (spec and spec.system) then return messages end
  local out = {}
  for i, m in ipairs(messages) do out[i] = m end
  if out[1] and out[1].role == "system" then
    out[1] = { role = "system", content = out[1].content .. "\n\n" .. spec.system }
  else
    table.insert(out, 1, { role = "system", content = spec.system })
  end
  return out
end

--- Attaches what a generation request asks of its output (response_format,
-- grammar, tools) to its job: the grammar joins the job's sampling settings as
-- a link, the tools go to the chat template (its own tool format:
-- job.template_vars) or join the messages (a system message for lumen's JSON
-- format); the spec stays on the job (job.structured) for reading tool calls
-- at the end (finish_choices). body: the request body; entry: the scheduler's
-- model entry. Raises openai errors (400s) for what cannot be honoured.
function M.attach(job, body, entry)
  local fmt
  if job.kind == "chat" and type(body) == "table" and body.tools ~= nil then
    local ok, f = pcall(require("lumen.chat").tool_format, entry.model)
    fmt = ok and f or nil -- no template at all: refused when the prompt is rendered
  end
  local spec = M.parse(body, fmt)
  if not spec then return end
  job.structured = spec
  if job.kind == "chat" then
    job.messages = M.with_system(spec, job.messages)
    job.template_vars = spec.vars
  end
  job.sampling.grammar = require("lumen.sampler").grammar(spec.gbnf, { model = entry.model })
end

--- Whether a job's answers are tool calls to be read at the end (held back
-- from a stream until they are).
function M.holds_back(job) return job.structured ~= nil and job.structured.tools ~= nil end

--- A finished job's choices (scheduler.choices) with their tool calls read
-- from the text, as openai.response takes them.
function M.finish_choices(job, choices)
  if M.holds_back(job) then
    for _, c in ipairs(choices) do c.tool_calls = M.tool_calls(job.structured, c.text) end
  end
  return choices
end

return M
