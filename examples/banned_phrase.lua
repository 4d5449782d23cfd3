-- A banned-phrase sampler: when the text produced so far ends with a banned
-- phrase, rewind the session to where the phrase began and ban the token that
-- started it there, then continue. The KV cache is rewound, not recomputed.
--   build/lumen run examples/banned_phrase.lua "Tell me about the ocean."
local lumen = require "lumen"
local sampler = lumen.sampler

local banned = { "ocean", "Ocean" }
local model = lumen.model.load(os.getenv("LUMEN_MODEL_ALIAS"))
local session = model:session{ ctx = 1024 }

-- bans[pos] = {token = true}: tokens not allowed at that position
local bans = {}
local chain = sampler.chain{
  function(c, ctx)
    local here = bans[ctx.session:pos()]
    if not here then return end
    for i = 0, c.n - 1 do
      if here[c.ids[i]] then c.logits[i] = -math.huge end
    end
  end,
  sampler.top_k(40), sampler.temperature(0.7), sampler.dist(),
  seed = 11,
}

local prompt = lumen.chat.render(model, { { role = "user", content = arg[1] or "Tell me about the ocean." } })
local buf, n = model:_encode(prompt, false, true)
session:eval_raw(buf, n)
local start = session:pos()
local out = {}            -- out[i] = {token=, text=, pos=} for each generated token
local text = ""
local rewinds = 0
while #out < 120 do
  local pos = session:pos()
  local tok = chain:sample(session)
  if model:is_eog(tok) then break end
  out[#out + 1] = { token = tok, text = model:piece(tok), pos = pos }
  text = text .. out[#out].text
  session:eval(tok)
  for _, phrase in ipairs(banned) do
    local at = text:find(phrase, 1, true)
    if at then
      -- find the generated token where the phrase starts, rewind to it, ban it there
      local len = 0
      for i, o in ipairs(out) do
        if len + #o.text >= at then
          bans[o.pos] = bans[o.pos] or {}
          bans[o.pos][o.token] = true
          session:rewind(o.pos)
          for j = #out, i, -1 do out[j] = nil end
          break
        end
        len = len + #o.text
      end
      -- the logits at the rewound position come back with the next eval of the
      -- previous token: re-evaluate it
      local last = session:pos() - 1
      local prev = session:tokens()[last + 1]
      session:rewind(last)
      session:eval(prev)
      text = ""
      for _, o in ipairs(out) do text = text .. o.text end
      rewinds = rewinds + 1
      break
    end
  end
end
io.write(text, "\n")
io.stderr:write(string.format("(%d rewinds, %d tokens)\n", rewinds, session:pos() - start))
