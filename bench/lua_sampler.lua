-- The decode loop of `lumen generate` with a sampler whose temperature link is
-- written in Lua (top-k in C, temperature in Lua, the draw in C): the cost of a
-- Lua-written sampler, measured by bench/lua_overhead.sh.
--   build/lumen run bench/lua_sampler.lua PROMPT N_TOKENS SEED
local lumen = require "lumen"
local chat = require "lumen.chat"
local prompt, n, seed = arg[1] or "Once upon a time", tonumber(arg[2] or 128), tonumber(arg[3] or 1)

local temperature = 0.8
local chain = lumen.sampler.chain{
  lumen.sampler.top_k(40),
  function(c)
    local inv = 1 / temperature
    for i = 0, c.n - 1 do c.logits[i] = c.logits[i] * inv end
  end,
  lumen.sampler.dist(),
  seed = seed,
}
local model = lumen.model.load()
local buf, np = model:_encode(prompt, true, false)
local s = model:session{ ctx = np + n }
local t0 = chat.now()
s:eval_raw(buf, np)
local t1 = chat.now()
local opts = { sampler = chain, max_tokens = n }
local t_first
for piece in s:generate(opts) do
  t_first = t_first or chat.now()
  io.write(piece)
end
io.write("\n")
local t2 = chat.now()
io.stderr:write(chat.format_stats({ prompt_tokens = np, prompt_s = t1 - t0, tokens = opts.result.tokens,
                                    decode_s = t2 - (t_first or t2), ttft_s = (t_first or t2) - t0 }), "\n")
