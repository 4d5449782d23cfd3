--- Models and sessions.
--   local model = require("lumen.model").load("smollm2")    -- alias or path
--   local s = model:session{ctx = 2048}
--   local logits = s:eval(model:tokenize("Hello"))           -- zero-copy view
--   for piece in s:generate{prompt = "...", max_tokens = 64} do io.write(piece) end
-- Handles are freed by the garbage collector (ffi.gc); a session keeps its model
-- alive and a logits or weight tensor keeps its session or file mapping alive, in C.
local ffi = require "ffi"
local C = require "lumen.ffi"
local util = require "lumen.util"

local M = {}
local Model = {}
Model.__index = Model
local Session = {}
Session.__index = Session

local function is_model(x) return getmetatable(x) == Model end
local function is_session(x) return getmetatable(x) == Session end
M.is_model, M.is_session = is_model, is_session

local KV_TYPES = { f16 = C.LM_F16, q8_0 = C.LM_Q8_0 }

-- the dtype id of a KV cache type name (nil: 0, the default)
local function kv_type_id(what, name)
  if name == nil then return 0 end
  local id = KV_TYPES[name]
  if not id then error(what .. ": kv_type must be \"f16\" or \"q8_0\", got " .. tostring(name), 3) end
  return id
end

--- Loads a model by path or registry alias (nil: the default model).
-- opts: threads (compute threads; default all cores), kv_type (its sessions'
-- default KV cache type: "f16", the default, or "q8_0").
function M.load(name, opts)
  util.check_type("model.load", "name", name, "string", true)
  util.check_type("model.load", "opts", opts, "table", true)
  opts = opts or {}
  local resolved = require("lumen.config").resolve(name)
  local params = ffi.new("lm_model_params", { n_threads = opts.threads or 0,
                                              kv_type = kv_type_id("model.load", opts.kv_type) })
  local h = C.lm_model_load(resolved.path, params)
  if h == nil then util.c_error() end
  ffi.gc(h, C.lm_model_free)
  local info = ffi.new("lm_model_info")
  C.lm_model_get_info(h, info)
  local self = setmetatable({ h = h, path = resolved.path, alias = resolved.alias,
                              entry = resolved.entry, n_vocab = info.n_vocab,
                              _piece = ffi.new("char[256]") }, Model)
  return self
end

local function str(p) return p ~= nil and ffi.string(p) or nil end

--- Returns when the layer matrices are in their final layout (decode's
-- interleaved one, which a thread of the model's writes after load where the
-- CPU has its kernels; results are the same bits before and after): call it
-- before timing decode.
function Model:wait_layout()
  C.lm_model_wait_layout(self.h)
  return self
end

--- A table describing the model.
function Model:info()
  local i = ffi.new("lm_model_info")
  C.lm_model_get_info(self.h, i)
  return {
    arch = str(i.arch), name = str(i.name), path = str(i.path), alias = self.alias,
    chat_template = str(i.chat_template), n_params = tonumber(i.n_params),
    file_size = tonumber(i.file_size), n_vocab = i.n_vocab, n_ctx_train = i.n_ctx_train,
    n_embd = i.n_embd, n_layer = i.n_layer, n_head = i.n_head, n_head_kv = i.n_head_kv,
    head_dim = i.head_dim, n_ff = i.n_ff, tiled = i.tiled, panels = i.panels, amx_prompt = i.amx_prompt,
    -- matrices (the layers', then the output) in decode's interleaved layout so far, and still to do (a thread of the model's)
    interleaved = i.interleaved, interleaving = i.interleaving,
    family = str(i.family), encoder = i.encoder,
    -- encoders: the longest input in tokens ([CLS] and [SEP] included), pooling, normalization
    max_tokens = i.encoder and i.max_tokens or nil,
    pooling = i.encoder and (i.pooling == C.LM_POOLING_CLS and "cls" or "mean") or nil,
    normalize = i.encoder and i.normalize or nil,
    bos_token = i.bos_token >= 0 and i.bos_token or nil,
    eos_token = i.eos_token >= 0 and i.eos_token or nil,
    bos_text = i.bos_token >= 0 and self:piece(i.bos_token, true) or nil,
    eos_text = i.eos_token >= 0 and self:piece(i.eos_token, true) or nil,
  }
end

--- Token ids (int32 cdata) and count for text; internal fast path.
function Model:_encode(text, add_special, parse_special)
  local cap = #text + 16
  local buf = ffi.new("int32_t[?]", cap)
  local n = C.lm_tokenize(self.h, text, #text, buf, cap, add_special, parse_special)
  if n < 0 then
    if n == -9223372036854775807LL - 1 then util.c_error("tokenize", 2) end
    cap = tonumber(-n)
    buf = ffi.new("int32_t[?]", cap)
    n = C.lm_tokenize(self.h, text, #text, buf, cap, add_special, parse_special)
    if n < 0 then util.c_error("tokenize", 2) end
  end
  return buf, tonumber(n)
end

--- Token ids of text as a Lua array (0-based ids, as the model numbers them).
-- opts.add_special: add BOS/EOS as the model says (default false);
-- opts.parse_special: treat "<|im_start|>" etc. as special tokens (default true).
function Model:tokenize(text, opts)
  util.check_type("tokenize", "text", text, "string")
  opts = opts or {}
  local buf, n = self:_encode(text, opts.add_special == true, opts.parse_special ~= false)
  local out = {}
  for i = 0, n - 1 do out[i + 1] = buf[i] end
  return out
end

--- Untrusted text (a message's content) made safe to put into a prompt that is
-- tokenized with parse_special: its control-token look-alikes become plain text
-- (lm_escape_special). Plain text without them comes back unchanged.
function Model:escape_special(text)
  util.check_type("escape_special", "text", text, "string")
  local cap = #text + 8
  local buf = ffi.new("char[?]", cap)
  local n = C.lm_escape_special(self.h, text, #text, buf, cap)
  if n < 0 then
    if n == -9223372036854775807LL - 1 then util.c_error("escape_special") end
    cap = tonumber(-n)
    buf = ffi.new("char[?]", cap)
    n = C.lm_escape_special(self.h, text, #text, buf, cap)
  end
  return ffi.string(buf, tonumber(n))
end

--- The bytes of one token (render_special: show control tokens' text).
function Model:piece(token, render_special)
  util.check_type("piece", "token", token, "number")
  local n = C.lm_token_to_piece(self.h, token, self._piece, 256, render_special and true or false)
  if n == -2147483648 then util.c_error("piece") end
  if n < 0 then
    local buf = ffi.new("char[?]", -n)
    n = C.lm_token_to_piece(self.h, token, buf, -n, render_special and true or false)
    return ffi.string(buf, n)
  end
  return ffi.string(self._piece, n)
end

--- Text of a list of token ids.
function Model:detokenize(tokens, render_special)
  util.check_type("detokenize", "tokens", tokens, "table")
  local n = #tokens
  local ids = ffi.new("int32_t[?]", n > 0 and n or 1)
  for i = 1, n do ids[i - 1] = tokens[i] end
  local cap = n * 16 + 16
  local buf = ffi.new("char[?]", cap)
  local k = C.lm_detokenize(self.h, ids, n, buf, cap, render_special and true or false)
  if k == -9223372036854775807LL - 1 then util.c_error("detokenize") end
  if k < 0 then
    cap = tonumber(-k)
    buf = ffi.new("char[?]", cap)
    k = C.lm_detokenize(self.h, ids, n, buf, cap, render_special and true or false)
  end
  return ffi.string(buf, tonumber(k))
end

--- Whether token ends generation (eos, eot, <|im_end|>, <end_of_turn>, ...).
function Model:is_eog(token) return C.lm_token_is_eog(self.h, token) end

--- Id of the token whose text is exactly s, or nil.
function Model:token(s)
  local id = C.lm_token_lookup(self.h, s)
  return id >= 0 and id or nil
end

--- A tensor viewing a weight in place (it keeps the file mapped).
function Model:weight(name)
  local tensor = require "lumen.tensor"
  local t = C.lm_model_weight(self.h, name)
  if t == nil then util.c_error() end
  return tensor.own(t)
end

local POOLING = { mean = C.LM_POOLING_MEAN, cls = C.LM_POOLING_CLS }

local function embed_params(opts)
  local p = C.lm_embed_default_params()
  if opts.pooling ~= nil then
    p.pooling = POOLING[opts.pooling] or error("embed: pooling must be \"mean\" or \"cls\", got " .. tostring(opts.pooling), 3)
  end
  if opts.normalize ~= nil then p.normalize = opts.normalize and 1 or 0 end
  if opts.max_tokens ~= nil then util.check_int("embed", "opts.max_tokens", opts.max_tokens, 1, 2 ^ 30); p.max_tokens = opts.max_tokens end
  if opts.truncate ~= nil then p.truncate = opts.truncate and true or false end
  return p
end

--- Embeddings of an encoder model, all inputs in one call (one forward pass per
-- few thousand tokens). inputs: a list of strings, or of token-id lists (each
-- complete with [CLS] ... [SEP], e.g. from model:tokenize(text, {add_special = true})),
-- or one string. opts: pooling ("mean" | "cls"), normalize (bool), max_tokens,
-- truncate (default true: longer inputs are cut; false: an error naming the
-- input and the limit, model:info().max_tokens).
-- Returns an [n, dim] f32 tensor in C memory and, for strings, the token count
-- of each input after truncation (a Lua list, for usage accounting).
function Model:embed(inputs, opts)
  util.check_type("embed", "opts", opts, "table", true)
  if type(inputs) == "string" then inputs = { inputs } end
  util.check_type("embed", "inputs", inputs, "table")
  local params = embed_params(opts or {})
  local tensor = require "lumen.tensor"
  local n = #inputs
  local info = ffi.new("lm_model_info")
  C.lm_model_get_info(self.h, info)
  if not info.encoder then error("embed: " .. tostring(self.path) .. " is not an embedding model (" .. ffi.string(info.arch) .. ")", 2) end
  local out = tensor.new({ math.max(n, 1), info.n_embd })
  if n == 0 then return tensor.own(C.lm_tensor_slice(out, 0, 0, 0)), {} end
  if type(inputs[1]) == "string" then
    local texts, lens = ffi.new("const char*[?]", n), ffi.new("size_t[?]", n)
    local counts_c = ffi.new("int32_t[?]", n)
    for i = 1, n do
      local t = inputs[i]
      if type(t) ~= "string" then error("embed: inputs[" .. i .. "] is a " .. type(t) .. ", not a string", 2) end
      texts[i - 1], lens[i - 1] = t, #t
    end
    if C.lm_embed_texts(self.h, texts, lens, n, params, C.lm_tensor_data(out), counts_c) ~= 0 then util.c_error() end
    local counts = {}
    for i = 1, n do counts[i] = counts_c[i - 1] end
    return out, counts
  end
  local total = 0
  for i = 1, n do
    local t = inputs[i]
    if type(t) ~= "table" then error("embed: inputs[" .. i .. "] is a " .. type(t) .. ", not a string or a token list", 2) end
    total = total + #t
  end
  local toks, off = ffi.new("int32_t[?]", math.max(total, 1)), ffi.new("int64_t[?]", n + 1)
  local k = 0
  for i = 1, n do
    local t = inputs[i]
    for j = 1, #t do toks[k] = t[j]; k = k + 1 end
    off[i] = k
  end
  if C.lm_embed_tokens(self.h, toks, off, n, params, C.lm_tensor_data(out)) ~= 0 then util.c_error() end
  local counts = {}
  for i = 1, n do counts[i] = math.min(#inputs[i], params.max_tokens > 0 and params.max_tokens or info.max_tokens) end
  return out, counts
end

--- A new session. opts: ctx (context tokens), batch (tokens per forward pass),
-- kv_type ("f16" or "q8_0": half the KV memory; default: the model's, from
-- model.load's opts.kv_type, else "f16").
function Model:session(opts)
  util.check_type("session", "opts", opts, "table", true)
  opts = opts or {}
  local p = ffi.new("lm_session_params", { n_ctx = opts.ctx or 0, n_batch = opts.batch or 0,
                                           kv_type = kv_type_id("session", opts.kv_type) })
  local h = C.lm_session_new(self.h, p)
  if h == nil then util.c_error("session") end
  -- The collector sees a few bytes of cdata, not the KV cache behind it: advance
  -- it in proportion to what the session holds, so dropped sessions go promptly.
  local ctx = C.lm_session_n_ctx(h)
  collectgarbage("step", math.floor((ctx * 16 + self.n_vocab * 4) / 1024) + 1)
  return M._wrap_session(self, ffi.gc(h, C.lm_session_free))
end

function M._wrap_session(model, h)
  return setmetatable({ h = h, model = model, n_vocab = model.n_vocab, _one = ffi.new("int32_t[1]") }, Session)
end

local function check_open(self, what)
  if self.h == nil then error(what .. ": the session is closed", 3) end
end

--- Appends tokens (a Lua array of ids, or a single id) and runs the model.
-- Returns the logits after the last token: a tensor viewing the session's
-- buffer in place (valid until the next eval/rewind; it keeps the session alive).
function Session:eval(tokens)
  check_open(self, "eval")
  local buf, n
  if type(tokens) == "number" then
    self._one[0] = tokens
    buf, n = self._one, 1
  elseif type(tokens) == "table" then
    n = #tokens
    if n == 0 then error("eval: no tokens", 2) end
    buf = ffi.new("int32_t[?]", n)
    for i = 1, n do
      local t = tokens[i]
      if type(t) ~= "number" then error("eval: token " .. i .. " is a " .. type(t) .. ", not a number", 2) end
      buf[i - 1] = t
    end
  else
    error("eval: tokens must be a table of ids or an id, got " .. type(tokens), 2)
  end
  if C.lm_session_eval(self.h, buf, n) ~= 0 then util.c_error("eval") end
  return self:logits()
end

--- Continuous batching: advances several sessions of one model by one token
-- each in one forward pass (sessions[i] takes tokens[i]). Each session's logits
-- come out exactly as session:eval(tokens[i]) alone would leave them.
-- sessions_buf/tokens_buf: optional reusable cdata arrays (lm_session*[?], int32_t[?]).
function M.eval_batch(sessions, tokens, sessions_buf, tokens_buf)
  util.check_type("eval_batch", "sessions", sessions, "table")
  util.check_type("eval_batch", "tokens", tokens, "table")
  local n = #sessions
  if n == 0 then error("eval_batch: no sessions", 2) end
  if #tokens ~= n then error(string.format("eval_batch: %d sessions but %d tokens", n, #tokens), 2) end
  local sb = sessions_buf or ffi.new("lm_session*[?]", n)
  local tb = tokens_buf or ffi.new("int32_t[?]", n)
  for i = 1, n do
    local s, t = sessions[i], tokens[i]
    if not is_session(s) then error("eval_batch: sessions[" .. i .. "] is not a session", 2) end
    if s.h == nil then error("eval_batch: sessions[" .. i .. "] is closed", 2) end
    if type(t) ~= "number" then error("eval_batch: tokens[" .. i .. "] is a " .. type(t) .. ", not a number", 2) end
    sb[i - 1], tb[i - 1] = s.h, t
  end
  if C.lm_session_eval_batch(sb, tb, n) ~= 0 then util.c_error("eval_batch") end
end

--- Raw eval of an int32 cdata array (no per-token Lua work).
function Session:eval_raw(buf, n)
  check_open(self, "eval")
  if C.lm_session_eval(self.h, buf, n) ~= 0 then util.c_error("eval") end
end

--- Appends n rows of embeddings (a float* to rows[n][n_embd], e.g. an image's
-- rows from lumen.vision) in the place of tokens. Their history entries are
-- negative ids unique to the rows (lm_session_eval_embd), so prefix reuse
-- never matches across different images.
function Session:eval_embd(rows, n)
  check_open(self, "eval_embd")
  if C.lm_session_eval_embd(self.h, rows, n) ~= 0 then util.c_error("eval_embd") end
  return self:logits()
end

--- The logits tensor (zero-copy view; one object per session).
function Session:logits()
  check_open(self, "logits")
  if not self._logits then
    local t = C.lm_session_logits_tensor(self.h)
    if t == nil then util.c_error("logits") end
    self._logits = require("lumen.tensor").own(t)
  end
  return self._logits
end

--- Pointer to the n_vocab logits (float*), for samplers; valid until the next eval.
function Session:logits_ptr() check_open(self, "logits") return C.lm_session_logits(self.h) end

--- Tokens in the context.
function Session:pos() check_open(self, "pos") return C.lm_session_pos(self.h) end
--- The context size in tokens.
function Session:ctx() check_open(self, "ctx") return C.lm_session_n_ctx(self.h) end

--- The KV cache's element type: "f16" or "q8_0".
function Session:kv_type()
  check_open(self, "kv_type")
  return C.lm_session_kv_type(self.h) == C.LM_Q8_0 and "q8_0" or "f16"
end

--- The tokens in the context, as a Lua array.
function Session:tokens()
  check_open(self, "tokens")
  local p, n, out = C.lm_session_tokens(self.h), C.lm_session_pos(self.h), {}
  for i = 0, n - 1 do out[i + 1] = p[i] end
  return out
end

--- How many of the n tokens at buf (int32 cdata) the context already holds at
-- its start, at most n - 1: the last prompt token is always evaluated again,
-- for fresh logits. The one prefix rule of chat turns and server slots.
function Session:common_prefix(buf, n)
  check_open(self, "common_prefix")
  local have = math.min(C.lm_session_pos(self.h), n - 1)
  local toks = C.lm_session_tokens(self.h)
  local k = 0
  while k < have and toks[k] == buf[k] do k = k + 1 end
  return k
end

--- Keeps the first n tokens and forgets the rest. Re-evaluating then gives the
-- same logits as the first time.
function Session:rewind(n)
  check_open(self, "rewind")
  util.check_type("rewind", "n", n, "number")
  if C.lm_session_rewind(self.h, n) ~= 0 then util.c_error("rewind") end
end

--- An independent copy of this session's context.
function Session:fork()
  check_open(self, "fork")
  local h = C.lm_session_fork(self.h)
  if h == nil then util.c_error("fork") end
  return M._wrap_session(self.model, ffi.gc(h, C.lm_session_free))
end

--- Writes the context (tokens and KV cache) to a file.
function Session:save(path)
  check_open(self, "save")
  util.check_type("save", "path", path, "string")
  if C.lm_session_save(self.h, path) ~= 0 then util.c_error() end
end

--- Reads a context written by save (same model and context size).
function Session:load(path)
  check_open(self, "load")
  util.check_type("load", "path", path, "string")
  if C.lm_session_load(self.h, path) ~= 0 then util.c_error() end
end

--- Frees the session now (it is otherwise freed by the GC). Views stay valid.
function Session:close()
  if self.h ~= nil then
    C.lm_session_free(ffi.gc(self.h, nil))
    self.h = nil
  end
end

--- Streams a generation: an iterator of text pieces.
-- opts: prompt (string, tokenized with specials parsed) or tokens (ids),
-- sampler (a lumen.sampler chain; default: the model's sampling defaults),
-- max_tokens (default 256), stop (strings that end the text, not included),
-- on_token(id) callback. After the loop, the iterator's state is in opts.result:
-- {tokens = n, reason = "stop"|"length"|"eog"|"context", prompt_tokens = n}.
function Session:generate(opts)
  check_open(self, "generate")
  util.check_type("generate", "opts", opts, "table")
  local model = self.model
  local sampler = opts.sampler or require("lumen.sampler").for_model(model)
  local max_tokens = opts.max_tokens or 256
  util.check_int("generate", "max_tokens", max_tokens, 0, 1e9)
  local stops = opts.stop or {}
  if type(stops) == "string" then stops = { stops } end
  local result = { tokens = 0, prompt_tokens = 0 }
  opts.result = result

  if opts.prompt then
    util.check_type("generate", "prompt", opts.prompt, "string")
    local buf, n = model:_encode(opts.prompt, opts.add_special == true, opts.parse_special ~= false)
    if n == 0 then error("generate: the prompt is empty", 2) end
    if n + self:pos() > self:ctx() then
      error(string.format("generate: the prompt has %d tokens; with %d already in the context it exceeds the context of %d", n, self:pos(), self:ctx()), 2)
    end
    self:eval_raw(buf, n)
    for i = 0, n - 1 do sampler:accept(buf[i]) end
    result.prompt_tokens = n
  elseif opts.tokens then
    self:eval(opts.tokens)
    result.prompt_tokens = #opts.tokens
  elseif self:pos() == 0 then
    error("generate: give a prompt or tokens", 2)
  end

  local text = M.text_stream(model, stops)
  local done = false

  local function finish(reason)
    done = true
    result.reason = reason
    local out = text:flush()
    return out ~= "" and out or nil
  end

  return function()
    while not done do
      if result.tokens >= max_tokens then return finish("length") end
      local tok = sampler:sample(self)
      result.tokens = result.tokens + 1
      if opts.on_token then opts.on_token(tok) end
      local emit, ended = M.token_step(model, sampler, text, tok)
      if ended then return finish(ended) end
      local room = self:ctx() - self:pos()
      if result.tokens < max_tokens then
        if room <= 0 then return finish("context") end
        self._one[0] = tok
        self:eval_raw(self._one, 1)
      end
      if emit ~= "" then return emit end
    end
    return nil
  end
end

--- What every generated token goes through, here and in lumen.scheduler: an
-- end-of-generation token ends the text ("eog"); otherwise the sampler
-- remembers it and the text stream takes it, which may hit a stop string
-- ("stop"). Returns the text made final (maybe "") and nil, or "" and why it ended.
function M.token_step(model, sampler, text, tok)
  if model:is_eog(tok) then return "", "eog" end
  sampler:accept(tok)
  local emit, stopped = text:push(tok)
  if stopped then return "", "stop" end
  return emit, nil
end

--- Token ids -> text as it becomes final: holds back an incomplete UTF-8
-- character and anything that may still turn into one of the stop strings.
--   local ts = model_mod.text_stream(model, {"\n\n"})
--   local text, stopped = ts:push(tok)   -- text to emit now (maybe ""); stopped: a stop string was hit
--   local rest = ts:flush()              -- what is held back, at the end
local TextStream = {}
TextStream.__index = TextStream

--- Turns tokens into text as they come: whole UTF-8 characters only, and
-- nothing of a stop string (stops: strings). See TextStream:push / flush.
function M.text_stream(model, stops)
  local max_stop = 0
  for _, s in ipairs(stops or {}) do if #s > max_stop then max_stop = #s end end
  return setmetatable({ model = model, stops = stops or {}, pending = "" }, TextStream)
end

--- Adds a token; returns the text now final and whether a stop string ended it.
function TextStream:push(tok)
  local pending = self.pending .. self.model:piece(tok)
  -- a stop string ends the text before it
  for _, s in ipairs(self.stops) do
    local at = pending:find(s, 1, true)
    if at then
      self.pending = pending:sub(1, at - 1)
      return "", true
    end
  end
  -- emit what can no longer become a stop string or an incomplete character
  local keep = 0
  for _, s in ipairs(self.stops) do
    for k = math.min(#s - 1, #pending), 1, -1 do
      if pending:sub(-k) == s:sub(1, k) then
        if k > keep then keep = k end
        break
      end
    end
  end
  local emit = pending:sub(1, #pending - keep)
  local ok = util.utf8_complete_len(emit)
  self.pending = pending:sub(ok + 1)
  return emit:sub(1, ok), false
end

--- What is held back, at the end of generation.
function TextStream:flush()
  local out = self.pending
  self.pending = ""
  return out
end

M.Model, M.Session = Model, Session
return M
