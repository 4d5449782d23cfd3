-- An entropy-adaptive temperature, written as a Lua link of a sampler chain.
-- When the model is sure (low entropy) it samples nearly greedily; when it is
-- unsure it samples hotter, up to max_t.
--   build/lumen run examples/entropy_sampler.lua "Write a haiku about the sea."
local lumen = require "lumen"
local sampler = lumen.sampler

local function entropy_temperature(min_t, max_t)
  return function(c, ctx)
    ctx.softmax()                       -- sorts the candidates and fills c.probs
    local h = 0
    for i = 0, c.n - 1 do
      local p = c.probs[i]
      if p > 0 then h = h - p * math.log(p) end
    end
    local t = min_t + (max_t - min_t) * math.min(h / math.log(c.n > 1 and c.n or 2), 1)
    for i = 0, c.n - 1 do c.logits[i] = c.logits[i] / t end
  end
end

local model = lumen.model.load(os.getenv("LUMEN_MODEL_ALIAS"))
local chain = sampler.chain{
  sampler.top_k(50),
  entropy_temperature(0.2, 1.2),
  sampler.dist(),
  seed = 7,
}
local prompt = lumen.chat.render(model, { { role = "user", content = arg[1] or "Write a haiku about the sea." } })
local session = model:session{ ctx = 1024 }
for piece in session:generate{ prompt = prompt, sampler = chain, max_tokens = 96 } do
  io.write(piece)
  io.flush()
end
io.write("\n")
