--- The continuous-batching scheduler: requests in, text out through sinks.
-- It knows nothing of HTTP or files: `lumen serve` (pipelines/serve.lua) gives it
-- HTTP sinks, `lumen batch` (pipelines/batch.lua) a journal sink.
--
--   local scheduler = require "lumen.scheduler"
--   local sched = scheduler.new{ slots = 8, prefill_chunk = 256, observer = metrics }
--   local entry = sched:add_model("smollm2", model, 2048)
--   local req = scheduler.prepare(entry, openai.chat_request(body, entry.sampling))
--   sched:submit(req, sink)
--   while not sched:idle() do sched:step() end
--
-- A request (scheduler.prepare fills the first three from an openai.lua job):
--   entry (from add_model), prompt_buf (int32 cdata), prompt_tokens (count),
--   kind ("chat" | "completion": a completion's prompt joins the penalties'
--   history, as in `lumen generate`), sampling (settings for
--   lumen.sampler.from_config), logit_bias, stop (strings), n (choices),
--   logprobs, top_logprobs, max_tokens, priority (higher first; default 0),
--   arrived (default now), deadline (absolute time after which a choice ends
--   with "length"), queue_deadline (absolute time after which a request still
--   waiting for slots is cancelled), collect (keep each choice's text for
--   scheduler.choices(job)), segments (a prompt with images: lumen.vision.prompt's
--   token runs and image-row runs covering prompt_buf; prepare makes them from a
--   chat job's image_parts). submit returns the request itself as the job; the
--   scheduler adds seqs, prefilled, cached_tokens, ttft, completion_tokens.
--
-- A sink is how a job's results leave (methods called with the sink as self):
--   alive()                    false: the consumer is gone; the job is cancelled
--   started(job)               the prompt is evaluated; tokens follow
--   piece(seq, text, finish, logprob)
--                              once per generated token of choice seq.index:
--                              the text it made final (UTF-8, maybe ""), the
--                              finish reason on the choice's last token, its
--                              logprob entry when asked; return false when the
--                              consumer is gone
--   finished(job)              every choice has ended; the slots are free
--   cancelled(job, reason)     ended early: "gone" (alive() or a write said so)
--                              or "queue_timeout"; the slots are free
-- An observer (optional; lumen.metrics is one) hears prompt_evaluated(n),
-- prompt_cached(n), decoded(now, n), observe_ttft(seconds), disconnected().
local ffi = require "ffi"
local model_mod = require "lumen.model"
local sampler_mod = require "lumen.sampler"
local openai = require "lumen.openai"
local util = require "lumen.util"
local now = require("lumen.chat").now

local M = {}
local Scheduler = {}
Scheduler.__index = Scheduler

local function noop() end
local NO_OBSERVER = { prompt_evaluated = noop, prompt_cached = noop, decoded = noop,
                      observe_ttft = noop, disconnected = noop }

-- While live requests (priority >= 0) are about, background sequences
-- (priority < 0) advance at most this many per step, in turns: a quarter of the
-- slots beside live sequences, an eighth of that in a step of background work
-- alone. A short step is a short wait for a live prompt that arrives during it
-- (its first token comes after the step in flight and its own evaluation; see
-- prefill_step); the background goes on at a fraction of its speed meanwhile.
local function background_cap(slots) return math.max(4, math.ceil(slots / 4)) end
local function background_alone_cap(slots) return math.max(1, math.ceil(slots / 32)) end
-- ... "about": submitted or decoding within the last LIVE_WINDOW seconds.
local LIVE_WINDOW = 2.0

--- opts: slots (sessions per model), prefill_chunk (prompt tokens per pass,
-- default 256), observer, reserve (slots that requests of priority < 0 leave
-- free for the others; default 0).
function M.new(opts)
  util.check_type("scheduler.new", "opts", opts, "table")
  util.check_int("scheduler.new", "slots", opts.slots, 1, 4096)
  local chunk = opts.prefill_chunk or 256
  util.check_int("scheduler.new", "prefill_chunk", chunk, 2, 2 ^ 20)
  local reserve = opts.reserve or 0
  util.check_int("scheduler.new", "reserve", reserve, 0, opts.slots - 1)
  return setmetatable({ slots = opts.slots, prefill_chunk = chunk, observer = opts.observer or NO_OBSERVER,
                        reserve = reserve, background_cap = background_cap(opts.slots),
                        background_alone_cap = background_alone_cap(opts.slots), live_until = -math.huge,
                        models = {}, queue = {}, prefilling = {}, decoding = {}, riding = {} }, Scheduler)
end

--- Makes a model's slots (each a session of ctx tokens); returns its entry
-- {id, model, info, ctx, slots, free, sampling}.
function Scheduler:add_model(id, model, ctx)
  util.check_type("add_model", "id", id, "string")
  if not model_mod.is_model(model) then error("add_model: model is not a lumen model", 2) end
  local info = model:info()
  ctx = math.min(ctx, info.n_ctx_train)
  local cap = self.slots + self.prefill_chunk + 16
  local entry = { id = id, model = model, info = info, ctx = ctx, slots = {}, free = {},
                  sampling = model.entry and model.entry.sampling or {},
                  -- reused by every batched step (eval_batch's cdata arrays):
                  -- a token per slot plus the prompt tokens riding along
                  sessions_buf = ffi.new("lm_session*[?]", cap), tokens_buf = ffi.new("int32_t[?]", cap),
                  -- and for the step's draws (lumen.sampler.sample_sessions)
                  samplers_buf = ffi.new("lm_sampler*[?]", self.slots),
                  drawn_buf = ffi.new("int32_t[?]", self.slots) }
  for s = 1, self.slots do
    local slot = { index = s, session = model:session{ ctx = ctx, batch = self.prefill_chunk } }
    entry.slots[s] = slot
    entry.free[#entry.free + 1] = slot
  end
  self.models[id] = entry
  return entry
end

--- Tokenizes a validated openai.lua job for a model entry and checks that it
-- fits (raises openai ApiErrors, which both servers and batch files report).
-- Returns the job as a request for submit (prompt_buf, prompt_tokens,
-- max_tokens set).
function M.prepare(entry, job)
  local fail = openai.fail
  local model = entry.model
  local buf, n
  if job.kind == "chat" then
    local okr, text = pcall(require("lumen.chat").render, model, job.messages, true, job.template_vars)
    if not okr then fail(400, "the chat template refused the messages: " .. tostring(text), "messages", "invalid_value") end
    if job.image_parts then
      -- the images' rows go where openai.lua left a marker in the text
      local okp, b, k, segs = pcall(require("lumen.vision").prompt, model, text, openai.IMAGE_MARKER, job.image_parts)
      if not okp then fail(400, tostring(b), "messages", "invalid_value") end
      buf, n, job.segments = b, k, segs
    else
      buf, n = model:_encode(text, false, true)
    end
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
  job.entry, job.prompt_buf, job.prompt_tokens = entry, buf, n
  job.max_tokens = job.max_tokens or (entry.ctx - n)
  return job
end

--- Queues a request; it runs when its model has n free slots, higher
-- priority first, then in order of submission.
function Scheduler:submit(req, sink)
  util.check_type("submit", "request", req, "table")
  util.check_type("submit", "sink", sink, "table")
  if not req.entry or self.models[req.entry.id] ~= req.entry then error("submit: request.entry is not a model of this scheduler", 2) end
  if type(req.prompt_buf) ~= "cdata" or type(req.prompt_tokens) ~= "number" or req.prompt_tokens < 1 then
    error("submit: request needs prompt_buf (int32 cdata) and prompt_tokens >= 1", 2)
  end
  req.n = req.n or 1
  if req.n > #req.entry.slots then error("submit: n is " .. req.n .. " but the model has " .. #req.entry.slots .. " slots", 2) end
  req.sink, req.priority = sink, req.priority or 0
  req.arrived = req.arrived or now()
  if req.priority >= 0 then self.live_until = req.arrived + LIVE_WINDOW end
  req.max_tokens = req.max_tokens or (req.entry.ctx - req.prompt_tokens)
  req.stop, req.sampling = req.stop or {}, req.sampling or {}
  local q = self.queue
  local at = #q + 1
  while at > 1 and q[at - 1].priority < req.priority do at = at - 1 end
  table.insert(q, at, req)
  return req
end

--- Nothing queued, prefilling or decoding.
function Scheduler:idle()
  return #self.queue == 0 and #self.prefilling == 0 and #self.decoding == 0
end

--- Running sequences, prompts being evaluated, queued requests.
function Scheduler:counts() return #self.decoding, #self.prefilling, #self.queue end

--- Choices waiting for slots of a model that a request of this priority
-- would wait behind (those of the same or a higher priority; all without one).
function Scheduler:waiting(entry, priority)
  local w = 0
  for _, q in ipairs(self.queue) do
    if q.entry == entry and (priority == nil or q.priority >= priority) then w = w + q.n end
  end
  return w
end

--- Slots generating or prefilling, all models.
function Scheduler:slots_busy()
  local b = 0
  for _, e in pairs(self.models) do b = b + #e.slots - #e.free end
  return b
end

--- Tokens held in the KV caches of busy slots.
function Scheduler:kv_used()
  local used = 0
  for _, e in pairs(self.models) do
    local free = {}
    for _, f in ipairs(e.free) do free[f] = true end
    for _, slot in ipairs(e.slots) do
      if not free[slot] then used = used + slot.session:pos() end
    end
  end
  return used
end

--- One turn: queued requests get free slots, prompts are evaluated (alone
-- when nothing runs, else riding along), and every running sequence advances
-- by one token in one batched forward pass per model.
function Scheduler:step()
  self:admit()
  self:prefill_step(#self.decoding)
  self:decode_step()
end

--- The end of a job however it ends: its slots go back to the free list (their
-- KV cache is simply overwritten later), then the sink hears of it.
function Scheduler:release(job, how, reason)
  if job.released then return end
  job.released = true
  for _, seq in ipairs(job.seqs or {}) do
    seq.done = true
    local free = job.entry.free
    free[#free + 1] = seq.slot
  end
  if how == "finished" then job.sink:finished(job) else job.sink:cancelled(job, reason) end
end

local function cancel_gone(self, job)
  if job.released then return end
  self.observer:disconnected()
  self:release(job, "cancelled", "gone")
end

--- How many of a prompt's first tokens a free slot's KV cache already holds
-- (its last request left them there). Only on weights where a token's result
-- does not depend on how its prompt was cut or whether it was generated
-- (info.panels): there the continuation is bit for bit what evaluating the
-- whole prompt gives (in the server's batches, which never take AMX's tiles:
-- info.amx_prompt is about one session's own prompts).
-- An image's positions are reused whole and only for the very same rows: their
-- history ids (lm_embd_ids) are a 30-bit hash of the rows, so the slot also
-- keeps each image run's sha256 (image_keys, by position) and a run whose key
-- differs ends the match.
local NONE = {}
local function cached_prefix(entry, slot, job)
  if not entry.info.panels then return 0 end
  local k = slot.session:common_prefix(job.prompt_buf, job.prompt_tokens)
  for _, seg in ipairs(job.segments or NONE) do
    if seg.at >= k then break end
    if seg.rows and (seg.at + seg.n > k or (slot.image_keys or NONE)[seg.at] ~= seg.key) then return seg.at end
  end
  return k
end

-- A slot's image keys past its first n positions are stale.
local function forget_images(slot, n)
  for at in pairs(slot.image_keys or NONE) do
    if at >= n then slot.image_keys[at] = nil end
  end
end

--- The free slot whose cache holds the longest start of the prompt (every
-- chat request of a model starts with the same template and system prompt),
-- taken off the free list, and how many tokens it holds.
local function take_slot(entry, job)
  local best, best_k = #entry.free, -1
  for i = #entry.free, 1, -1 do
    local k = cached_prefix(entry, entry.free[i], job)
    if k > best_k then best, best_k = i, k end
  end
  return table.remove(entry.free, best), math.max(best_k, 0)
end

--- Gives queued jobs free slots, in queue order (a job whose n does not fit
-- yet lets smaller ones behind it go).
function Scheduler:admit()
  local i = 1
  while i <= #self.queue do
    local job = self.queue[i]
    local entry = job.entry
    if not job.sink:alive() then
      table.remove(self.queue, i)
      cancel_gone(self, job)
    elseif job.queue_deadline and now() > job.queue_deadline then
      table.remove(self.queue, i)
      self:release(job, "cancelled", "queue_timeout")
    elseif #entry.free >= job.n + ((job.priority or 0) < 0 and self.reserve or 0) then
      -- background work (priority < 0: a server's batches) leaves `reserve` slots free,
      -- so an interactive request finds a slot at once instead of waiting for one to end
      table.remove(self.queue, i)
      job.seqs = {}
      -- the first choice evaluates the prompt, in the slot that holds most of
      -- it; the others fork from it (prompt_evaluated), so any free slot does
      local first, cached = take_slot(entry, job)
      for c = 1, job.n do
        local slot = c == 1 and first or table.remove(entry.free)
        slot.session:rewind(c == 1 and cached or 0)
        forget_images(slot, c == 1 and cached or 0)
        job.seqs[c] = { job = job, index = c - 1, slot = slot, n_gen = 0, parts = {}, logprobs = {},
                        text = model_mod.text_stream(entry.model, job.stop) }
      end
      job.prefilled, job.cached_tokens = cached, cached
      self.observer:prompt_cached(cached)
      self.prefilling[#self.prefilling + 1] = job
    else
      i = i + 1
    end
  end
end

--- A choice's sampler: the request's settings; n > 1 with a seed gives each
-- choice its own stream of draws, reproducibly.
local function sampler_for(job, c)
  local s = sampler_mod.merge(job.sampling, { logit_bias = job.logit_bias })
  if s.seed and c > 1 then s.seed = (s.seed + 7919 * (c - 1)) % 2 ^ 53 end
  return sampler_mod.from_config(s)
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
M.whole_pieces = whole_pieces

-- The run of a job's prompt that starts at job.prefilled: its length, and the
-- segment when it is an image's rows (evaluated whole: its history ids are
-- those of all its rows together). A prompt without images is one run.
local function next_run(job)
  if not job.segments then return job.prompt_tokens - job.prefilled end
  for _, seg in ipairs(job.segments) do
    if seg.at + seg.n > job.prefilled then
      return seg.at + seg.n - job.prefilled, seg.rows and seg or nil
    end
  end
end

-- n positions of a job's prompt into its first slot's session, alone.
local function eval_piece(job, n, seg)
  local slot = job.seqs[1].slot
  if seg then
    slot.session:eval_embd(seg.rows:data() + seg.from * seg.rows:dim(2), seg.n)
    slot.image_keys = slot.image_keys or {}
    slot.image_keys[seg.at] = seg.key
  else
    slot.session:eval_raw(job.prompt_buf + job.prefilled, n)
  end
end

--- Prompt tokens for this turn. With no stream running, every admitted prompt
-- is evaluated at once, each on its own, as `lumen generate` does (the fastest
-- first token). With streams running, up to prefill_chunk prompt tokens ride
-- along in the next decode step's forward pass (see decode_step): the weights
-- are read once for both, and a long prompt, spread over several steps, never
-- stalls the running streams. That takes the integer tile kernels for the
-- decode tokens (model info `tiled`); on other weights (e.g. the K-quants
-- without VNNI) a riding prompt token costs more than one through the GEMM, so
-- there a prompt goes alone, in pieces of prefill_chunk, between the steps.
-- An image's rows never ride (the batched pass takes token ids): they go
-- alone before the step, whole runs up to prefill_chunk rows a turn.
function Scheduler:prefill_step(running)
  self.riding = {}
  if running == 0 then
    while self.prefilling[1] do
      local job = self.prefilling[1]
      if self:prompt_gone(job) then
        table.remove(self.prefilling, 1)
      else
        self:prefill_alone(job)
      end
    end
    return
  end
  -- live requests jump the queue: while only background work (priority < 0,
  -- a server's batches) decodes, a live prompt is evaluated at once, alone,
  -- and its first token comes before the background's next step
  if self:background_only() then
    local i = 1
    while self.prefilling[i] do
      local job = self.prefilling[i]
      if job.priority < 0 then
        i = i + 1
      elseif self:prompt_gone(job) then
        table.remove(self.prefilling, i)
      else
        self:prefill_alone(job)
      end
    end
  end
  local chunk = self.prefill_chunk
  local ride_budget, alone_budget = math.max(16, chunk - running), chunk
  local i = 1
  while self.prefilling[i] do
    local job = self.prefilling[i]
    if self:prompt_gone(job) then
      table.remove(self.prefilling, i)
    elseif job.entry.info.tiled then
      if ride_budget <= 0 then break end
      local run, seg = next_run(job)
      while seg and alone_budget > 0 and job.prefilled < job.prompt_tokens do
        eval_piece(job, run, seg)
        alone_budget = alone_budget - run
        self:prompt_evaluated(job, run)
        if job.prefilled < job.prompt_tokens then run, seg = next_run(job) end
      end
      if job.prefilled >= job.prompt_tokens then
        -- (a prompt that ends with image rows) it has left the list
      elseif seg then
        i = i + 1 -- the rest of its image next turn
      else
        local n = whole_pieces(math.min(ride_budget, run), run)
        self.riding[#self.riding + 1] = { job = job, n = n }
        ride_budget = ride_budget - n
        i = i + 1
      end
    else
      -- cut only at multiples of prefill_chunk (the pieces `lumen generate`
      -- cuts a prompt into): one that does not fit this turn waits for the next
      local run, seg = next_run(job)
      local n = seg and run or whole_pieces(math.min(chunk, run), run)
      if n > alone_budget + 1 and alone_budget < chunk then break end
      eval_piece(job, n, seg)
      alone_budget = alone_budget - n
      if job.prefilled + n < job.prompt_tokens then i = i + 1 end -- a finished prompt leaves the list
      self:prompt_evaluated(job, n)
    end
  end
end

--- (internal) The rest of a job's prompt, evaluated now on its own (as
-- `lumen generate` does; a prompt with images run by run); the job leaves the
-- prefilling list.
function Scheduler:prefill_alone(job)
  repeat
    local n, seg = next_run(job)
    eval_piece(job, n, seg)
    self:prompt_evaluated(job, n)
  until job.prefilled >= job.prompt_tokens
end

--- (internal) Whether every sequence decoding now is background work.
function Scheduler:background_only()
  for _, seq in ipairs(self.decoding) do
    if seq.job.priority >= 0 then return false end
  end
  return #self.decoding > 0
end

--- A prompt whose consumer left: its slots go back at once.
function Scheduler:prompt_gone(job)
  if job.sink:alive() then return false end
  cancel_gone(self, job)
  return true
end

--- n more tokens of a job's prompt are in its session; when the whole prompt
-- is, each choice gets its first token.
function Scheduler:prompt_evaluated(job, n)
  job.prefilled = job.prefilled + n
  self.observer:prompt_evaluated(n)
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
      seq.slot.image_keys = {}
      for at, key in pairs(job.seqs[1].slot.image_keys or NONE) do seq.slot.image_keys[at] = key end
    end
    seq.sampler = sampler_for(job, c)
    if job.kind == "completion" then
      -- as `lumen generate`: the prompt is part of the penalties' history
      for i = 0, job.prompt_tokens - 1 do seq.sampler:accept(job.prompt_buf[i]) end
    end
  end
  if job.sink:started(job) == false then job.gone = true end
  job.running = #job.seqs
  for _, seq in ipairs(job.seqs) do self:next_token(seq) end
end

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

--- Samples the next token of a sequence from its session's logits (or takes
-- the one sampled with the step's others) and moves it on: text out, stop
-- checks, or queued for the next batched step.
function Scheduler:next_token(seq, tok)
  local job = seq.job
  local s = seq.slot.session
  local model = job.entry.model
  tok = tok or seq.sampler:sample(s)
  seq.n_gen = seq.n_gen + 1
  local t = now()
  if seq.n_gen == 1 and seq.index == 0 then
    job.ttft = t - job.arrived
    self.observer:observe_ttft(job.ttft)
  end
  local lp
  if job.logprobs then
    local logprob, top = logprobs_of(model, s, tok, job.top_logprobs)
    lp = openai.logprob_entry(model:piece(tok), logprob, top)
  end
  local text, ended = model_mod.token_step(model, seq.sampler, seq.text, tok)
  if ended then return self:finish_seq(seq, "stop", lp) end
  -- max_tokens, a full context or the request's time limit: "length"
  if seq.n_gen >= job.max_tokens or s:pos() >= s:ctx() or (job.deadline and t > job.deadline) then
    seq.pending_text = text
    return self:finish_seq(seq, "length", lp)
  end
  self:emit(seq, text, nil, lp)
  seq.next = tok
  self.decoding[#self.decoding + 1] = seq
end

--- (internal) Text of a choice to its job's sink, UTF-8 only.
function Scheduler:emit(seq, text, finish, lp)
  local job = seq.job
  -- JSON carries UTF-8 only: a stray byte token or a character cut short by
  -- the end of generation becomes U+FFFD (text_stream never splits a whole one)
  text = util.utf8_sanitize(text)
  if lp then seq.logprobs[#seq.logprobs + 1] = lp end
  if job.collect and text ~= "" then seq.parts[#seq.parts + 1] = text end
  if job.sink:piece(seq, text, finish, lp) == false then job.gone = true end
end

--- (internal) A choice ends with a finish reason; the job ends with its last.
function Scheduler:finish_seq(seq, reason, lp)
  local job = seq.job
  local rest = (seq.pending_text or "") .. seq.text:flush()
  seq.finish = reason
  self:emit(seq, rest, reason, lp)
  job.running = job.running - 1
  job.completion_tokens = (job.completion_tokens or 0) + seq.n_gen
  if job.running == 0 then self:release(job, "finished") end
end

--- A finished collecting job's choices, as openai.response takes them.
function M.choices(job)
  local choices = {}
  for i, seq in ipairs(job.seqs) do
    choices[i] = { text = table.concat(seq.parts), finish = seq.finish, n_gen = seq.n_gen, logprobs = seq.logprobs }
  end
  return choices
end

--- One token for every running sequence, and the prompt chunks riding along,
-- in one forward pass per model.
function Scheduler:decode_step()
  local list = self.decoding
  if #list == 0 and #self.riding == 0 then return end
  self.decoding = {}
  local t = now()
  -- background sequences past the cap wait for the next step, first in line then
  local bg_left = math.huge
  if t < self.live_until then
    bg_left = #self.riding > 0 and self.background_cap or self.background_alone_cap
    for _, seq in ipairs(list) do
      if seq.job.priority >= 0 then bg_left = self.background_cap break end
    end
  end
  local by_model = {}
  for _, seq in ipairs(list) do
    local job = seq.job
    if job.priority >= 0 then
      self.live_until = t + LIVE_WINDOW
    elseif not seq.done then
      bg_left = bg_left - 1
    end
    if job.gone or not job.sink:alive() then
      cancel_gone(self, job)
    elseif bg_left < 0 and job.priority < 0 and not seq.done then
      self.decoding[#self.decoding + 1] = seq
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
    if #b.seqs > 0 then self.observer:decoded(now(), #b.seqs) end
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
      sampler_mod.sample_sessions(chains, sess, e.drawn_buf, e.samplers_buf, e.sessions_buf)
      for k, i in ipairs(idx) do drawn[i] = e.drawn_buf[k - 1] end
    end
    for i, seq in ipairs(b.seqs) do self:next_token(seq, drawn[i]) end
  end
  local riding = self.riding
  self.riding = {}
  for _, r in ipairs(riding) do
    if not r.job.released then self:prompt_evaluated(r.job, r.n) end
  end
end

M.Scheduler = Scheduler
return M
