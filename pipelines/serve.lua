--- `lumen serve`: an OpenAI-compatible server with continuous batching.
--
-- HTTP is libmicrohttpd's (core/http.c, on its own threads); this script is the
-- scheduler, on one thread. Each turn of the loop:
--   1. takes the requests that arrived (validates them, answers the cheap ones,
--      queues generation jobs, 429 when slots and queue are full);
--   2. gives waiting jobs free slots (a slot is a session with its KV cache);
--   3. with nothing running, evaluates the admitted prompts (the fastest first
--      token); otherwise picks up to prefill_chunk prompt tokens to ride along
--      in step 4 (a long prompt takes several turns, so running streams keep
--      flowing);
--   4. advances every running sequence by one token, with those prompt tokens,
--      in ONE batched forward pass (lumen.model.eval_batch), samples each, and
--      streams the text out.
-- Finished or disconnected requests give their slots back at once.
local ffi = require "ffi"
local C = require "lumen.ffi"
local lumen = require "lumen"
local chat = require "lumen.chat"
local openai = require "lumen.openai"
local metrics_mod = require "lumen.metrics"
local limits_mod = require "lumen.limits"
local model_mod = require "lumen.model"
local util = require "lumen.util"

local M = {}
local now = chat.now
local fail = openai.fail

-- ---- configuration ------------------------------------------------------------

local DEFAULTS = {
  host = "127.0.0.1", port = 8080, models = nil, slots = 8, ctx = 2048, queue_limit = 64,
  max_body_bytes = 1048576, prefill_chunk = 256, threads = 0, api_keys = {}, api_key_file = nil,
  limits = {}, access_log = true, log_prompts = false,
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
                    limits = "table", access_log = "boolean", log_prompts = "boolean" }
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

-- ---- logprobs --------------------------------------------------------------------

--- log p(token) under the model's distribution (the raw logits), and the k most
-- likely tokens with theirs: both computed in C over the session's logits view.
local function logprobs_of(model, session, tok, k)
  local logits = session:logits()
  local lse = logits:logsumexp()
  local top = {}
  if k and k > 0 then
    local idx, val = logits:topk(k)
    for j = 1, #idx do top[j] = { piece = model:piece(idx[j] - 1), logprob = val[j] - lse } end
  end
  return logits:get(tok + 1) - lse, top
end

-- ---- the server ------------------------------------------------------------------

local Server = {}
Server.__index = Server

local function job_id(prefix)
  local t = {}
  for i = 1, 24 do t[i] = string.char(("abcdefghijklmnopqrstuvwxyz0123456789"):byte(math.random(36))) end
  return prefix .. table.concat(t)
end

function Server:log(fmt, ...)
  io.stderr:write(os.date("%H:%M:%S "), string.format(fmt, ...), "\n")
end

--- Loads the models and makes each one's slots.
function Server:load_models()
  self.models, self.model_ids = {}, {}
  local names = self.cfg.models
  if not names or #names == 0 then names = { require("lumen.config").registry().default } end
  for i, name in ipairs(names) do
    if type(name) ~= "string" then error("server setting 'models': item " .. i .. " must be a string", 0) end
    local m = lumen.model.load(name, { threads = self.cfg.threads > 0 and self.cfg.threads or nil })
    local info = m:info()
    local id = m.alias or name:match("([^/]+)%.gguf$") or name
    local ctx = math.min(self.cfg.ctx, info.n_ctx_train)
    local entry = { id = id, model = m, info = info, ctx = ctx, slots = {}, free = {},
                    sampling = m.entry and m.entry.sampling or {},
                    -- reused by every batched step (eval_batch's cdata arrays):
                    -- a token per slot plus the prompt tokens riding along
                    sessions_buf = ffi.new("lm_session*[?]", self.cfg.slots + self.cfg.prefill_chunk + 16),
                    tokens_buf = ffi.new("int32_t[?]", self.cfg.slots + self.cfg.prefill_chunk + 16),
                    -- and for the step's draws (lumen.sampler.sample_sessions)
                    samplers_buf = ffi.new("lm_sampler*[?]", self.cfg.slots),
                    drawn_buf = ffi.new("int32_t[?]", self.cfg.slots) }
    -- an embedding model answers /v1/embeddings at once: no sessions, no slots
    entry.encoder = info.encoder
    for s = 1, info.encoder and 0 or self.cfg.slots do
      local slot = { index = s, session = m:session{ ctx = ctx, batch = self.cfg.prefill_chunk } }
      entry.slots[s] = slot
      entry.free[#entry.free + 1] = slot
    end
    self.models[id] = entry
    self.model_ids[#self.model_ids + 1] = id
    if info.encoder then
      self:log("model %s: %s, embeddings of %d dims, up to %d tokens an input", id, info.name or "", info.n_embd, info.max_tokens)
    else
      self:log("model %s: %s, %d slots of %d tokens", id, info.name or "", self.cfg.slots, ctx)
    end
  end
  for _, id in ipairs(self.model_ids) do
    local e = self.models[id]
    if e.encoder then self.default_encoder = self.default_encoder or id
    else self.default_model = self.default_model or id end
  end
end

function Server:respond(req_id, status, body, headers, endpoint, content_type)
  C.lm_http_respond(self.http, req_id, status, content_type or "application/json", body, #body, headers)
  self.metrics:request(endpoint or "other", status)
end

function Server:respond_error(req_id, e, endpoint)
  local headers = e.headers or ""
  if e.status == 429 or e.status == 503 then headers = headers .. "Retry-After: " .. (e.retry_after or 1) .. "\r\n" end
  if e.status == 401 then headers = headers .. "WWW-Authenticate: Bearer\r\n" end
  self:respond(req_id, e.status, openai.error_body(e), headers ~= "" and headers or nil, endpoint)
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
}

--- One request from the HTTP layer: answered now, or turned into a job.
function Server:handle(r)
  local path = ffi.string(r.path)
  local method = ffi.string(r.method)
  if path:sub(-1) == "/" and #path > 1 then path = path:sub(1, -2) end
  local ep = ENDPOINTS[path] or (path:match("^/v1/models/[^/]+$") and { method = "GET", name = "model" })
  local name = ep and ep.name or "unknown"
  local a = { remote = ffi.string(r.remote), method = method, path = path, arrived = now() }
  local status = 200
  local ok, err = pcall(function()
    if not ep then fail(404, "unknown endpoint " .. method .. " " .. path, nil, "unknown_url", "invalid_request_error") end
    if method ~= ep.method then fail(405, string.format("%s takes %s, not %s", path, ep.method, method), nil, "method_not_allowed") end
    if not ep.open then
      a.ident = self.gate:identify(ffi.string(r.authorization))
      if not a.ident then fail(401, "missing or invalid API key: send 'Authorization: Bearer KEY'", nil, "invalid_api_key") end
    end
    local limit_headers = a.ident and self.gate:headers(a.ident, a.arrived) or ""
    limit_headers = limit_headers ~= "" and limit_headers or nil
    if name == "health" then
      local body = openai.encode({ status = self.draining and "draining" or "ok", models = self.model_ids,
                                   slots_busy = self:slots_busy(), queue = #self.queue })
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
    if self.draining then fail(503, "the server is shutting down", nil, "server_shutting_down", "server_error") end
    local body = openai.decode(ffi.string(r.body, r.body_len), function(s) return C.lm_utf8_valid(s, #s) end)
    local model_id = body.model
    if model_id ~= nil and model_id ~= openai.json.null and type(model_id) ~= "string" then
      fail(400, "'model' must be a string", "model", "invalid_type")
    end
    if type(model_id) ~= "string" then model_id = name == "embeddings" and self.default_encoder or self.default_model end
    if not model_id then fail(400, "this server has no embedding model (serve one with -m minilm)", "model", "model_not_found") end
    local entry = self.models[model_id]
    if not entry then fail(404, "model '" .. model_id .. "' does not exist (available: " .. table.concat(self.model_ids, ", ") .. ")", "model", "model_not_found") end
    if (name == "embeddings") ~= (entry.encoder == true) then
      fail(400, string.format("model '%s' %s", model_id, entry.encoder and "is an embedding model: use /v1/embeddings"
                                                  or "does not make embeddings: use an embedding model"), "model", "invalid_value")
    end
    if name == "embeddings" then
      status = self:embeddings(r, openai.embeddings_request(body), entry, a)
      return
    end
    local job = name == "chat" and openai.chat_request(body, entry.sampling) or openai.completion_request(body, entry.sampling)
    job.access = a
    self:submit(r, job, entry, name)
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
function Server:embeddings(r, job, entry, a)
  local info = entry.info
  if job.dimensions and job.dimensions ~= info.n_embd then
    fail(400, string.format("model '%s' makes embeddings of %d dimensions and cannot shorten them ('dimensions' %d)",
                            entry.id, info.n_embd, job.dimensions), "dimensions", "invalid_value")
  end
  local ok, t, counts = pcall(entry.model.embed, entry.model, job.inputs, { truncate = false })
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
  local h = self.gate:headers(a.ident, now())
  self:respond(r.id, 200, openai.embeddings_response(entry.id, t, #job.inputs, info.n_embd, job.format, used),
               h ~= "" and h or nil, "embeddings")
  self.metrics.prompt_tokens = self.metrics.prompt_tokens + used
  return 200
end

--- Tokenizes a validated request, checks it fits, and queues it.
function Server:submit(r, job, entry, endpoint)
  local model = entry.model
  local buf, n
  if job.kind == "chat" then
    local okr, text = pcall(chat.render, model, job.messages, true)
    if not okr then fail(400, "the chat template refused the messages: " .. tostring(text), "messages", "invalid_value") end
    buf, n = model:_encode(text, false, true)
  else
    buf, n = model:_encode(job.prompt, true, false)
  end
  if n == 0 then fail(400, "the prompt is empty after tokenization", nil, "invalid_value") end
  if n >= entry.ctx then
    fail(400, string.format("the prompt has %d tokens; this model's context per request is %d tokens (prompt + completion)", n, entry.ctx),
         job.kind == "chat" and "messages" or "prompt", "context_length_exceeded")
  end
  if job.max_tokens and n + job.max_tokens > entry.ctx then
    -- OpenAI refuses too; clients that want "as much as fits" omit max_tokens
    fail(400, string.format("the prompt (%d tokens) plus max_tokens (%d) exceed the context of %d tokens", n, job.max_tokens, entry.ctx),
         "max_tokens", "context_length_exceeded")
  end
  for id in pairs(job.logit_bias or {}) do
    if id >= model.n_vocab then
      fail(400, string.format("'logit_bias' names token %d; the vocabulary has %d tokens", id, model.n_vocab), "logit_bias", "invalid_value")
    end
  end
  if job.n > #entry.slots then
    fail(400, string.format("'n' is %d but the server has %d slots per model", job.n, #entry.slots), "n", "invalid_value")
  end
  -- queued jobs have not taken their slots yet (admit() runs after all of this
  -- turn's arrivals): count them against the free slots, then the queue
  local waiting = 0
  for _, q in ipairs(self.queue) do if q.entry == entry then waiting = waiting + q.n end end
  if waiting + job.n > #entry.free + self.cfg.queue_limit then
    local e = setmetatable({ status = 429, message = "the server is busy: all slots are taken and the queue is full; retry shortly",
                             type = "rate_limit_error", code = "rate_limit_exceeded", retry_after = 1 }, openai.ApiError)
    error(e, 0)
  end
  -- the key's limits come last: a request refused for anything else costs it nothing
  self.gate:admit(job.access.ident, job.access.arrived, n)
  job.ident = job.access.ident
  job.req_id, job.entry, job.endpoint = r.id, entry, endpoint
  job.prompt_buf, job.prompt_tokens = buf, n
  job.max_tokens = job.max_tokens or (entry.ctx - n)
  job.id = job_id(job.kind == "chat" and "chatcmpl-" or "cmpl-")
  job.created = os.time()
  job.model_id = entry.id
  job.arrived = job.access.arrived
  self.queue[#self.queue + 1] = job
end

function Server:slots_busy()
  local b = 0
  for _, e in pairs(self.models) do b = b + #e.slots - #e.free end
  return b
end

--- How many of a prompt's first tokens a free slot's KV cache already holds
-- (its last request left them there), at most all but the last, whose logits
-- the first token needs. Only on weights where a token's result does not
-- depend on how its prompt was cut or whether it was generated (info.panels):
-- there the continuation is bit for bit what evaluating the whole prompt gives.
local function cached_prefix(entry, slot, buf, n)
  if not entry.info.panels then return 0 end
  local h = slot.session.h
  local have = math.min(C.lm_session_pos(h), n - 1)
  local toks = C.lm_session_tokens(h)
  local k = 0
  while k < have and toks[k] == buf[k] do k = k + 1 end
  return k
end

--- The free slot whose cache holds the longest start of the prompt (every
-- chat request of a model starts with the same template and system prompt),
-- taken off the free list, and how many tokens it holds.
local function take_slot(entry, buf, n)
  local best, best_k = #entry.free, -1
  for i = #entry.free, 1, -1 do
    local k = cached_prefix(entry, entry.free[i], buf, n)
    if k > best_k then best, best_k = i, k end
  end
  return table.remove(entry.free, best), math.max(best_k, 0)
end

--- Gives queued jobs free slots, first come first served.
function Server:admit()
  local i = 1
  while i <= #self.queue do
    local job = self.queue[i]
    local entry = job.entry
    if not C.lm_http_alive(self.http, job.req_id) then
      table.remove(self.queue, i)
      self.metrics.disconnects = self.metrics.disconnects + 1
      self:release(job, 499)
    elseif now() - job.arrived > math.min(self.cfg.timeouts.queue_s, self.cfg.timeouts.request_s) then
      -- no slot came free in time: the client hears so instead of waiting on
      table.remove(self.queue, i)
      local e = setmetatable({ status = 503, type = "server_error", code = "timeout", retry_after = 1,
                               message = string.format("no slot came free within %g s (the server's timeouts.queue_s); retry later",
                                                       math.min(self.cfg.timeouts.queue_s, self.cfg.timeouts.request_s)) }, openai.ApiError)
      self:respond_error(job.req_id, e, job.endpoint)
      self:release(job, 503)
    elseif #entry.free >= job.n then
      table.remove(self.queue, i)
      job.seqs = {}
      -- the first choice evaluates the prompt, in the slot that holds most of
      -- it; the others fork from it (prompt_evaluated), so any free slot does
      local first, cached = take_slot(entry, job.prompt_buf, job.prompt_tokens)
      for c = 1, job.n do
        local slot = c == 1 and first or table.remove(entry.free)
        slot.session:rewind(c == 1 and cached or 0)
        job.seqs[c] = { job = job, index = c - 1, slot = slot, n_gen = 0, parts = {}, logprobs = {},
                        text = model_mod.text_stream(entry.model, job.stop) }
      end
      job.prefilled, job.cached_tokens = cached, cached
      self.metrics.cached_prompt_tokens = self.metrics.cached_prompt_tokens + cached
      self.prefilling[#self.prefilling + 1] = job
    else
      i = i + 1
    end
  end
end

local function sampler_for(job, c)
  local s = {}
  for k, v in pairs(job.sampling) do s[k] = v end
  -- n > 1 with a seed: each choice its own stream of draws, reproducibly
  if s.seed and c > 1 then s.seed = (s.seed + 7919 * (c - 1)) % 2 ^ 53 end
  s.logit_bias = job.logit_bias
  return lumen.sampler.from_config(s)
end

--- How many of a prompt's `left` tokens to evaluate now, given room for n:
-- never one token of a longer prompt, and never leave one behind. On weights
-- whose decode tokens skip the integer panels (the K-quants; not
-- info.panels) the engine takes a prompt's tokens through the panels and a
-- lone token through the decode kernels (lm_forward), so a prompt cut into
-- pieces gives the bits `lumen generate` gives only when no piece is a single
-- token. On info.panels weights any cut gives them; the rule costs nothing there.
local function whole_pieces(n, left)
  if n < left and n < 2 then n = 2 end
  if left - n == 1 then n = left end
  return n
end

--- Prompt tokens for this turn. With no stream running, every admitted prompt
-- is evaluated at once, each on its own, as `lumen generate` does (the fastest
-- first token). With streams running, up to
-- prefill_chunk prompt tokens ride along in the next decode step's forward
-- pass (see decode_step): the weights are read once for both, and a long
-- prompt, spread over several steps, never stalls the running streams. That
-- takes the integer tile kernels for the decode tokens (model info `tiled`);
-- on other weights (e.g. the K-quants without VNNI) a riding prompt token costs
-- more than one through the GEMM, so there a prompt goes alone, in pieces of
-- prefill_chunk, between the steps.
function Server:prefill_step(running)
  self.riding = {}
  if running == 0 then
    while self.prefilling[1] do
      local job = self.prefilling[1]
      if self:prompt_gone(job) then
        table.remove(self.prefilling, 1)
      else
        local n = job.prompt_tokens - job.prefilled
        job.seqs[1].slot.session:eval_raw(job.prompt_buf + job.prefilled, n)
        self:prompt_evaluated(job, n)
      end
    end
    return
  end
  local chunk = self.cfg.prefill_chunk
  local ride_budget, alone_budget = math.max(16, chunk - running), chunk
  local i = 1
  while self.prefilling[i] do
    local job = self.prefilling[i]
    local left = job.prompt_tokens - job.prefilled
    if self:prompt_gone(job) then
      table.remove(self.prefilling, i)
    elseif job.entry.info.tiled then
      if ride_budget <= 0 then break end
      local n = whole_pieces(math.min(ride_budget, left), left)
      self.riding[#self.riding + 1] = { job = job, n = n }
      ride_budget = ride_budget - n
      i = i + 1
    else
      -- cut only at multiples of prefill_chunk (the pieces `lumen generate`
      -- cuts a prompt into): one that does not fit this turn waits for the next
      local n = whole_pieces(math.min(chunk, left), left)
      if n > alone_budget + 1 then break end
      job.seqs[1].slot.session:eval_raw(job.prompt_buf + job.prefilled, n)
      alone_budget = alone_budget - n
      if n < left then i = i + 1 end -- a finished prompt leaves the list
      self:prompt_evaluated(job, n)
    end
  end
end

--- A prompt whose client left: its slots go back at once.
function Server:prompt_gone(job)
  if C.lm_http_alive(self.http, job.req_id) then return false end
  self:release(job, 499)
  self.metrics.disconnects = self.metrics.disconnects + 1
  return true
end

--- n more tokens of a job's prompt are in its session; when the whole prompt
-- is, each choice gets its first token.
function Server:prompt_evaluated(job, n)
  job.prefilled = job.prefilled + n
  self.metrics.prompt_tokens = self.metrics.prompt_tokens + n
  if job.prefilled < job.prompt_tokens then return end
  for i, j in ipairs(self.prefilling) do
    if j == job then table.remove(self.prefilling, i) break end
  end
  local s = job.seqs[1].slot.session
  for c, seq in ipairs(job.seqs) do
    if c > 1 then
      -- the other choices start from a copy of the prompt's KV cache
      local f = s:fork()
      seq.slot.session:close()
      seq.slot.session = f
    end
    seq.sampler = sampler_for(job, c)
    if job.kind == "completion" then
      -- as `lumen generate`: the prompt is part of the penalties' history
      for i = 0, job.prompt_tokens - 1 do seq.sampler:accept(job.prompt_buf[i]) end
    end
  end
  if job.stream then
    C.lm_http_stream_open(self.http, job.req_id, 200, "text/event-stream",
                          "Cache-Control: no-cache\r\n" .. self.gate:headers(job.ident, now()))
    self.metrics:request(job.endpoint, 200)
    if job.kind == "chat" then
      -- as OpenAI: each choice opens with its role and empty content
      for _, seq in ipairs(job.seqs) do
        local first = openai.chunk(job, seq.index, "", nil, nil, true)
        if C.lm_http_stream_write(self.http, job.req_id, first, #first) ~= 0 then job.gone = true end
      end
    end
  end
  job.running = #job.seqs
  for _, seq in ipairs(job.seqs) do self:next_token(seq) end
end

--- Samples the next token of a sequence from its session's logits (or takes
-- the one sampled with the step's others) and moves it on: text out, stop
-- checks, or queued for the next batched step.
function Server:next_token(seq, tok)
  local job = seq.job
  local s = seq.slot.session
  local model = job.entry.model
  tok = tok or seq.sampler:sample(s)
  seq.n_gen = seq.n_gen + 1
  local t = now()
  if seq.n_gen == 1 and seq.index == 0 then
    job.ttft = t - job.arrived
    self.metrics:observe_ttft(job.ttft)
  end
  self.gate:spend(job.ident, t, 1)
  local lp
  if job.logprobs then
    local logprob, top = logprobs_of(model, s, tok, job.top_logprobs)
    lp = openai.logprob_entry(model:piece(tok), logprob, top)
  end
  if model:is_eog(tok) then return self:finish_seq(seq, "stop", lp) end
  seq.sampler:accept(tok)
  local text, stopped = seq.text:push(tok)
  if stopped then return self:finish_seq(seq, "stop", lp) end
  -- max_tokens, a full context or the request's time limit: "length"
  if seq.n_gen >= job.max_tokens or s:pos() >= s:ctx() or t - job.arrived > self.cfg.timeouts.request_s then
    seq.pending_text = text
    return self:finish_seq(seq, "length", lp)
  end
  self:emit(seq, text, nil, lp)
  seq.next = tok
  self.decoding[#self.decoding + 1] = seq
end

function Server:emit(seq, text, finish, lp)
  local job = seq.job
  -- JSON carries UTF-8 only: a stray byte token or a character cut short by
  -- the end of generation becomes U+FFFD (text_stream never splits a whole one)
  text = util.utf8_sanitize(text)
  if lp then seq.logprobs[#seq.logprobs + 1] = lp end
  if job.stream then
    if text ~= "" or finish or lp then
      local chunk = openai.chunk(job, seq.index, text ~= "" and text or nil, finish, lp and { lp } or nil, false)
      if C.lm_http_stream_write(self.http, job.req_id, chunk, #chunk) ~= 0 then job.gone = true end
    end
  elseif text ~= "" then
    seq.parts[#seq.parts + 1] = text
  end
end

function Server:finish_seq(seq, reason, lp)
  local job = seq.job
  local rest = (seq.pending_text or "") .. seq.text:flush()
  seq.finish = reason
  self:emit(seq, rest, reason, lp)
  job.running = job.running - 1
  job.completion_tokens = (job.completion_tokens or 0) + seq.n_gen
  if job.running == 0 then self:finish_job(job) end
end

function Server:finish_job(job)
  if job.stream then
    if job.include_usage then
      local u = openai.usage_chunk(job, job.completion_tokens)
      C.lm_http_stream_write(self.http, job.req_id, u, #u)
    end
    local done = "data: [DONE]\n\n"
    C.lm_http_stream_write(self.http, job.req_id, done, #done)
    C.lm_http_stream_close(self.http, job.req_id)
  else
    local choices = {}
    for i, seq in ipairs(job.seqs) do
      choices[i] = { text = table.concat(seq.parts), finish = seq.finish, n_gen = seq.n_gen, logprobs = seq.logprobs }
    end
    local h = self.gate:headers(job.ident, now())
    self:respond(job.req_id, 200, openai.response(job, choices), h ~= "" and h or nil, job.endpoint)
  end
  self:release(job, job.gone and 499 or 200)
end

--- The end of a job however it ends (answered, its client gone, timed out):
-- slots back to the free list (their KV cache is simply overwritten later),
-- its place under the key's concurrency limit back, one access log line.
function Server:release(job, status)
  if job.released then return end
  job.released = true
  if job.ident then self.gate:release(job.ident) end
  if status == 499 then job.end_reason = "client_gone" end
  self:access(job.access, status or 499, job)
  for _, seq in ipairs(job.seqs or {}) do
    seq.done = true
    local free = job.entry.free
    free[#free + 1] = seq.slot
  end
end

--- One token for every running sequence, and the prompt chunks riding along,
-- in one forward pass per model.
function Server:decode_step()
  local list = self.decoding
  if #list == 0 and #self.riding == 0 then return end
  self.decoding = {}
  local by_model = {}
  for _, seq in ipairs(list) do
    local job = seq.job
    if job.gone or not C.lm_http_alive(self.http, job.req_id) then
      if not job.released then
        self.metrics.disconnects = self.metrics.disconnects + 1
        self:release(job, 499)
      end
    elseif not seq.done then
      local e = job.entry
      by_model[e] = by_model[e] or { sessions = {}, tokens = {}, seqs = {} }
      local b = by_model[e]
      b.sessions[#b.sessions + 1] = seq.slot.session
      b.tokens[#b.tokens + 1] = seq.next
      b.seqs[#b.seqs + 1] = seq
    end
  end
  -- a prompt chunk's entries come last, adjacent, as eval_batch wants them
  for _, r in ipairs(self.riding) do
    local e = r.job.entry
    by_model[e] = by_model[e] or { sessions = {}, tokens = {}, seqs = {} }
    local b = by_model[e]
    local s, buf, at = r.job.seqs[1].slot.session, r.job.prompt_buf, r.job.prefilled
    for i = 0, r.n - 1 do
      b.sessions[#b.sessions + 1] = s
      b.tokens[#b.tokens + 1] = buf[at + i]
    end
  end
  for e, b in pairs(by_model) do
    model_mod.eval_batch(b.sessions, b.tokens, e.sessions_buf, e.tokens_buf)
    if #b.seqs > 0 then self.metrics:decoded(now(), #b.seqs) end
    -- the step's draws in one call on the model's threads (chains with Lua
    -- links, if a pipeline made any, one by one)
    local chains, sess, idx = {}, {}, {}
    for i, seq in ipairs(b.seqs) do
      if not seq.sampler.has_lua then
        chains[#chains + 1], sess[#sess + 1], idx[#idx + 1] = seq.sampler, seq.slot.session, i
      end
    end
    local drawn = {}
    if #chains > 0 then
      lumen.sampler.sample_sessions(chains, sess, e.drawn_buf, e.samplers_buf, e.sessions_buf)
      for k, i in ipairs(idx) do drawn[i] = e.drawn_buf[k - 1] end
    end
    for i, seq in ipairs(b.seqs) do self:next_token(seq, drawn[i]) end
  end
  local riding = self.riding
  self.riding = {}
  for _, r in ipairs(riding) do self:prompt_evaluated(r.job, r.n) end
end

function Server:kv_used()
  local used = 0
  for _, e in pairs(self.models) do
    for _, slot in ipairs(e.slots) do
      local busy = true
      for _, f in ipairs(e.free) do if f == slot then busy = false break end end
      if busy then used = used + slot.session:pos() end
    end
  end
  return used
end

function Server:run()
  local req = ffi.new("lm_http_request")
  local t_last_log = now()
  while true do
    if C.lm_signal_term() and not self.draining then
      self.draining = true
      self:log("shutting down: finishing %d running and %d queued requests", #self.decoding + #self.prefilling, #self.queue)
    end
    local busy = #self.decoding > 0 or #self.prefilling > 0 or #self.queue > 0
    if self.draining and not busy then break end
    -- take every request that arrived; wait only when there is nothing to compute
    local got = C.lm_http_next(self.http, req, busy and 0 or 100)
    local taken = 0
    while got == 1 do
      self:handle(req)
      taken = taken + 1
      if taken >= 64 then break end
      got = C.lm_http_next(self.http, req, 0)
    end
    if got < 0 then error("http: " .. util.last_error(), 0) end
    self:admit()
    self:prefill_step(#self.decoding)
    self:decode_step()
    if now() - t_last_log > 60 and busy then
      t_last_log = now()
      self:log("%d streams, %d queued, %.1f tok/s", #self.decoding, #self.queue, self.metrics:decode_rate(now()))
    end
  end
end

function M.run(o)
  local cfg = merge_config(o.config, o)
  math.randomseed(os.time() + math.floor(now() * 1000) % 100000)
  local self = setmetatable({ cfg = cfg, queue = {}, prefilling = {}, decoding = {}, riding = {},
                              metrics = metrics_mod.new(), started = os.time(),
                              gate = limits_mod.new(gather_keys(cfg, os.getenv("LUMEN_API_KEYS")), cfg.limits) }, Server)
  self:load_models()
  local mt = self.metrics
  mt:gauge("lumen_queue_depth", "Requests waiting for a slot.", function() return #self.queue end)
  mt:gauge("lumen_slots_busy", "Slots generating or prefilling.", function() return self:slots_busy() end)
  mt:gauge("lumen_slots_total", "Slots, all models.", function() return cfg.slots * #self.model_ids end)
  mt:gauge("lumen_kv_cache_used_tokens", "Tokens held in the KV caches of busy slots.", function() return self:kv_used() end)
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
M._whole_pieces = whole_pieces
return M
