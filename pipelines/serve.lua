--- `lumen serve`: an OpenAI-compatible server with continuous batching.
--
-- HTTP is libmicrohttpd's (core/http.c, on its own threads); this script runs
-- on one thread and keeps routing, validation, the API-key gate, the access
-- log and the HTTP sink. The batching itself is lumen.scheduler's. Each turn of
-- the loop:
--   1. takes the requests that arrived (validates them, answers the cheap ones,
--      submits generation jobs to the scheduler with an HTTP sink, 429 when
--      slots and queue are full);
--   2. steps the scheduler once: free slots to waiting jobs, prompts evaluated
--      or riding along, every running sequence one token further in ONE
--      batched forward pass; the sinks stream the text out.
local ffi = require "ffi"
local C = require "lumen.ffi"
local lumen = require "lumen"
local chat = require "lumen.chat"
local openai = require "lumen.openai"
local metrics_mod = require "lumen.metrics"
local limits_mod = require "lumen.limits"
local structured = require "lumen.structured"
local ollama = require "lumen.ollama"
local scheduler = require "lumen.scheduler"
local util = require "lumen.util"

local M = {}
local now = chat.now
local fail = openai.fail

-- ---- configuration ------------------------------------------------------------

local DEFAULTS = {
  host = "127.0.0.1", port = 8080, models = nil, slots = 8, ctx = 2048, queue_limit = 64,
  max_body_bytes = 1048576, prefill_chunk = 256, threads = 0, api_keys = {}, api_key_file = nil,
  limits = {}, access_log = true, log_prompts = false, data_dir = nil,
  timeouts = { idle_s = 30, request_s = 600, queue_s = 120 },
}

local function merge_config(path, o)
  local cfg = {}
  for k, v in pairs(DEFAULTS) do cfg[k] = v end
  cfg.timeouts = {}
  for k, v in pairs(DEFAULTS.timeouts) do cfg.timeouts[k] = v end
  if path then
    local y = require("lumen.yaml").load_file(path)
    if type(y) ~= "table" then error(path .. ": expected a mapping of server settings", 0) end
    local known = { host = "string", port = "number", models = "table", slots = "number", ctx = "number",
                    queue_limit = "number", max_body_bytes = "number", prefill_chunk = "number",
                    threads = "number", api_keys = "table", timeouts = "table", api_key_file = "string",
                    limits = "table", access_log = "boolean", log_prompts = "boolean", data_dir = "string",
                    kv_type = "string" }
    for k, v in pairs(y) do
      if not known[k] then error(string.format("%s: unknown setting '%s'", path, tostring(k)), 0) end
      if type(v) ~= known[k] then error(string.format("%s: '%s' must be a %s", path, k, known[k] == "table" and "list or mapping" or known[k]), 0) end
      if k == "timeouts" then
        for tk, tv in pairs(v) do
          if cfg.timeouts[tk] == nil then error(string.format("%s: unknown setting 'timeouts.%s'", path, tostring(tk)), 0) end
          if type(tv) ~= "number" or tv <= 0 then error(string.format("%s: 'timeouts.%s' must be a positive number", path, tk), 0) end
          cfg.timeouts[tk] = tv
        end
      else
        cfg[k] = v
      end
    end
  end
  for k, v in pairs(o.serve) do
    if k == "idle_s" then cfg.timeouts.idle_s = v
    else cfg[k] = v end
  end
  if o.model then cfg.models = { o.model } end
  if o.extra_models then for _, m in ipairs(o.extra_models) do cfg.models[#cfg.models + 1] = m end end
  if o.threads then cfg.threads = o.threads end
  if o.ctx then cfg.ctx = o.ctx end
  local function int(name, v, lo, hi)
    if type(v) ~= "number" or v ~= math.floor(v) or v < lo or v > hi then
      error(string.format("server setting '%s' must be an integer in [%d, %d], got %s", name, lo, hi, tostring(v)), 0)
    end
  end
  int("port", cfg.port, 0, 65535)
  int("slots", cfg.slots, 1, 256)
  int("ctx", cfg.ctx, 16, 1048576)
  int("queue_limit", cfg.queue_limit, 0, 100000)
  int("max_body_bytes", cfg.max_body_bytes, 1024, 2 ^ 31 - 1)
  int("prefill_chunk", cfg.prefill_chunk, 16, 4096)
  if cfg.kv_type ~= nil and cfg.kv_type ~= "f16" and cfg.kv_type ~= "q8_0" then
    error("server setting 'kv_type' must be f16 or q8_0, got " .. tostring(cfg.kv_type), 0)
  end
  for i, k in ipairs(cfg.api_keys) do
    if type(k) ~= "string" or k == "" then error("server setting 'api_keys': item " .. i .. " must be a non-empty string", 0) end
  end
  cfg.limits = limits_mod.check_limits(cfg.limits, "server setting 'limits'")
  return cfg
end

--- Every key the server accepts: server.yaml's api_keys, the api_key_file, and
-- LUMEN_API_KEYS from the environment (never the command line).
local function gather_keys(cfg, env)
  local keys = {}
  for _, k in ipairs(cfg.api_keys) do keys[#keys + 1] = { key = k } end
  if cfg.api_key_file then
    for _, k in ipairs(limits_mod.read_keys_file(cfg.api_key_file)) do keys[#keys + 1] = k end
  end
  for _, k in ipairs(limits_mod.env_keys(env)) do keys[#keys + 1] = k end
  return keys
end

-- ---- the server ------------------------------------------------------------------

local Server = {}
Server.__index = Server
local HttpSink

function Server:log(fmt, ...)
  io.stderr:write(os.date("%H:%M:%S "), string.format(fmt, ...), "\n")
end

--- Loads the models and makes each one's slots (in the scheduler).
function Server:load_models()
  self.model_ids, self.gen_ids, self.encoders = {}, {}, {}
  local names = self.cfg.models
  if not names or #names == 0 then names = { require("lumen.config").registry().default } end
  for i, name in ipairs(names) do
    if type(name) ~= "string" then error("server setting 'models': item " .. i .. " must be a string", 0) end
    local m = lumen.model.load(name, { threads = self.cfg.threads > 0 and self.cfg.threads or nil,
                                       kv_type = self.cfg.kv_type })
    local id = m.alias or name:match("([^/]+)%.gguf$") or name
    local info = m:info()
    if info.encoder then
      -- an embedding model answers /v1/embeddings at once: no sessions, no slots
      self.encoders[id] = { id = id, model = m, info = info }
      self.default_encoder = self.default_encoder or id
      self:log("model %s: %s, embeddings of %d dims, up to %d tokens an input", id, info.name or "", info.n_embd, info.max_tokens)
    else
      local entry = self.sched:add_model(id, m, self.cfg.ctx)
      self.gen_ids[#self.gen_ids + 1] = id
      self:log("model %s: %s, %d slots of %d tokens", id, entry.info.name or "", self.cfg.slots, entry.ctx)
      if m.entry and m.entry.mmproj then
        -- its alias names a vision projector (configs/models.yaml): chat messages may hold images;
        -- the last 8 images' rows are kept, so the same image again is not encoded again
        entry.vision = require("lumen.vision").load(m.entry.mmproj, m, { threads = self.cfg.threads > 0 and self.cfg.threads or nil, cache = 8 })
        self:log("model %s: images through %s (%d positions a tile)", id, entry.vision.path, entry.vision.tile_tokens)
      end
    end
    self.model_ids[#self.model_ids + 1] = id
  end
  self.models = self.sched.models
  self.default_model = self.gen_ids[1]
end

function Server:respond(req_id, status, body, headers, endpoint, content_type)
  C.lm_http_respond(self.http, req_id, status, content_type or "application/json", body, #body, headers)
  self.metrics:request(endpoint or "other", status)
end

function Server:respond_error(req_id, e, endpoint)
  local headers = e.headers or ""
  if e.status == 429 or e.status == 503 then headers = headers .. "Retry-After: " .. (e.retry_after or 1) .. "\r\n" end
  if e.status == 401 then headers = headers .. "WWW-Authenticate: Bearer\r\n" end
  local body = (endpoint or ""):match("^ollama_") and ollama.error_body(e) or openai.error_body(e)
  self:respond(req_id, e.status, body, headers ~= "" and headers or nil, endpoint)
end

--- The web chat page (read once).
function Server:page()
  if not self.page_html then
    local html, err = util.read_file(util.root() .. "/pipelines/web/index.html")
    if not html then fail(500, "the chat page is missing: " .. tostring(err), nil, "server_error") end
    self.page_html = html
  end
  return self.page_html
end

--- One line per answered request on stderr: when, who (address, key name),
-- what, the status, tokens and times; the prompt only with log_prompts.
function Server:access(a, status, job)
  if not self.cfg.access_log then return end
  local t = now()
  local parts = { os.date("!%Y-%m-%dT%H:%M:%SZ"), a.remote or "-", "key=" .. (a.ident and a.ident.name or "-"),
                  a.method, a.path, tostring(status), string.format("%.0fms", (t - a.arrived) * 1000) }
  if job then
    parts[#parts + 1] = "model=" .. tostring(job.model_id)
    parts[#parts + 1] = "prompt=" .. tostring(job.prompt_tokens or 0)
    parts[#parts + 1] = "completion=" .. tostring(job.completion_tokens or 0)
    if job.ttft then parts[#parts + 1] = string.format("ttft=%.0fms", job.ttft * 1000) end
    if job.stream then parts[#parts + 1] = "stream" end
    if job.end_reason then parts[#parts + 1] = "end=" .. job.end_reason end
    if self.cfg.log_prompts then
      local p = job.kind == "chat" and openai.encode(job.messages) or openai.encode(job.prompt)
      parts[#parts + 1] = "prompt_text=" .. p
    end
  end
  io.stderr:write(table.concat(parts, " "), "\n")
end


local ENDPOINTS = {
  ["/v1/chat/completions"] = { method = "POST", name = "chat" },
  ["/v1/completions"] = { method = "POST", name = "completions" },
  ["/v1/embeddings"] = { method = "POST", name = "embeddings" },
  ["/v1/models"] = { method = "GET", name = "models" },
  ["/health"] = { method = "GET", name = "health", open = true },
  ["/metrics"] = { method = "GET", name = "metrics", open = true },
  -- Ollama's API (lua/lumen/ollama.lua), for the tools that speak it
  ["/api/chat"] = { method = "POST", name = "ollama_chat", ollama = true },
  ["/api/generate"] = { method = "POST", name = "ollama_generate", ollama = true },
  ["/api/embed"] = { method = "POST", name = "ollama_embed", ollama = true },
  ["/api/tags"] = { method = "GET", name = "ollama_tags", ollama = true },
  ["/api/show"] = { method = "POST", name = "ollama_show", ollama = true },
  ["/api/version"] = { method = "GET", name = "ollama_version", ollama = true, open = true },
  -- the web chat page (pipelines/web/index.html): it calls /v1 like any client
  ["/"] = { method = "GET", name = "page", open = true },
}

--- One request from the HTTP layer: answered now, or turned into a job.
function Server:handle(r)
  local path = ffi.string(r.path)
  local method = ffi.string(r.method)
  if path:sub(-1) == "/" and #path > 1 then path = path:sub(1, -2) end
  local ep = ENDPOINTS[path] or (path:match("^/v1/models/[^/]+$") and { method = "GET", name = "model" })
             or (path:match("^/v1/files") and { name = "files", any_method = true })
             or (path:match("^/v1/batches") and { name = "batches", any_method = true })
  local name = ep and ep.name or "unknown"
  local a = { remote = ffi.string(r.remote), method = method, path = path, arrived = now() }
  local status = 200
  local ok, err = pcall(function()
    if not ep then fail(404, "unknown endpoint " .. method .. " " .. path, nil, "unknown_url", "invalid_request_error") end
    if not ep.any_method and method ~= ep.method then fail(405, string.format("%s takes %s, not %s", path, ep.method, method), nil, "method_not_allowed") end
    if not ep.open then
      a.ident = self.gate:identify(ffi.string(r.authorization))
      if not a.ident then fail(401, "missing or invalid API key: send 'Authorization: Bearer KEY'", nil, "invalid_api_key") end
    end
    local limit_headers = a.ident and self.gate:headers(a.ident, a.arrived) or ""
    limit_headers = limit_headers ~= "" and limit_headers or nil
    if name == "health" then
      local body = openai.encode({ status = self.draining and "draining" or "ok", models = self.model_ids,
                                   slots_busy = self:slots_busy(), queue = #self.sched.queue })
      status = self.draining and 503 or 200
      return self:respond(r.id, status, body, nil, name)
    elseif name == "metrics" then
      return self:respond(r.id, 200, self.metrics:render(now()), nil, name, "text/plain; version=0.0.4")
    elseif name == "models" then
      return self:respond(r.id, 200, openai.models_list(self.model_ids, self.started), limit_headers, name)
    elseif name == "model" then
      local id = path:match("^/v1/models/(.+)$")
      if not self.models[id] then fail(404, "model '" .. id .. "' does not exist", "model", "model_not_found") end
      return self:respond(r.id, 200, openai.encode({ id = id, object = "model", created = self.started, owned_by = "lumen" }), limit_headers, name)
    end
    if name == "page" then return self:respond(r.id, 200, self:page(), nil, name, "text/html; charset=utf-8") end
    if self.draining then fail(503, "the server is shutting down", nil, "server_shutting_down", "server_error") end
    if ep.ollama then
      status = self:ollama(r, name, a)
      return
    end
    if ep.any_method then
      -- /v1/files, /v1/batches: pipelines/serve_batches.lua, with a data_dir
      if not self.store then fail(404, path .. " needs a data folder: start lumen serve with --data-dir DIR", nil, "unknown_url") end
      local st, body, ctype = self.store:handle(method, path, r)
      return self:respond(r.id, st, body, limit_headers, name, ctype)
    end
    local body = openai.decode(ffi.string(r.body, r.body_len), function(s) return C.lm_utf8_valid(s, #s) end)
    if name == "embeddings" then
      status = self:embeddings(r, body, a)
      return
    end
    if type(body) == "table" and self.encoders[body.model] then
      fail(400, "model '" .. body.model .. "' is an embedding model: use /v1/embeddings", "model", "invalid_value")
    end
    if #self.gen_ids == 0 then fail(400, "this server serves no generation model, only embeddings", "model", "model_not_found") end
    local model_id, job = openai.generation_request(name, body, self.models, self.gen_ids)
    structured.attach(job, body, self.models[model_id])
    job.access = a
    self:submit(r, job, self.models[model_id], name)
    status = nil -- answered when the job ends
  end)
  if not ok then
    if not openai.is_error(err) then
      self:log("internal error on %s %s: %s", method, path, tostring(err))
      err = setmetatable({ status = 500, message = "internal error: " .. tostring(err), type = "server_error" }, openai.ApiError)
    end
    self:respond_error(r.id, err, name)
    status = err.status
  end
  -- probes (/health, /metrics) stay out of the access log
  if status and not (ep and ep.open) then self:access(a, status) end
end

--- /v1/embeddings, answered at once on this thread (one batched forward pass
-- per few thousand tokens). Too long an input is refused, naming the limit.
-- the embedding model a request names (or the default one)
function Server:encoder(id)
  if id ~= nil and id ~= openai.json.null and type(id) ~= "string" then fail(400, "'model' must be a string", "model", "invalid_type") end
  if type(id) ~= "string" then id = self.default_encoder end
  if not id then fail(400, "this server has no embedding model (serve one with -m minilm)", "model", "model_not_found") end
  local entry = self.encoders[id]
  if not entry then
    if self.models[id] then fail(400, "model '" .. id .. "' does not make embeddings: use an embedding model", "model", "invalid_value") end
    fail(404, "model '" .. id .. "' does not exist (available: " .. table.concat(self.model_ids, ", ") .. ")", "model", "model_not_found")
  end
  return entry
end

-- embeddings of inputs (strings or token lists) in one call, counted against the
-- key's token limit: the [n, dim] tensor and the tokens used
function Server:embed(entry, inputs, a, truncate)
  local info = entry.info
  local ok, t, counts = pcall(entry.model.embed, entry.model, inputs, { truncate = truncate == true })
  if not ok then
    local msg = tostring(t):gsub("^embed: ", "")
    if msg:find("at most", 1, true) or msg:find("limit", 1, true) or msg:find("longer", 1, true) then
      fail(400, string.format("%s (model '%s' takes at most %d tokens an input)", msg, entry.id, info.max_tokens),
           "input", "context_length_exceeded")
    end
    fail(400, msg, "input", "invalid_value")
  end
  local used = 0
  for _, c in ipairs(counts) do used = used + c end
  self.gate:admit(a.ident, a.arrived, used)
  self.gate:release(a.ident)
  self.metrics:prompt_evaluated(used)
  return t, used
end

--- /v1/embeddings, answered at once on this thread (one batched forward pass
-- per few thousand tokens). Too long an input is refused, naming the limit.
function Server:embeddings(r, body, a)
  local entry = self:encoder(type(body) == "table" and body.model or nil)
  local job = openai.embeddings_request(body)
  local info = entry.info
  if job.dimensions and job.dimensions ~= info.n_embd then
    fail(400, string.format("model '%s' makes embeddings of %d dimensions and cannot shorten them ('dimensions' %d)",
                            entry.id, info.n_embd, job.dimensions), "dimensions", "invalid_value")
  end
  local t, used = self:embed(entry, job.inputs, a, false)
  local h = self.gate:headers(a.ident, now())
  self:respond(r.id, 200, openai.embeddings_response(entry.id, t, #job.inputs, info.n_embd, job.format, used),
               h ~= "" and h or nil, "embeddings")
  return 200
end

-- what /api/tags and /api/show tell of a model
function Server:model_card(id)
  local e = self.models[id] or self.encoders[id]
  local info = e.info
  local n = info.n_params or 0
  return { id = id, path = e.model.path, size = info.file_size or 0, family = info.arch or "",
           format = tostring(e.model.path):match("%.gguf$") and "gguf" or "safetensors",
           parameter_size = n >= 1e9 and string.format("%.1fB", n / 1e9) or string.format("%.0fM", n / 1e6),
           quantization = (C.lm_dtype_name(info.file_type or 0) ~= nil and ffi.string(C.lm_dtype_name(info.file_type or 0)) or ""):upper(),
           template = info.chat_template or "" }
end

--- Ollama's API: the same models, validation and scheduler, Ollama's shapes.
function Server:ollama(r, name, a)
  if name == "ollama_version" then self:respond(r.id, 200, ollama.version(), nil, name) return 200 end
  if name == "ollama_tags" then
    local list = {}
    for _, id in ipairs(self.model_ids) do list[#list + 1] = self:model_card(id) end
    self:respond(r.id, 200, ollama.tags(list), nil, name)
    return 200
  end
  local body = openai.decode(ffi.string(r.body, r.body_len), function(s) return C.lm_utf8_valid(s, #s) end)
  if type(body) ~= "table" then fail(400, "the body must be a JSON object", nil, "invalid_type") end
  if name == "ollama_show" then
    local id = ollama.model_name(body.model or body.name)
    if type(id) ~= "string" or not (self.models[id] or self.encoders[id]) then fail(404, "model '" .. tostring(id) .. "' not found", "model", "model_not_found") end
    self:respond(r.id, 200, ollama.show(self:model_card(id)), nil, name)
    return 200
  end
  if name == "ollama_embed" then
    local job = ollama.embed_request(body)
    local entry = self:encoder(job.model)
    local t0 = now()
    local t, used = self:embed(entry, job.inputs, a, job.truncate)
    self:respond(r.id, 200, ollama.embed_response(entry.id, t, #job.inputs, entry.info.n_embd, used, now() - t0), nil, name)
    return 200
  end
  local id = ollama.model_name(body.model)
  if type(id) ~= "string" then fail(400, "'model' is required", "model", "missing_required_parameter") end
  local entry = self.models[id]
  if not entry then fail(404, "model '" .. id .. "' not found", "model", "model_not_found") end
  local request = name == "ollama_chat" and ollama.chat_request or ollama.generate_request
  local job, openai_body = request(body, entry.sampling)
  structured.attach(job, openai_body, entry)
  job.access = a
  self:submit(r, job, entry, name)
  return nil -- answered when the job ends
end

-- ---- the HTTP sink -----------------------------------------------------------------
-- How a job's results leave for its client (lumen.scheduler calls these): an
-- SSE stream or one JSON answer at the end, the key's token spending, and
-- the access log line when the job ends however it ends.
HttpSink = {}
HttpSink.__index = HttpSink

function HttpSink:alive() return C.lm_http_alive(self.server.http, self.req_id) end

local function write(self, text)
  return C.lm_http_stream_write(self.server.http, self.req_id, text, #text) == 0
end

function HttpSink:started(job)
  if not job.stream then return true end
  local srv = self.server
  local ollama_api = job.api == "ollama"
  C.lm_http_stream_open(srv.http, self.req_id, 200, ollama_api and "application/x-ndjson" or "text/event-stream",
                        "Cache-Control: no-cache\r\n" .. srv.gate:headers(job.ident, now()))
  srv.metrics:request(job.endpoint, 200)
  local ok = true
  if job.kind == "chat" and not ollama_api then
    -- as OpenAI: each choice opens with its role and empty content
    for _, seq in ipairs(job.seqs) do
      if not write(self, openai.chunk(job, seq.index, "", nil, nil, true)) then ok = false end
    end
  end
  return ok
end

-- a streamed answer that may be tool calls is held back until it ends (only
-- then are the calls complete) or its first character shows it is text
local holds_back = structured.holds_back

function HttpSink:piece(seq, text, finish, lp)
  local job = seq.job
  self.server.gate:spend(job.ident, now(), 1)
  if not job.stream then return true end
  if holds_back(job) and not seq.text_answer then
    seq.held = (seq.held or "") .. text
    if finish then
      local calls = structured.tool_calls(job.structured, seq.held)
      if calls then return write(self, openai.tool_call_chunks(job, seq.index, calls)) end
    elseif structured.is_text(job.structured, seq.held) then
      seq.text_answer = true -- text under tool_choice auto, known by its first character: streamed from here
    else
      return true
    end
    text = seq.held
  end
  if job.api == "ollama" then
    if text ~= "" then return write(self, ollama.chunk(job, text)) end
    return true
  end
  if text ~= "" or finish or lp then
    return write(self, openai.chunk(job, seq.index, text ~= "" and text or nil, finish, lp and { lp } or nil, false))
  end
  return true
end

-- what Ollama's last line reports
local function ollama_stats(job, text)
  local seq = job.seqs[1]
  local total = now() - job.arrived
  return { text = text, reason = seq and seq.finish or "stop", prompt_tokens = job.prompt_tokens,
           completion_tokens = job.completion_tokens, total_s = total, prompt_s = job.ttft or 0,
           eval_s = total - (job.ttft or 0) }
end

function HttpSink:finished(job)
  local srv = self.server
  if job.stream then
    if job.api == "ollama" then
      write(self, ollama.final(job, ollama_stats(job, "")))
    else
      if job.include_usage then write(self, openai.usage_chunk(job, job.completion_tokens)) end
      write(self, "data: [DONE]\n\n")
    end
    C.lm_http_stream_close(srv.http, self.req_id)
  else
    local choices = scheduler.choices(job)
    local h = srv.gate:headers(job.ident, now())
    h = h ~= "" and h or nil
    if job.api == "ollama" then
      srv:respond(self.req_id, 200, ollama.final(job, ollama_stats(job, choices[1] and choices[1].text or "")), h, job.endpoint)
    else
      srv:respond(self.req_id, 200, openai.response(job, structured.finish_choices(job, choices)), h, job.endpoint)
    end
  end
  srv:release(job, job.gone and 499 or 200)
end

function HttpSink:cancelled(job, reason)
  local srv = self.server
  if reason == "queue_timeout" then
    -- no slot came free in time: the client hears so instead of waiting on
    local wait = math.min(srv.cfg.timeouts.queue_s, srv.cfg.timeouts.request_s)
    local e = setmetatable({ status = 503, type = "server_error", code = "timeout", retry_after = 1,
                             message = string.format("no slot came free within %g s (the server's timeouts.queue_s); retry later", wait) }, openai.ApiError)
    srv:respond_error(self.req_id, e, job.endpoint)
    srv:release(job, 503)
  else
    srv:release(job, 499)
  end
end

--- The end of a job for the server: its place under the key's concurrency
-- limit back, one access log line.
function Server:release(job, status)
  if job.ident then self.gate:release(job.ident) end
  if status == 499 then job.end_reason = "client_gone" end
  self:access(job.access, status, job)
end

-- queued jobs have not taken their slots yet (admission runs after all of
-- this turn's arrivals): count them against the free slots, then the queue
-- (a batch's requests, queued at priority -1, wait behind this one: not
-- counted), and so are the jobs whose images are still being encoded: a
-- burst of image requests is not all encoded, one thread each, to be
-- refused afterwards
function Server:refuse_when_busy(job, entry)
  local encoding = 0
  for _, w in ipairs(self.encoding) do
    if w.entry == entry then encoding = encoding + w.job.n end
  end
  if self.sched:waiting(entry, 0) + encoding + job.n > #entry.free + self.cfg.queue_limit then
    local e = setmetatable({ status = 429, message = "the server is busy: all slots are taken and the queue is full; retry shortly",
                             type = "rate_limit_error", code = "rate_limit_exceeded", retry_after = 1 }, openai.ApiError)
    error(e, 0)
  end
end

--- A chat job's images (openai.lua's {url, where}): decoded from their data:
-- URLs now (any fault is a 400 naming the part), then encoded by the model's
-- projector on threads of their own (lm_vision_encode_start), so the running
-- streams go on meanwhile; poll_images submits the job when all are done.
function Server:start_images(job, entry)
  if not entry.vision then
    fail(400, string.format("model '%s' takes no images (%s): it has no vision projector; serve a model whose alias names " ..
                            "an mmproj in configs/models.yaml", entry.id, job.images[1].where), "messages", "invalid_value")
  end
  local vision = require "lumen.vision"
  local bytes = {}
  for k, im in ipairs(job.images) do
    local b, err = vision.data_url(im.url)
    if not b then fail(400, im.where .. ": " .. err, "messages", "invalid_image_url") end
    bytes[k] = b
  end
  job.pending, job.image_parts = {}, {}
  for k, im in ipairs(job.images) do
    local ok, h = pcall(entry.vision.image_parts_start, entry.vision, entry.model, bytes[k], im.where)
    if not ok then
      self:orphan(job)
      fail(400, tostring(h), "messages", "invalid_image")
    end
    job.pending[k] = h
  end
end

-- a job's encodes that nobody waits for any more run to their end (their
-- threads hold the image) and are dropped then
function Server:orphan(job)
  for k, h in ipairs(job.pending or {}) do
    if not job.image_parts[k] then self.orphans[#self.orphans + 1] = h end
  end
  job.pending = nil
end

--- Jobs whose images are encoded go to the scheduler; a failed encode is a 400,
-- a client gone meanwhile a 499.
function Server:poll_images()
  for i = #self.orphans, 1, -1 do
    local ok, parts = pcall(self.orphans[i].poll, self.orphans[i])
    if not ok or parts then table.remove(self.orphans, i) end
  end
  local i = 1
  while self.encoding[i] do
    local w = self.encoding[i]
    local job = w.job
    local done, ok, err = true, true, nil
    if not C.lm_http_alive(self.http, job.req_id) then
      ok, err = false, "gone"
    else
      for k, h in ipairs(job.pending) do
        if not job.image_parts[k] then
          local okp, parts = pcall(h.poll, h)
          if not okp then ok, err = false, parts break end
          job.image_parts[k] = parts
          if not parts then done = false end
        end
      end
    end
    if ok and not done then
      i = i + 1
    else
      table.remove(self.encoding, i)
      if ok then ok, err = pcall(self.enqueue, self, job, w.entry) end
      if not ok then
        self:orphan(job)
        if err == "gone" then
          self:access(job.access, 499, job)
        else
          if not openai.is_error(err) then
            err = setmetatable({ status = 400, message = tostring(err), param = "messages", code = "invalid_image",
                                 type = "invalid_request_error" }, openai.ApiError)
          end
          self:respond_error(job.req_id, err, job.endpoint)
          self:access(job.access, err.status)
        end
      end
    end
  end
end

--- Tokenizes a validated request, checks it fits, and submits it with an
-- HTTP sink (a job with images once they are encoded: poll_images).
function Server:submit(r, job, entry, endpoint)
  job.req_id, job.endpoint = r.id, endpoint
  if job.images then
    self:refuse_when_busy(job, entry) -- before the work of encoding them
    self:start_images(job, entry)
    self.encoding[#self.encoding + 1] = { job = job, entry = entry }
    return
  end
  self:enqueue(job, entry)
end

-- (internal) the rest of submit
function Server:enqueue(job, entry)
  scheduler.prepare(entry, job)
  self:refuse_when_busy(job, entry)
  -- the key's limits come last: a request refused for anything else costs it nothing
  self.gate:admit(job.access.ident, job.access.arrived, job.prompt_tokens)
  job.ident = job.access.ident
  job.id = util.random_id(job.kind == "chat" and "chatcmpl-" or "cmpl-")
  job.created = os.time()
  job.model_id = entry.id
  job.arrived = job.access.arrived
  local t = self.cfg.timeouts
  job.deadline = job.arrived + t.request_s
  job.queue_deadline = job.arrived + math.min(t.queue_s, t.request_s)
  job.collect = not job.stream
  self.sched:submit(job, setmetatable({ server = self, req_id = job.req_id }, HttpSink))
end

function Server:slots_busy() return self.sched:slots_busy() end

function Server:run()
  local req = ffi.new("lm_http_request")
  local t_last_log = now()
  while true do
    if C.lm_signal_term() and not self.draining then
      self.draining = true
      local running, prefilling, queued = self.sched:counts()
      self:log("shutting down: finishing %d running and %d queued requests", running + prefilling, queued)
      if self.store then self.store:drain() end
    end
    local computing = not self.sched:idle() or (self.store ~= nil and self.store:active())
    local encoding = #self.encoding + #self.orphans > 0
    if self.draining and not computing and not encoding then break end
    -- take every request that arrived; wait only when there is nothing to compute
    -- (a few ms while only images are encoding, on their own threads)
    local got = C.lm_http_next(self.http, req, computing and 0 or encoding and 5 or 100)
    local taken = 0
    while got == 1 do
      self:handle(req)
      taken = taken + 1
      if taken >= 64 then break end
      got = C.lm_http_next(self.http, req, 0)
    end
    if got < 0 then error("http: " .. util.last_error(), 0) end
    if self.store then self.store:feed() end
    if encoding then self:poll_images() end
    self.sched:step()
    if self.store then self.store:commit() end
    if now() - t_last_log > 60 and computing then
      t_last_log = now()
      local running, _, queued = self.sched:counts()
      self:log("%d streams, %d queued, %.1f tok/s", running, queued, self.metrics:decode_rate(now()))
    end
  end
end

function M.run(o)
  local cfg = merge_config(o.config, o)
  math.randomseed(os.time() + math.floor(now() * 1000) % 100000)
  local metrics = metrics_mod.new()
  local self = setmetatable({ cfg = cfg, metrics = metrics, started = os.time(), encoding = {}, orphans = {},
                              -- with batches on (data_dir), an eighth of the slots stays free for live requests
                              sched = scheduler.new{ slots = cfg.slots, prefill_chunk = cfg.prefill_chunk, observer = metrics,
                                                     reserve = cfg.data_dir and math.min(cfg.slots - 1, math.max(1, math.ceil(cfg.slots / 8))) or 0 },
                              gate = limits_mod.new(gather_keys(cfg, os.getenv("LUMEN_API_KEYS")), cfg.limits) }, Server)
  self:load_models()
  if cfg.data_dir then self.store = require("serve_batches").new(self, cfg.data_dir) end
  local mt = self.metrics
  mt:gauge("lumen_queue_depth", "Requests waiting for a slot.", function() return #self.sched.queue end)
  mt:gauge("lumen_slots_busy", "Slots generating or prefilling.", function() return self:slots_busy() end)
  mt:gauge("lumen_slots_total", "Slots, all models.", function() return cfg.slots * #self.model_ids end)
  mt:counter("lumen_image_encodes_total", "Images a vision projector was set to encode (the same image again is a cache hit).", function()
    local n = 0
    for _, e in pairs(self.models) do n = n + (e.vision and e.vision.encodes or 0) end
    return n
  end)
  mt:gauge("lumen_kv_cache_used_tokens", "Tokens held in the KV caches of busy slots.", function() return self.sched:kv_used() end)
  mt:gauge("lumen_kv_cache_capacity_tokens", "Tokens all slots' KV caches hold.", function()
    local c = 0
    for _, e in pairs(self.models) do c = c + e.ctx * #e.slots end
    return c
  end)

  local p = ffi.new("lm_http_params", { host = cfg.host, port = cfg.port, max_body_bytes = cfg.max_body_bytes,
                                        timeout_s = cfg.timeouts.idle_s, max_connections = 0 })
  if C.lm_signal_watch() ~= 0 then error(util.last_error(), 0) end
  local h = C.lm_http_start(p)
  if h == nil then error(util.last_error(), 0) end
  self.http = h
  local port = C.lm_http_port(h)
  if o.port_file then
    -- written whole, then renamed: a reader never sees a partial number
    local tmp = o.port_file .. ".tmp"
    local f = assert(io.open(tmp, "w"))
    f:write(tostring(port), "\n")
    f:close()
    assert(os.rename(tmp, o.port_file))
  end
  self:log("lumen serve: listening on http://%s:%d/v1 (%s; %d slots per model, queue %d%s)", cfg.host, port,
           table.concat(self.model_ids, ", "), cfg.slots, cfg.queue_limit,
           self.gate:required() and string.format(", %d API keys required", #self.gate.keys) or "")
  local ok, err = pcall(self.run, self)
  C.lm_http_stop(h, 5000)
  self.http = nil
  if not ok then error(err, 0) end
  self:log("lumen serve: stopped")
  return 0
end

M._merge_config = merge_config
M._gather_keys = gather_keys
M._whole_pieces = scheduler.whole_pieces
return M
