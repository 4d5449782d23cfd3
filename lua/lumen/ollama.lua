--- Ollama's API beside OpenAI's, for the tools that speak it: requests are
-- translated into the OpenAI shapes lua/lumen/openai.lua validates (one set of
-- rules for both), answers are built in Ollama's shapes (NDJSON lines when
-- streaming, which is Ollama's default). No I/O here.
--   /api/chat, /api/generate  -> openai.chat_request / completion_request
--   /api/embed                -> openai.embeddings_request
--   /api/tags, /api/show, /api/version
local openai = require "lumen.openai"

local M = {}
local fail = openai.fail
local json = openai.json
local null = json.null

M.VERSION = "0.6.0" -- the Ollama API version whose shapes these are

local function present(v) return v ~= nil and v ~= null end

--- "smollm2:latest" -> "smollm2" (Ollama names carry a tag).
function M.model_name(name)
  if type(name) ~= "string" then return name end
  return (name:gsub(":latest$", ""))
end

-- Ollama's options -> OpenAI's fields (the ones lumen samples with)
local OPTIONS = {
  temperature = "temperature", top_p = "top_p", top_k = "top_k", min_p = "min_p", seed = "seed",
  presence_penalty = "presence_penalty", frequency_penalty = "frequency_penalty", stop = "stop",
}
-- options that only tune Ollama's own runner: accepted, without effect here
local IGNORED = { num_ctx = true, num_batch = true, num_gpu = true, main_gpu = true, num_thread = true,
                  use_mmap = true, use_mlock = true, numa = true, low_vram = true, f16_kv = true, vocab_only = true,
                  num_keep = true, penalize_newline = true, repeat_last_n = true, typical_p = true, tfs_z = true,
                  mirostat = true, mirostat_tau = true, mirostat_eta = true }

local function common(body, out)
  if not (type(body) == "table") then fail(400, "the body must be a JSON object", nil, "invalid_type") end
  out.model = M.model_name(body.model)
  local stream = body.stream
  if present(stream) and type(stream) ~= "boolean" then fail(400, "'stream' must be true or false", "stream", "invalid_type") end
  out.stream = stream ~= false -- Ollama streams unless told not to
  local o = body.options
  if present(o) then
    if type(o) ~= "table" then fail(400, "'options' must be an object", "options", "invalid_type") end
    for k, v in pairs(o) do
      if OPTIONS[k] then out[OPTIONS[k]] = v
      elseif k == "num_predict" then
        if type(v) ~= "number" then fail(400, "'options.num_predict' must be a number", "options", "invalid_type") end
        if v == 0 then fail(400, "'options.num_predict' 0 would generate nothing", "options", "invalid_value") end
        if v > 0 then out.max_tokens = v end -- -1 / -2: as much as fits
      elseif k == "repeat_penalty" then
        if type(v) ~= "number" or v <= 0 then fail(400, "'options.repeat_penalty' must be a number > 0", "options", "invalid_value") end
        out.repeat_penalty = v
      elseif not IGNORED[k] then
        fail(400, "unknown option '" .. tostring(k) .. "'", "options", "invalid_value")
      end
    end
  end
  if present(body.format) then
    local f = body.format
    if f == "json" then out.response_format = { type = "json_object" }
    elseif type(f) == "table" then out.response_format = { type = "json_schema", json_schema = { name = "format", schema = f } }
    else fail(400, "'format' must be \"json\" or a JSON schema", "format", "invalid_value") end
  end
  return out
end

-- Ollama's images (a list of base64 strings) before a message's text, as
-- OpenAI content parts (data: URLs; lumen.vision decodes them and tells the
-- format by its first bytes).
local function with_images(content, images, where)
  if not present(images) then return content end
  if type(images) ~= "table" then fail(400, "'" .. where .. "' must be a list of base64 strings", where, "invalid_type") end
  local parts = {}
  for i, b in ipairs(images) do
    if type(b) ~= "string" then fail(400, string.format("'%s[%d]' must be a base64 string", where, i - 1), where, "invalid_type") end
    parts[i] = { type = "image_url", image_url = { url = "data:;base64," .. b } }
  end
  if type(content) == "string" then parts[#parts + 1] = { type = "text", text = content } end
  return parts
end

local function with_repeat_penalty(job, v)
  if v then job.sampling.repeat_penalty = v end
  return job
end

--- POST /api/chat -> an OpenAI chat job (kind "chat", api "ollama") and the
-- OpenAI-shaped body it was validated from (for response_format).
function M.chat_request(body, defaults)
  local b = common(body, {})
  if not present(body.messages) then fail(400, "'messages' is required", "messages", "missing_required_parameter") end
  if type(body.messages) ~= "table" then fail(400, "'messages' must be an array", "messages", "invalid_type") end
  local msgs = {}
  for i, m in ipairs(body.messages) do
    if type(m) == "table" and present(m.images) then
      msgs[i] = { role = m.role, content = with_images(m.content, m.images, string.format("messages[%d].images", i - 1)) }
    else
      msgs[i] = m
    end
  end
  b.messages = msgs
  local rp = b.repeat_penalty
  b.repeat_penalty = nil
  local job = with_repeat_penalty(openai.chat_request(b, defaults), rp)
  job.api = "ollama"
  return job, b
end

--- POST /api/generate -> a completion job (raw) or a chat job (the model's
-- template around the prompt, with `system`, as Ollama does).
function M.generate_request(body, defaults)
  local b = common(body, {})
  local prompt = body.prompt
  if not present(prompt) or type(prompt) ~= "string" then fail(400, "'prompt' must be a string", "prompt", "invalid_type") end
  if present(body.template) then fail(400, "'template' is not supported (the model's own is used)", "template", "unsupported_parameter") end
  local rp = b.repeat_penalty
  b.repeat_penalty = nil
  local job
  if body.raw == true then
    if present(body.images) then fail(400, "'images' need the model's template: not with raw: true", "images", "invalid_value") end
    b.prompt = prompt
    job = openai.completion_request(b, defaults)
  else
    local msgs = {}
    if present(body.system) then
      if type(body.system) ~= "string" then fail(400, "'system' must be a string", "system", "invalid_type") end
      msgs[#msgs + 1] = { role = "system", content = body.system }
    end
    msgs[#msgs + 1] = { role = "user", content = with_images(prompt, body.images, "images") }
    b.messages = msgs
    job = openai.chat_request(b, defaults)
  end
  job.api, job.ollama_endpoint = "ollama", "generate"
  return with_repeat_penalty(job, rp), b
end

--- POST /api/embed -> an embeddings job; answered by M.embed_response.
function M.embed_request(body)
  if type(body) ~= "table" then fail(400, "the body must be a JSON object", nil, "invalid_type") end
  local job = openai.embeddings_request({ input = body.input })
  job.model = M.model_name(body.model)
  job.truncate = body.truncate ~= false
  return job
end

local function now_rfc3339()
  local t = os.time()
  return os.date("!%Y-%m-%dT%H:%M:%S", t) .. "Z"
end
M.now_rfc3339 = now_rfc3339

local function ns(s) return math.floor((s or 0) * 1e9 + 0.5) end

--- One streamed piece: an NDJSON line.
function M.chunk(job, text)
  local t = { model = job.model_id, created_at = now_rfc3339(), done = false }
  if job.ollama_endpoint == "generate" or job.kind == "completion" then t.response = text
  else t.message = { role = "assistant", content = text } end
  return openai.encode(t) .. "\n"
end

--- The last line (streaming) or the whole answer: counts and durations in ns.
-- st: {text, reason ("stop" | "length"), prompt_tokens, completion_tokens,
-- total_s, prompt_s, eval_s}
function M.final(job, st)
  local t = { model = job.model_id, created_at = now_rfc3339(), done = true, done_reason = st.reason or "stop",
              total_duration = ns(st.total_s), load_duration = 0,
              prompt_eval_count = st.prompt_tokens or 0, prompt_eval_duration = ns(st.prompt_s),
              eval_count = st.completion_tokens or 0, eval_duration = ns(st.eval_s) }
  if job.ollama_endpoint == "generate" or job.kind == "completion" then t.response = st.text or ""
  else t.message = { role = "assistant", content = st.text or "" } end
  return openai.encode(t) .. (job.stream and "\n" or "")
end

--- An error in Ollama's shape: {"error": "..."}.
function M.error_body(e) return openai.encode({ error = e.message }) end

--- GET /api/tags.
function M.tags(models)
  local list = {}
  for i, m in ipairs(models) do
    list[i] = { name = m.id .. ":latest", model = m.id .. ":latest", modified_at = m.modified_at or now_rfc3339(),
                size = m.size or 0, digest = m.digest or "",
                details = { format = m.format or "gguf", family = m.family or "", families = { m.family or "" },
                            parameter_size = m.parameter_size or "", quantization_level = m.quantization or "" } }
  end
  return openai.encode({ models = openai.array(list) })
end

--- POST /api/show.
function M.show(m)
  return openai.encode({
    modelfile = "# lumen serves " .. m.id .. " from " .. tostring(m.path) .. "\n",
    parameters = m.parameters or "",
    template = m.template or "",
    details = { format = m.format or "gguf", family = m.family or "", families = { m.family or "" },
                parameter_size = m.parameter_size or "", quantization_level = m.quantization or "" },
    model_info = m.model_info or {},
  })
end

--- POST /api/embed's answer: the vectors as JSON arrays (written in C).
function M.embed_response(model_id, t, n, dim, prompt_tokens, seconds)
  local util = require "lumen.util"
  local rows = {}
  local base = t:data()
  for i = 1, n do rows[i] = util.f32_json(base + (i - 1) * dim, dim) end
  return string.format('{"model":%s,"embeddings":[%s],"total_duration":%d,"load_duration":0,"prompt_eval_count":%d}',
                       json.encode(model_id), table.concat(rows, ","), ns(seconds), prompt_tokens)
end

--- GET /api/version's answer.
function M.version() return openai.encode({ version = M.VERSION }) end

return M
