--- Grammars (llama.cpp's GBNF) and JSON Schemas as constraints on generation.
--   local grammar = require "lumen.grammar"
--   local g, err = grammar.compile('root ::= "yes" | "no"')   -- nil, "grammar:1:5: ..." on error
--   local gbnf, err = grammar.from_schema{ type = "object", ... }  -- nil, message on error
--   local m = grammar.matcher(g, model)     -- one parse state over the model's tokens
--   local bits, n = m:allowed()             -- uint32 bitset of the n_vocab tokens allowed next
--   m:accept(token); m:status()             -- "open", "may_end", "complete" or "failed"
-- Errors are values here (for a server's 400); lumen.sampler.grammar and
-- lumen.sampler.json_schema raise them instead.
local ffi = require "ffi"
local bit = require "bit"
local C = require "lumen.ffi"
local util = require "lumen.util"

local M = {}

local STATUS = { [0] = "open", "may_end", "complete", "failed" }
M.STATUS = STATUS

--- GBNF text -> a compiled grammar (cdata, freed by the GC), or nil and the message.
function M.compile(gbnf, root)
  if type(gbnf) ~= "string" then return nil, "grammar: expected GBNF text, got " .. type(gbnf) end
  if root ~= nil and type(root) ~= "string" then return nil, "grammar: the root rule name must be a string" end
  local g = C.lm_grammar_new(gbnf, #gbnf, root)
  if g == nil then return nil, util.last_error() end
  return ffi.gc(g, C.lm_grammar_free)
end

--- A JSON Schema (a Lua table, as lua-cjson decodes it) -> GBNF text, or nil and
-- the message. "json_object" (or {type = "object"} with nothing else) allows any
-- JSON object. See lumen.json_schema for what is supported.
function M.from_schema(schema, opts)
  return require("lumen.json_schema").to_gbnf(schema, opts)
end

--- The model's token trie, built once per model (a few ms) and shared.
function M.trie(model)
  if type(model) ~= "table" or model.h == nil then error("grammar: a loaded model is needed (lumen.model.load())", 3) end
  if not model._token_trie then
    local t = C.lm_token_trie_new(model.h)
    if t == nil then util.c_error("token trie", 3) end
    model._token_trie = ffi.gc(t, C.lm_token_trie_free)
  end
  return model._token_trie
end

local Matcher = {}
Matcher.__index = Matcher

--- A parse state of g over the model's tokens (model nil: for text only).
function M.matcher(g, model)
  if type(g) == "string" then
    local err
    g, err = M.compile(g)
    if not g then error(err, 2) end
  end
  local t = model and M.trie(model) or nil
  local h = C.lm_matcher_new(g, t)
  if h == nil then util.c_error("matcher", 2) end
  return setmetatable({ h = ffi.gc(h, C.lm_matcher_free), g = g, n_vocab = t and C.lm_token_trie_n_vocab(t) or 0,
                        _n = ffi.new("int32_t[1]") }, Matcher)
end

--- The tokens allowed next: a uint32_t* bitset (token t is bit t % 32 of word
-- t / 32; valid until the next call) and how many there are.
function Matcher:allowed()
  local bits = C.lm_matcher_allowed(self.h, self._n)
  if bits == nil then util.c_error("allowed", 2) end
  return bits, self._n[0]
end

--- Whether token t is allowed in a bitset from allowed().
function M.has(bits, t) return bit.band(bit.rshift(bits[bit.rshift(t, 5)], bit.band(t, 31)), 1) == 1 end

--- Advances by a token; false and the message when it does not fit.
function Matcher:accept(tok)
  if C.lm_matcher_accept(self.h, tok) ~= 0 then return false, util.last_error() end
  return true
end

--- Advances by the bytes of s (no model needed); false and the message when they do not fit.
function Matcher:accept_text(s)
  if C.lm_matcher_accept_text(self.h, s, #s) ~= 0 then return false, util.last_error() end
  return true
end

--- "open", "may_end", "complete" or "failed".
function Matcher:status() return STATUS[tonumber(C.lm_matcher_status(self.h))] end
--- Back to the grammar's start.
function Matcher:reset() C.lm_matcher_reset(self.h) end

--- Whether the whole text s is a complete string of grammar g (compiled or GBNF).
function M.matches(g, s)
  local m = M.matcher(g)
  if not m:accept_text(s) then return false end
  local st = m:status()
  return st == "may_end" or st == "complete"
end

--- Drops the candidates c (a Lua link's first argument) whose bit is clear: one
-- C call however many candidates there are. Returns how many are left.
function M.keep(c, bits) return C.lm_candidates_keep(c, bits) end

--- A zeroed bitset for n_vocab tokens (for a Lua link's own mask) and its words.
function M.bitset(n_vocab)
  local words = math.floor((n_vocab + 31) / 32)
  return ffi.new("uint32_t[?]", words), words
end

--- Marks in bits every token whose piece is a non-empty prefix of s (see
-- lm_token_trie_mark_prefixes); returns how many it marked.
function M.mark_prefixes(model, s, bits)
  return C.lm_token_trie_mark_prefixes(M.trie(model), s, #s, bits)
end

M.Matcher = Matcher
return M
