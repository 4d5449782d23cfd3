--- The OpenAI API's request and response shapes, for `lumen serve`: request
-- bodies are validated into plain job descriptions, answers and stream chunks
-- are built as JSON. No I/O here (pipelines/serve.lua does the serving).
-- Errors are raised as ApiError values {status, message, param, code, type}.
local cjson = require("cjson").new()   -- a private instance: our settings stay ours
cjson.decode_invalid_numbers(false)    -- NaN, Infinity, hex are not JSON
cjson.decode_max_depth(64)
cjson.encode_max_depth(64)
cjson.encode_number_precision(10)

local utf8_sanitize = require("lumen.util").utf8_sanitize
local merge_settings = require("lumen.util").merge_settings

local M = { json = cjson }

-- lua-cjson writes an empty table as {}: an array that may be empty goes in as
-- this placeholder, which encode() turns into [].
local EMPTY = "\0EMPTY\0"
local function arr(t) return (t == nil or #t == 0) and EMPTY or t end
local function encode(v) return (cjson.encode(v):gsub('"\\u0000EMPTY\\u0000"', "[]")) end
M.encode, M.array = encode, arr

local ApiError = {}
ApiError.__index = ApiError
ApiError.__tostring = function(e) return string.format("%d %s", e.status, e.message) end
M.ApiError = ApiError

--- Raises an API error (caught by the server loop and sent as OpenAI error JSON).
function M.fail(status, message, param, code, kind)
  error(setmetatable({ status = status, message = message, param = param, code = code,
                       type = kind or (status == 401 and "authentication_error") or
                              (status == 429 and "rate_limit_error") or
                              (status >= 500 and "server_error") or "invalid_request_error" }, ApiError), 0)
end
local fail = M.fail

--- Whether e is an ApiError (from fail) rather than a bug.
function M.is_error(e) return getmetatable(e) == ApiError end

--- The error body OpenAI clients parse.
function M.error_body(e)
  return encode({ error = { message = e.message, type = e.type, param = e.param or cjson.null,
                                  code = e.code or cjson.null } })
end

local null = cjson.null
local function present(v) return v ~= nil and v ~= null end

local function is_array(t)
  if type(t) ~= "table" then return false end
  local n = 0
  for k in pairs(t) do
    if type(k) ~= "number" then return false end
    n = n + 1
  end
  return n == #t
end
-- JSON {} and [] both decode to an empty table: it passes as either
local function is_object(t) return type(t) == "table" and not (is_array(t) and next(t) ~= nil) end
M.is_array = is_array

local function number(body, key, lo, hi, integer)
  local v = body[key]
  if not present(v) then return nil end
  if type(v) ~= "number" then fail(400, string.format("'%s' must be a number, got %s", key, type(v) == "table" and "an object or array" or type(v)), key, "invalid_type") end
  if v ~= v or v == math.huge or v == -math.huge then fail(400, string.format("'%s' must be a finite number", key), key, "invalid_value") end
  if integer and v ~= math.floor(v) then fail(400, string.format("'%s' must be an integer, got %s", key, tostring(v)), key, "invalid_type") end
  if v < lo or v > hi then
    fail(400, string.format("'%s' must be in [%s, %s], got %s", key, tostring(lo), tostring(hi), string.format(integer and "%.0f" or "%g", v)), key, "invalid_value")
  end
  return v
end

local function boolean(body, key)
  local v = body[key]
  if not present(v) then return nil end
  if type(v) ~= "boolean" then fail(400, string.format("'%s' must be a boolean, got %s", key, type(v) == "table" and "an object or array" or type(v)), key, "invalid_type") end
  return v
end

local function str(body, key)
  local v = body[key]
  if not present(v) then return nil end
  if type(v) ~= "string" then fail(400, string.format("'%s' must be a string", key), key, "invalid_type") end
  return v
end

--- Decodes a request body: valid UTF-8, JSON, an object.
function M.decode(raw, utf8_valid)
  if #raw == 0 then fail(400, "the request body is empty; send a JSON object", nil, "invalid_json") end
  if utf8_valid and not utf8_valid(raw) then fail(400, "the request body is not valid UTF-8", nil, "invalid_encoding") end
  local ok, body = pcall(cjson.decode, raw)
  if not ok then
    fail(400, "the request body is not valid JSON: " .. tostring(body):gsub("^.-: ", ""), nil, "invalid_json")
  end
  if not is_object(body) then
    fail(400, "the request body must be a JSON object", nil, "invalid_json")
  end
  return body
end

local MAX_TOKENS_LIMIT = 2 ^ 31 - 1

--- Settings common to chat and completions.
local function common(body, defaults)
  local r = {}
  r.model = str(body, "model")
  local mt = number(body, "max_completion_tokens", 1, MAX_TOKENS_LIMIT, true)
  local mt2 = number(body, "max_tokens", 1, MAX_TOKENS_LIMIT, true)
  r.max_tokens = mt or mt2
  r.stream = boolean(body, "stream") or false
  r.n = number(body, "n", 1, 8, true) or 1
  r.seed = number(body, "seed", -2 ^ 63, 2 ^ 63, true)

  local s = merge_settings(defaults)
  local t = number(body, "temperature", 0, 2)
  if t then s.temperature = t end
  local p = number(body, "top_p", 0, 1)
  if p then s.top_p = p end
  local pp = number(body, "presence_penalty", -2, 2)
  if pp then s.presence_penalty = pp end
  local fp = number(body, "frequency_penalty", -2, 2)
  if fp then s.frequency_penalty = fp end
  local tk = number(body, "top_k", 0, 2 ^ 31 - 1, true)   -- not OpenAI's, but llama.cpp clients send it
  if tk then s.top_k = tk end
  local mp = number(body, "min_p", 0, 1)
  if mp then s.min_p = mp end
  if r.seed then s.seed = r.seed % 2 ^ 53 end
  r.sampling = s

  local stop = body.stop
  if present(stop) then
    if type(stop) == "string" then stop = { stop }
    elseif not is_array(stop) then fail(400, "'stop' must be a string or an array of strings", "stop", "invalid_type") end
    if #stop > 4 then fail(400, "'stop' takes at most 4 strings, got " .. #stop, "stop", "invalid_value") end
    for i, v in ipairs(stop) do
      if type(v) ~= "string" then fail(400, "'stop' must hold strings; item " .. i .. " is a " .. type(v), "stop", "invalid_type") end
      if v == "" then fail(400, "'stop' strings must not be empty", "stop", "invalid_value") end
    end
    r.stop = stop
  else
    r.stop = {}
  end

  local so = body.stream_options
  if present(so) then
    if not is_object(so) then fail(400, "'stream_options' must be an object", "stream_options", "invalid_type") end
    r.include_usage = boolean(so, "include_usage") or false
  end
  if r.include_usage and not r.stream then
    fail(400, "'stream_options' is only allowed with stream: true", "stream_options", "invalid_value")
  end

  local lb = body.logit_bias
  if present(lb) then
    if not is_object(lb) then fail(400, "'logit_bias' must be an object of token id -> bias", "logit_bias", "invalid_type") end
    local bias = {}
    for k, v in pairs(lb) do
      local id = tonumber(k)
      if not id or id ~= math.floor(id) or id < 0 then fail(400, "'logit_bias' keys must be token ids, got '" .. tostring(k) .. "'", "logit_bias", "invalid_value") end
      if type(v) ~= "number" or v ~= v or v < -100 or v > 100 then fail(400, "'logit_bias' values must be numbers in [-100, 100]", "logit_bias", "invalid_value") end
      bias[id] = v
    end
    r.logit_bias = bias
  end
  return r
end

local ROLES = { system = "system", developer = "system", user = "user", assistant = "assistant", tool = "tool" }

--- Where an image goes in a message's text (plain bytes no template or tokenizer
-- treats specially); the prompt is cut there and the image's rows put in between.
M.IMAGE_MARKER = "\1lumen-image\1"

-- A message's text; image_url parts (user messages) become IMAGE_MARKER, their
-- URLs appended to `images` as {url, where} (decoded later, lumen.vision.data_url).
local function content_text(m, i, images)
  local c = m.content
  if type(c) == "string" then return c end
  if not present(c) then
    if m.role == "assistant" then return "" end
    fail(400, string.format("messages[%d] has no 'content'", i - 1), "messages", "invalid_value")
  end
  if not is_array(c) then fail(400, string.format("messages[%d].content must be a string or an array of content parts", i - 1), "messages", "invalid_type") end
  local parts = {}
  for j, part in ipairs(c) do
    local where = string.format("messages[%d].content[%d]", i - 1, j - 1)
    if type(part) == "table" and part.type == "image_url" then
      local u = part.image_url
      if type(u) == "table" then u = u.url end
      if type(u) ~= "string" then fail(400, where .. " must be {\"type\": \"image_url\", \"image_url\": {\"url\": \"data:image/png;base64,...\"}}", "messages", "invalid_value") end
      if m.role ~= "user" then fail(400, where .. ": images go in user messages, not '" .. m.role .. "'", "messages", "invalid_value") end
      images[#images + 1] = { url = u, where = where }
      parts[#parts + 1] = M.IMAGE_MARKER
    elseif type(part) ~= "table" or part.type ~= "text" or type(part.text) ~= "string" then
      fail(400, where .. " must be {\"type\": \"text\", \"text\": \"...\"} or {\"type\": \"image_url\", ...} (other part types are not supported)", "messages", "invalid_value")
    else
      parts[#parts + 1] = part.text
    end
  end
  return table.concat(parts)
end

--- POST /v1/chat/completions -> a job description (without the prompt's tokens).
function M.chat_request(body, defaults)
  local r = common(body, defaults)
  r.kind = "chat"
  local msgs = body.messages
  if not present(msgs) then fail(400, "'messages' is required", "messages", "missing_required_parameter") end
  if not is_array(msgs) then fail(400, "'messages' must be an array", "messages", "invalid_type") end
  if #msgs == 0 then fail(400, "'messages' must not be empty", "messages", "invalid_value") end
  local out, images = {}, {}
  for i, m in ipairs(msgs) do
    if not is_object(m) then fail(400, string.format("messages[%d] must be an object", i - 1), "messages", "invalid_type") end
    if type(m.role) ~= "string" then fail(400, string.format("messages[%d] needs a 'role' string", i - 1), "messages", "invalid_value") end
    local role = ROLES[m.role]
    if not role then
      fail(400, string.format("messages[%d] has role '%s'; supported: system, developer, user, assistant, tool", i - 1, m.role), "messages", "invalid_value")
    end
    local content = content_text(m, i, images)
    local calls
    if role == "assistant" and present(m.tool_calls) then
      -- the model's earlier calls: lumen.chat renders them as the model was asked to
      -- write them (lua/lumen/tool_format.lua), so what it said then is what it sees now
      if not is_array(m.tool_calls) then fail(400, string.format("messages[%d].tool_calls must be an array", i - 1), "messages", "invalid_type") end
      calls = {}
      for j, c in ipairs(m.tool_calls) do
        local f = type(c) == "table" and c["function"]
        if type(f) ~= "table" or type(f.name) ~= "string" or type(f.arguments) ~= "string" then
          fail(400, string.format("messages[%d].tool_calls[%d] needs function.name and function.arguments (JSON text)", i - 1, j - 1), "messages", "invalid_value")
        end
        local ok, args = pcall(cjson.decode, f.arguments)
        if not ok then fail(400, string.format("messages[%d].tool_calls[%d].function.arguments is not JSON", i - 1, j - 1), "messages", "invalid_value") end
        calls[j] = { id = type(c.id) == "string" and c.id or nil, name = f.name, arguments = args }
      end
    end
    out[i] = { role = role, content = content, tool_calls = calls,
               tool_call_id = role == "tool" and type(m.tool_call_id) == "string" and m.tool_call_id or nil,
               name = type(m.name) == "string" and m.name or nil }
  end
  r.messages = out
  if #images > 0 then r.images = images end
  local lp = boolean(body, "logprobs")
  r.logprobs = lp or false
  r.top_logprobs = number(body, "top_logprobs", 0, 20, true)
  if r.top_logprobs and not r.logprobs then
    fail(400, "'top_logprobs' needs 'logprobs': true", "top_logprobs", "invalid_value")
  end
  return r
end

--- POST /v1/completions -> a job description.
function M.completion_request(body, defaults)
  local r = common(body, defaults)
  r.kind = "completion"
  local p = body.prompt
  if not present(p) then fail(400, "'prompt' is required", "prompt", "missing_required_parameter") end
  if type(p) == "table" and is_array(p) then
    if #p ~= 1 or type(p[1]) ~= "string" then
      fail(400, "'prompt' must be a string or an array of exactly one string (batches of prompts and token arrays are not supported)", "prompt", "invalid_value")
    end
    p = p[1]
  end
  if type(p) ~= "string" then fail(400, "'prompt' must be a string", "prompt", "invalid_type") end
  if p == "" then fail(400, "'prompt' must not be empty", "prompt", "invalid_value") end
  r.prompt = p
  if boolean(body, "echo") then fail(400, "'echo' is not supported", "echo", "unsupported_parameter") end
  local lp = number(body, "logprobs", 0, 5, true)   -- the legacy API's logprobs is a count
  if lp then r.logprobs, r.top_logprobs = true, lp end
  local suffix = str(body, "suffix")
  if suffix and suffix ~= "" then fail(400, "'suffix' is not supported", "suffix", "unsupported_parameter") end
  local bo = number(body, "best_of", 1, 8, true)
  if bo and bo ~= r.n then fail(400, "'best_of' other than n is not supported", "best_of", "unsupported_parameter") end
  return r
end

--- A generation request's body -> the id of the model it names (or the first
-- of ids, the default) and the job: chat ("chat") or completions. models maps
-- each id in ids to {sampling = the model's defaults}.
function M.generation_request(kind, body, models, ids)
  local id = body.model
  if present(id) and type(id) ~= "string" then fail(400, "'model' must be a string", "model", "invalid_type") end
  if type(id) ~= "string" then id = ids[1] end
  local m = models[id]
  if not m then
    fail(404, "model '" .. id .. "' does not exist (available: " .. table.concat(ids, ", ") .. ")", "model", "model_not_found")
  end
  return id, kind == "chat" and M.chat_request(body, m.sampling) or M.completion_request(body, m.sampling)
end

-- ---- responses ----------------------------------------------------------------

--- cached: prompt tokens whose KV cache the slot already held (OpenAI reports
-- its prompt caching the same way, in prompt_tokens_details)
function M.usage(prompt_tokens, completion_tokens, cached)
  return { prompt_tokens = prompt_tokens, completion_tokens = completion_tokens,
           total_tokens = prompt_tokens + completion_tokens,
           prompt_tokens_details = { cached_tokens = cached or 0 } }
end

local function bytes_of(s)
  local b = {}
  for i = 1, #s do b[i] = s:byte(i) end
  return b
end

--- One token's logprob entry: {token, logprob, bytes, top_logprobs}.
function M.logprob_entry(piece, logprob, top)
  local tops = {}
  for i, t in ipairs(top or {}) do
    tops[i] = { token = utf8_sanitize(t.piece), logprob = t.logprob, bytes = arr(bytes_of(t.piece)) }
  end
  -- token: the text (a lone byte of a character shows as U+FFFD); bytes: exactly
  return { token = utf8_sanitize(piece), logprob = logprob, bytes = arr(bytes_of(piece)), top_logprobs = arr(tops) }
end

--- The legacy completions API's logprobs object for a list of entries.
local function legacy_logprobs(entries, text_offset0)
  local lp = { tokens = {}, token_logprobs = {}, top_logprobs = {}, text_offset = {} }
  if #entries == 0 then return { tokens = EMPTY, token_logprobs = EMPTY, top_logprobs = EMPTY, text_offset = EMPTY } end
  local off = text_offset0 or 0
  for i, e in ipairs(entries) do
    lp.tokens[i], lp.token_logprobs[i], lp.text_offset[i] = e.token, e.logprob, off
    local t = {}
    for _, x in ipairs(e.top_logprobs) do t[x.token] = x.logprob end
    lp.top_logprobs[i] = t
    off = off + #e.token
  end
  return lp
end

--- The whole (non-streamed) answer.
function M.response(job, choices)
  local out = {}
  local completion_tokens = 0
  for i, c in ipairs(choices) do
    completion_tokens = completion_tokens + c.n_gen
    if job.kind == "chat" then
      out[i] = { index = i - 1, message = { role = "assistant", content = c.text },
                 logprobs = job.logprobs and { content = arr(c.logprobs) } or null,
                 finish_reason = c.finish }
      if c.tool_calls then
        out[i].message = { role = "assistant", content = null, tool_calls = c.tool_calls }
        out[i].finish_reason = "tool_calls"
      end
    else
      out[i] = { index = i - 1, text = c.text, finish_reason = c.finish,
                 logprobs = job.logprobs and legacy_logprobs(c.logprobs) or null }
    end
  end
  return encode({
    id = job.id, object = job.kind == "chat" and "chat.completion" or "text_completion",
    created = job.created, model = job.model_id, system_fingerprint = "lumen",
    choices = out, usage = M.usage(job.prompt_tokens, completion_tokens, job.cached_tokens),
  })
end

--- One server-sent event with a chunk for choice `index`: text and/or finish reason.
function M.chunk(job, index, text, finish, logprobs, first)
  local choice
  if job.kind == "chat" then
    local delta = {}
    if first then delta.role = "assistant" end
    if text then delta.content = text end
    choice = { index = index, delta = delta, finish_reason = finish or null,
               logprobs = logprobs and { content = arr(logprobs) } or null }
  else
    choice = { index = index, text = text or "", finish_reason = finish or null,
               logprobs = logprobs and legacy_logprobs(logprobs) or null }
  end
  return "data: " .. encode({
    id = job.id, object = job.kind == "chat" and "chat.completion.chunk" or "text_completion",
    created = job.created, model = job.model_id, system_fingerprint = "lumen", choices = { choice },
  }) .. "\n\n"
end

--- A streamed answer that turned out to be tool calls: one chunk per call
-- (id, name and the whole arguments: clients join deltas by index), then the
-- finish reason.
function M.tool_call_chunks(job, index, calls)
  local out = {}
  for j, c in ipairs(calls) do
    local delta = { tool_calls = { { index = j - 1, id = c.id, type = "function",
                                     ["function"] = { name = c["function"].name, arguments = c["function"].arguments } } } }
    if j == 1 then delta.role = "assistant" end
    out[#out + 1] = "data: " .. encode({ id = job.id, object = "chat.completion.chunk", created = job.created,
      model = job.model_id, system_fingerprint = "lumen",
      choices = { { index = index, delta = delta, finish_reason = null, logprobs = null } } }) .. "\n\n"
  end
  out[#out + 1] = M.chunk(job, index, nil, "tool_calls", nil, false)
  return table.concat(out)
end

--- The closing usage chunk (stream_options.include_usage): choices is [].
function M.usage_chunk(job, completion_tokens)
  return "data: " .. encode({
    id = job.id, object = job.kind == "chat" and "chat.completion.chunk" or "text_completion",
    created = job.created, model = job.model_id, system_fingerprint = "lumen",
    choices = EMPTY, usage = M.usage(job.prompt_tokens, completion_tokens, job.cached_tokens),
  }) .. "\n\n"
end

--- GET /v1/models's answer for the model ids served.
function M.models_list(models, created)
  local data = {}
  for i, id in ipairs(models) do data[i] = { id = id, object = "model", created = created, owned_by = "lumen" } end
  return encode({ object = "list", data = arr(data) })
end

-- ---- /v1/embeddings -----------------------------------------------------------------

local MAX_EMBED_INPUTS = 2048

local function token_list(t, where)
  if #t == 0 then fail(400, where .. " is an empty token list", "input", "invalid_value") end
  for j, v in ipairs(t) do
    if type(v) ~= "number" or v ~= math.floor(v) or v < 0 or v > 2 ^ 31 - 1 then
      fail(400, string.format("%s[%d] is not a token id", where, j - 1), "input", "invalid_value")
    end
  end
  return t
end

--- Validates an embeddings request into {inputs (strings, or token lists),
-- format ("float" | "base64"), dimensions}. OpenAI's shapes: input is a
-- string, an array of strings, an array of token ids, or an array of those.
function M.embeddings_request(body)
  if not is_object(body) then fail(400, "the body must be a JSON object", nil, "invalid_type") end
  local input = body.input
  if not present(input) then fail(400, "'input' is required", "input", "missing_required_parameter") end
  local inputs
  if type(input) == "string" then
    inputs = { input }
  elseif is_array(input) and #input > 0 then
    if type(input[1]) == "number" then
      inputs = { token_list(input, "'input'") }
    else
      inputs = {}
      for i, v in ipairs(input) do
        if type(v) == "string" then inputs[i] = v
        elseif is_array(v) then inputs[i] = token_list(v, string.format("'input'[%d]", i - 1))
        else fail(400, string.format("'input'[%d] must be a string or an array of token ids", i - 1), "input", "invalid_type") end
        if type(inputs[i]) ~= type(inputs[1]) then
          fail(400, "'input' mixes strings and token arrays", "input", "invalid_value")
        end
      end
    end
  else
    fail(400, "'input' must be a string, an array of strings or an array of token ids (non-empty)", "input", "invalid_type")
  end
  for i, v in ipairs(inputs) do
    if v == "" then fail(400, string.format("'input'[%d] is an empty string", i - 1), "input", "invalid_value") end
  end
  if #inputs > MAX_EMBED_INPUTS then
    fail(400, string.format("'input' has %d items; at most %d per request", #inputs, MAX_EMBED_INPUTS), "input", "invalid_value")
  end
  local format = present(body.encoding_format) and body.encoding_format or "float"
  if format ~= "float" and format ~= "base64" then
    fail(400, "'encoding_format' must be \"float\" or \"base64\"", "encoding_format", "invalid_value")
  end
  local dims = number(body, "dimensions", 1, 2 ^ 31 - 1, true)
  if present(body.user) and type(body.user) ~= "string" then fail(400, "'user' must be a string", "user", "invalid_type") end
  return { kind = "embeddings", inputs = inputs, format = format, dimensions = dims }
end

--- The answer: rows of an [n, dim] f32 tensor, each as a JSON array or base64
-- (built in C), in OpenAI's list shape with usage.
function M.embeddings_response(model_id, t, n, dim, format, prompt_tokens)
  local util = require "lumen.util"
  local base = t:data()
  local rows = {}
  for i = 1, n do
    local p = base + (i - 1) * dim
    local e = format == "base64" and ('"' .. util.base64(p, dim * 4) .. '"') or util.f32_json(p, dim)
    rows[i] = string.format('{"object":"embedding","index":%d,"embedding":%s}', i - 1, e)
  end
  return string.format('{"object":"list","data":[%s],"model":%s,"usage":{"prompt_tokens":%d,"total_tokens":%d}}',
                       table.concat(rows, ","), cjson.encode(model_id), prompt_tokens, prompt_tokens)
end

return M
