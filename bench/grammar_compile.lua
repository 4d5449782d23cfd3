-- Compile times: the token trie of the model (once per model), and for every
-- schema of the corpus the JSON Schema -> GBNF conversion (Lua) plus the GBNF
-- compile and the first matcher (C), medians of 21 runs; prints the largest.
--   build/lumen run bench/grammar_compile.lua
local lumen = require "lumen"
local ffi = require "ffi"
local C = require "lumen.ffi"
local js = require "lumen.json_schema"
local grammar = require "lumen.grammar"
local util = require "lumen.util"
ffi.cdef[[ typedef struct { long tv_sec; long tv_nsec; } lm_cc_ts; int clock_gettime(int, lm_cc_ts *); ]]
local ts = ffi.new("lm_cc_ts")
local function now() ffi.C.clock_gettime(1, ts) return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9 end
local function median(t) table.sort(t) return t[math.floor(#t / 2) + 1] end

local model = lumen.model.load(os.getenv("LUMEN_MODEL_ALIAS"))
local tt = {}
for i = 1, 5 do
  local t0 = now()
  local t = C.lm_token_trie_new(model.h)
  tt[i] = now() - t0
  C.lm_token_trie_free(t)
end
io.write(string.format("token trie (%d tokens): %.1f ms (median of 5)\n", model.n_vocab, median(tt) * 1000))
local trie = grammar.trie(model)
local corpus = assert(js.decode(assert(util.read_file("spec/fixtures/json_schemas.json"))))
local rows = {}
for _, e in ipairs(corpus) do
  local gbnf = js.to_gbnf(e.schema)
  if gbnf then
    local conv, comp = {}, {}
    for i = 1, 21 do
      local t0 = now()
      gbnf = js.to_gbnf(e.schema)
      local t1 = now()
      local g = C.lm_grammar_new(gbnf, #gbnf, nil)
      local m = C.lm_matcher_new(g, trie)
      local n = ffi.new("int32_t[1]")
      C.lm_matcher_allowed(m, n)  -- the first mask
      local t2 = now()
      C.lm_matcher_free(m)
      C.lm_grammar_free(g)
      conv[i], comp[i] = t1 - t0, t2 - t1
    end
    rows[#rows + 1] = { name = e.name, bytes = #gbnf, conv = median(conv) * 1000, comp = median(comp) * 1000 }
  end
end
table.sort(rows, function(a, b) return a.bytes > b.bytes end)
for i = 1, math.min(5, #rows) do
  local r = rows[i]
  io.write(string.format("%-20s GBNF %5d bytes: schema -> GBNF %.2f ms, compile + first mask %.2f ms\n", r.name, r.bytes, r.conv, r.comp))
end
