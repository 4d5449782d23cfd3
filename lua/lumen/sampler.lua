--- Sampler chains: C links and Lua functions, applied in order.
--   local sampler = require "lumen.sampler"
--   local s = sampler.chain{
--     sampler.penalties{repeat_penalty = 1.1, last_n = 64},
--     sampler.top_k(40), sampler.top_p(0.95),
--     function(c, ctx) ... end,            -- a Lua link (see below)
--     sampler.temperature(0.8), sampler.dist(),
--     seed = 42,
--   }
--   local tok = s:sample(session)          -- or s:sample(logits_ptr, n_vocab)
--   s:accept(tok)
--
-- A Lua link is called once per token with (c, ctx): c is the lm_candidates
-- struct in C memory — c.n live candidates, c.ids[i] and c.logits[i] for
-- i = 0 .. c.n-1 (0-based), c.probs[i] when c.has_probs (call ctx.softmax() to
-- sort and fill them). It may change logits in place, lower c.n to drop the
-- tail, or return a token id to pick it. ctx.history (int32 pointer) and
-- ctx.n_history are the accepted tokens; ctx.session is the session sampled.
-- Chains without Lua links cost one C call per token.
--
-- Constrained output: put sampler.grammar(gbnf) or sampler.json_schema(schema)
-- before the cuts (top-k, top-p...: they then see the constrained distribution;
-- right before top-k it needs only the k best allowed tokens); the
-- link needs the model's tokens: {model = model} in its options or the chain's
-- (sampler.chain{..., model = model}). chain:status() is then "open",
-- "may_end", "complete" (stop: only an end token may come) or "failed".
local ffi = require "ffi"
local C = require "lumen.ffi"
local util = require "lumen.util"
local grammar = require "lumen.grammar"

local M = {}
local Chain = {}
Chain.__index = Chain

local function link(kind, args) return { kind = kind, args = args } end

--- A link: the best token (ties: the lower id).
function M.greedy() return link("greedy", {}) end
--- A link: a draw from the distribution the links before left.
function M.dist() return link("dist", {}) end
--- A link: logits divided by t (0: greedy).
function M.temperature(t) util.check_type("temperature", "t", t, "number") return link("temperature", { t }) end
--- A link: the k best tokens.
function M.top_k(k) util.check_type("top_k", "k", k, "number") return link("top_k", { k }) end
--- A link: the smallest set of best tokens whose probability reaches p.
function M.top_p(p, min_keep) util.check_type("top_p", "p", p, "number") return link("top_p", { p, min_keep or 1 }) end
--- A link: tokens at least p times as likely as the best.
function M.min_p(p, min_keep) util.check_type("min_p", "p", p, "number") return link("min_p", { p, min_keep or 1 }) end
--- A link: locally typical sampling (p: the mass kept).
function M.typical(p, min_keep) util.check_type("typical", "p", p, "number") return link("typical", { p, min_keep or 1 }) end
--- opts: repeat_penalty (1 = off), frequency, presence, last_n (-1: all history; default 64)
function M.penalties(opts)
  util.check_type("penalties", "opts", opts, "table")
  return link("penalties", { opts.last_n or 64, opts.repeat_penalty or 1.0, opts.frequency or 0, opts.presence or 0 })
end
--- bias: {[token_id] = added logit, ...}
function M.logit_bias(bias)
  util.check_type("logit_bias", "bias", bias, "table")
  return link("logit_bias", { bias })
end

--- A grammar link: GBNF text (llama.cpp's notation) or a compiled grammar
-- (lumen.grammar.compile). opts: model (else the chain's), root (start rule).
-- Raises the grammar's error ("grammar:LINE:COL: ...").
function M.grammar(gbnf, opts)
  opts = opts or {}
  util.check_type("sampler.grammar", "opts", opts, "table")
  local g = gbnf
  if type(gbnf) == "string" then
    local err
    g, err = grammar.compile(gbnf, opts.root)
    if not g then error(err, 2) end
  elseif type(gbnf) ~= "cdata" then
    error("sampler.grammar: expected GBNF text or a compiled grammar, got " .. type(gbnf), 2)
  end
  return link("grammar", { g, opts.model })
end

--- A grammar link from a JSON Schema (a Lua table; "json_object": any object).
-- opts as for sampler.grammar. Raises the converter's error for what it refuses.
function M.json_schema(schema, opts)
  local gbnf, err = grammar.from_schema(schema, opts)
  if not gbnf then error(err, 2) end
  return M.grammar(gbnf, opts)
end

local adders = {
  greedy = function(h) return C.lm_sampler_add_greedy(h) end,
  dist = function(h) return C.lm_sampler_add_dist(h) end,
  temperature = function(h, a) return C.lm_sampler_add_temperature(h, a[1]) end,
  top_k = function(h, a) return C.lm_sampler_add_top_k(h, a[1]) end,
  top_p = function(h, a) return C.lm_sampler_add_top_p(h, a[1], a[2]) end,
  min_p = function(h, a) return C.lm_sampler_add_min_p(h, a[1], a[2]) end,
  typical = function(h, a) return C.lm_sampler_add_typical(h, a[1], a[2]) end,
  grammar = function(h, a, spec)
    local model = a[2] or spec.model
    if not model then error("sampler.grammar: the link needs the model: sampler.grammar(gbnf, {model = m}) or sampler.chain{..., model = m}", 4) end
    return C.lm_sampler_add_grammar(h, a[1], grammar.trie(model))
  end,
  penalties = function(h, a) return C.lm_sampler_add_penalties(h, a[1], a[2], a[3], a[4]) end,
  logit_bias = function(h, a)
    local ids, vals, n = {}, {}, 0
    for id, v in pairs(a[1]) do
      if type(id) ~= "number" or type(v) ~= "number" then error("logit_bias: keys must be token ids and values numbers", 4) end
      n = n + 1
      ids[n], vals[n] = id, v
    end
    local ci, cv = ffi.new("int32_t[?]", n + 1, ids), ffi.new("float[?]", n + 1, vals)
    return C.lm_sampler_add_logit_bias(h, ci, cv, n)
  end,
}

--- Builds a chain from links (array part) and options (seed).
function M.chain(spec)
  util.check_type("sampler.chain", "spec", spec, "table")
  local seed = spec.seed or util.random_seed()
  util.check_type("sampler.chain", "seed", seed, "number")
  local h = C.lm_sampler_chain_new(seed)
  if h == nil then util.c_error("sampler") end
  ffi.gc(h, C.lm_sampler_free)
  local self = setmetatable({ h = h, lua = {}, seed = seed }, Chain)
  for i, l in ipairs(spec) do
    if type(l) == "function" then
      if C.lm_sampler_add_external(h) ~= 0 then util.c_error("sampler") end
      self.lua[C.lm_sampler_n_links(h) - 1] = l
    elseif type(l) == "table" and adders[l.kind] then
      if adders[l.kind](h, l.args, spec) ~= 0 then util.c_error("sampler link " .. i .. " (" .. l.kind .. ")", 2) end
    else
      error("sampler.chain: link " .. i .. " is neither a sampler link nor a function", 2)
    end
  end
  self.n_links = C.lm_sampler_n_links(h)
  self.has_lua = next(self.lua) ~= nil
  self.ctx = { softmax = nil }
  return self
end

--- The standard chain from a table of settings (the keys of configs/models.yaml's
-- `sampling`): temperature (0 = greedy), top_k, top_p, min_p, typical_p,
-- repeat_penalty, frequency_penalty, presence_penalty, penalty_last_n, seed.
function M.from_config(cfg)
  cfg = cfg or {}
  util.check_type("sampler.from_config", "settings", cfg, "table")
  local p = ffi.new("lm_sampler_params", C.lm_sampler_default_params())
  local fields = { "temperature", "top_k", "top_p", "min_p", "typical_p", "repeat_penalty",
                   "frequency_penalty", "presence_penalty", "penalty_last_n" }
  for _, k in ipairs(fields) do
    local v = cfg[k]
    if v ~= nil then
      if type(v) ~= "number" then error("sampling setting '" .. k .. "' must be a number, got " .. type(v), 2) end
      p[k] = v
    end
  end
  local seed = cfg.seed or util.random_seed()
  p.seed = seed
  if cfg.logit_bias ~= nil or cfg.grammar ~= nil then
    -- the same chain as lm_sampler_new builds, behind a logit-bias link, with the
    -- grammar (cfg.grammar: a link from sampler.grammar / sampler.json_schema, with
    -- its model) just before the cuts: masking and editing logits commute, and a
    -- grammar right before top-k needs only the k best allowed tokens
    local links = { seed = seed }
    local function add(l) links[#links + 1] = l end
    if cfg.grammar ~= nil and (type(cfg.grammar) ~= "table" or cfg.grammar.kind ~= "grammar") then
      error("sampler.from_config: grammar must be a link from sampler.grammar or sampler.json_schema", 2)
    end
    if cfg.logit_bias ~= nil then
      util.check_type("sampler.from_config", "logit_bias", cfg.logit_bias, "table")
      add(M.logit_bias(cfg.logit_bias))
    end
    if p.repeat_penalty ~= 1 or p.frequency_penalty ~= 0 or p.presence_penalty ~= 0 then
      add(M.penalties{ last_n = p.penalty_last_n, repeat_penalty = p.repeat_penalty,
                       frequency = p.frequency_penalty, presence = p.presence_penalty })
    end
    if cfg.grammar ~= nil then add(cfg.grammar) end
    if not (p.temperature > 0) then
      add(M.greedy())
    else
      if p.top_k > 0 then add(M.top_k(p.top_k)) end
      if p.typical_p < 1 then add(M.typical(p.typical_p)) end
      if p.top_p < 1 then add(M.top_p(p.top_p)) end
      if p.min_p > 0 then add(M.min_p(p.min_p)) end
      add(M.temperature(p.temperature))
      add(M.dist())
    end
    return M.chain(links)
  end
  local h = C.lm_sampler_new(p)
  if h == nil then util.c_error("sampler", 2) end
  ffi.gc(h, C.lm_sampler_free)
  return setmetatable({ h = h, lua = {}, has_lua = false, seed = seed, n_links = C.lm_sampler_n_links(h), ctx = {} }, Chain)
end

--- The default chain (from_config with no settings).
function M.default() return M.from_config(nil) end

--- Sampling settings merged (lumen.util.merge_settings: the one place where
-- the model's defaults and a command line's or request's settings merge).
M.merge = util.merge_settings

--- A chain from a model's registry defaults with overrides on top.
function M.for_model(model, overrides)
  return M.from_config(M.merge(model.entry and model.entry.sampling, overrides))
end

--- Picks a token from a session's logits (or a float pointer and n_vocab).
function Chain:sample(src, n_vocab)
  local logits
  if type(src) == "table" and src.logits_ptr then
    logits, n_vocab = src:logits_ptr(), src.n_vocab
  elseif type(src) == "cdata" then
    logits = src
    if type(n_vocab) ~= "number" then error("sample: n_vocab is needed with a pointer", 2) end
  else
    error("sample: expected a session or a float pointer, got " .. type(src), 2)
  end
  if not self.has_lua then
    local t = C.lm_sampler_sample(self.h, logits, n_vocab)
    if t < 0 then util.c_error("sample", 2) end
    return t
  end
  local h = self.h
  local c = C.lm_sampler_begin(h, logits, n_vocab)
  if c == nil then util.c_error("sample", 2) end
  local ctx = self.ctx
  local nh = ffi.new("int32_t[1]")
  ctx.history = C.lm_sampler_history(h, nh)
  ctx.n_history = nh[0]
  ctx.session = type(src) == "table" and src or nil
  ctx.softmax = ctx.softmax or function() C.lm_candidates_softmax(c) end
  local i = C.lm_sampler_run(h, 0)
  while i < self.n_links do
    local pick = self.lua[i](c, ctx)
    if pick ~= nil then
      if type(pick) ~= "number" or pick < 0 or pick >= n_vocab then
        error("sampler: a Lua link returned " .. tostring(pick) .. ", not a token id", 2)
      end
      C.lm_sampler_set_result(h, pick)
      break
    end
    if c.n < 1 then error("sampler: a Lua link removed every candidate", 2) end
    i = C.lm_sampler_run(h, i + 1)
  end
  local t = C.lm_sampler_result(h)
  if t < 0 then util.c_error("sample", 2) end
  return t
end

--- Records a generated token (for the penalties' history and a grammar's state).
function Chain:accept(tok) C.lm_sampler_accept(self.h, tok) end

--- The first grammar link's state: "open", "may_end", "complete", "failed"; nil without one.
function Chain:status()
  local m = C.lm_sampler_matcher(self.h)
  if m == nil then return nil end
  return grammar.STATUS[tonumber(C.lm_matcher_status(m))]
end

--- One token for each of n sessions (of one model) from its chain, all in one
-- call on the model's threads: out[0 .. n) (an int32 cdata array). Chains with
-- Lua links cannot go (sample them one by one); sbuf and hbuf, when given, are
-- reused lm_sampler*[] / lm_session*[] arrays of at least n.
function M.sample_sessions(chains, sessions, out, sbuf, hbuf)
  local n = #chains
  if n == 0 or #sessions ~= n then error("sample_sessions: " .. n .. " chains for " .. #sessions .. " sessions", 2) end
  sbuf = sbuf or ffi.new("lm_sampler*[?]", n)
  hbuf = hbuf or ffi.new("lm_session*[?]", n)
  for i = 1, n do
    local ch, s = chains[i], sessions[i]
    if getmetatable(ch) ~= Chain then error("sample_sessions: chains[" .. i .. "] is not a sampler", 2) end
    if ch.has_lua then error("sample_sessions: chains[" .. i .. "] has Lua links; sample it alone", 2) end
    if type(s) ~= "table" or s.h == nil then error("sample_sessions: sessions[" .. i .. "] is not an open session", 2) end
    sbuf[i - 1], hbuf[i - 1] = ch.h, s.h
  end
  if C.lm_sessions_sample(sbuf, hbuf, n, out) ~= 0 then util.c_error("sample_sessions", 2) end
end

--- Clears the history and re-seeds (same seed: the same draws again).
function Chain:reset(seed) C.lm_sampler_reset(self.h, seed or self.seed) end

--- The accepted tokens, as a Lua array.
function Chain:history()
  local n = ffi.new("int32_t[1]")
  local p = C.lm_sampler_history(self.h, n)
  local out = {}
  for i = 0, n[0] - 1 do out[i + 1] = p[i] end
  return out
end

M.Chain = Chain
return M
