-- A constraint written in Lua: the reply must be one of a fixed list of answers.
-- Each step the link marks the tokens that continue some answer still possible
-- (one C call per answer: the token trie marks every token that is a prefix of
-- the rest of it), allows an end token once an answer is complete, and keeps
-- only those candidates (one C call) before the choice (greedy here).
--   build/lumen run examples/fixed_answers.lua "What is the capital of France?"
local lumen = require "lumen"
local ffi = require "ffi"
local grammar = lumen.grammar
local sampler = lumen.sampler

local answers = { "Paris", "London", "Berlin", "Madrid", "Rome", "I don't know" }
local model = lumen.model.load(os.getenv("LUMEN_MODEL_ALIAS"))
local ends = {}                                   -- the end-of-generation tokens, found once
for t = 0, model.n_vocab - 1 do if model:is_eog(t) then ends[#ends + 1] = t end end
local bits, words = grammar.bitset(model.n_vocab)
local text = ""                                   -- the reply so far

local function one_of(list)
  return function(c)
    ffi.fill(bits, words * 4)
    for _, a in ipairs(list) do
      if a:sub(1, #text) == text then
        if #a == #text then
          for _, t in ipairs(ends) do bits[bit.rshift(t, 5)] = bit.bor(bits[bit.rshift(t, 5)], bit.lshift(1, bit.band(t, 31))) end
        else
          grammar.mark_prefixes(model, a:sub(#text + 1), bits)
        end
      end
    end
    if grammar.keep(c, bits) == 0 then error("no candidate continues an answer") end
  end
end

local chain = sampler.chain{ one_of(answers), sampler.greedy() }
local question = arg[1] or "What is the capital of France?"
local prompt = lumen.chat.render(model, { { role = "user", content = question .. " Answer with the city's name." } })
local session = model:session{ ctx = 512 }
for _ in session:generate{ prompt = prompt, sampler = chain, max_tokens = 16,
                           on_token = function(t) if not model:is_eog(t) then text = text .. model:piece(t) end end } do end
io.write(text, "\n")
