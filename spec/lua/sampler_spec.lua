local lumen = require "lumen"
local sampler = lumen.sampler
local helper = require "helper"
local ffi = require "ffi"

local function logits_of(t)
  local n = #t
  local buf = ffi.new("float[?]", n, t)
  return buf, n
end

describe("lumen.sampler", function()
  local buf, n = logits_of({ 1, 5, 3, 4.9, 0 })

  it("picks the argmax greedily", function()
    assert.equal(1, sampler.chain{ sampler.greedy() }:sample(buf, n))
  end)

  it("runs Lua links that edit the candidates", function()
    local ban = function(c) for i = 0, c.n - 1 do if c.ids[i] == 1 then c.logits[i] = -1e9 end end end
    assert.equal(3, sampler.chain{ ban, sampler.greedy() }:sample(buf, n))
  end)

  it("lets a Lua link pick the token", function()
    assert.equal(4, sampler.chain{ function() return 4 end, sampler.greedy() }:sample(buf, n))
    assert.error_matches(function() sampler.chain{ function() return 99 end }:sample(buf, n) end, "not a token id")
  end)

  it("gives Lua links the history and the softmax", function()
    local seen
    local s = sampler.chain{ sampler.top_k(3), function(c, ctx)
      ctx.softmax()
      seen = { n = c.n, hist = ctx.n_history, p0 = c.probs[0], id0 = c.ids[0] }
    end, sampler.greedy() }
    s:accept(2)
    s:accept(3)
    s:sample(buf, n)
    assert.equal(3, seen.n)
    assert.equal(2, seen.hist)
    assert.equal(1, seen.id0)
    assert.is_true(seen.p0 > 0.3 and seen.p0 < 0.6)
    assert.same({ 2, 3 }, s:history())
  end)

  it("draws the same tokens for the same seed", function()
    local b, m = logits_of({ 1, 1.1, 0.9, 1.05, 1 })
    local function draws(seed)
      local s = sampler.chain{ sampler.temperature(1), sampler.dist(), seed = seed }
      local out = {}
      for i = 1, 20 do out[i] = s:sample(b, m) end
      return table.concat(out, ",")
    end
    assert.equal(draws(1), draws(1))
    assert.are_not.equal(draws(1), draws(2))
  end)

  it("puts a logit bias in front of the standard chain from settings", function()
    assert.equal(0, sampler.from_config{ temperature = 0, logit_bias = { [0] = 10 } }:sample(buf, n))
    assert.are_not.equal(0, sampler.from_config{ temperature = 0 }:sample(buf, n))
    -- sampled: a large negative bias never draws the banned token
    local s = sampler.from_config{ temperature = 1, top_k = 0, seed = 7, logit_bias = { [3] = -100 } }
    for _ = 1, 50 do assert.are_not.equal(3, s:sample(buf, n)) end
  end)

  it("applies logit bias, penalties and cuts", function()
    assert.equal(0, sampler.chain{ sampler.logit_bias{ [0] = 10 }, sampler.greedy() }:sample(buf, n))
    local s = sampler.chain{ sampler.penalties{ repeat_penalty = 2, last_n = 8 }, sampler.greedy() }
    s:accept(1)
    assert.equal(3, s:sample(buf, n))
    local t = sampler.chain{ sampler.top_k(2), sampler.temperature(5), sampler.dist(), seed = 3 }
    for _ = 1, 50 do local x = t:sample(buf, n) assert.is_true(x == 1 or x == 3) end
    for _, l in ipairs{ sampler.min_p(0.5), sampler.top_p(0.5), sampler.typical(0.5) } do
      assert.is_number(sampler.chain{ l, sampler.dist(), seed = 1 }:sample(buf, n))
    end
  end)

  it("refuses bad links and settings", function()
    assert.error_matches(function() sampler.chain{ 42 } end, "link 1 is neither")
    assert.error_matches(function() sampler.chain{ sampler.top_p(2) } end, "top_p must be in")
    assert.error_matches(function() sampler.chain{ sampler.temperature(-1) } end, "temperature")
    assert.error_matches(function() sampler.from_config{ top_k = "many" } end, "top_k.*must be a number")
    assert.error_matches(function() sampler.chain{ sampler.greedy() }:sample("x") end, "expected a session")
  end)

  it("samples from a session's logits", function()
    local model = helper.model()
    local s = model:session{ ctx = 64 }
    s:eval(model:tokenize("The capital of France is"))
    assert.equal(" Paris", model:piece(sampler.chain{ sampler.greedy() }:sample(s)))
  end)

  it("samples many sessions at once on the model's threads, as one by one", function()
    local model = helper.model()
    local prompts = { "The capital of France is", "Once upon a time", "1, 2, 3,", "def main():", "Hello", "The sky is" }
    local sessions = {}
    for i, p in ipairs(prompts) do
      sessions[i] = model:session{ ctx = 32 }
      sessions[i]:eval(model:tokenize(p))
    end
    local function chains(seed)
      local t = {}
      for i = 1, #prompts do t[i] = sampler.from_config{ temperature = 0.9, top_k = 40, top_p = 0.95, seed = seed + i } end
      return t
    end
    local together, alone = chains(7), chains(7)
    local out = ffi.new("int32_t[?]", #prompts)
    local differs = false
    for _ = 1, 20 do
      sampler.sample_sessions(together, sessions, out)
      for i = 1, #prompts do
        local t = alone[i]:sample(sessions[i])
        assert.equal(t, out[i - 1])
        differs = differs or out[i - 1] ~= out[0]
      end
    end
    assert.is_true(differs, "the sessions drew different tokens")
    assert.error_matches(function() sampler.sample_sessions({ together[1], together[1] }, { sessions[1], sessions[2] }, out) end,
                         "share a sampler")
    assert.error_matches(function() sampler.sample_sessions({ sampler.chain{ function() end, sampler.greedy() } }, { sessions[1] }, out) end,
                         "Lua links")
    assert.error_matches(function() sampler.sample_sessions({ together[1] }, { sessions[1], sessions[2] }, out) end, "chains for")
    for _, s in ipairs(sessions) do s:close() end
  end)
end)

describe("a chain that masks every token", function()
  local lumen = require "lumen"
  local ffi = require "ffi"
  local logits = ffi.new("float[8]", { 1, 2, 3, 4, 5, 6, 7, 8 })
  local function mask_all(c) for i = 0, c.n - 1 do c.logits[i] = -math.huge end end

  it("raises a clear error instead of returning a token", function()
    for _, tail in ipairs{ { lumen.sampler.greedy() }, { lumen.sampler.temperature(0.8), lumen.sampler.dist() }, {} } do
      local links = { mask_all }
      for _, l in ipairs(tail) do links[#links + 1] = l end
      links.seed = 1
      local chain = lumen.sampler.chain(links)
      local ok, err = pcall(chain.sample, chain, logits, 8)
      assert.is_false(ok)
      assert.truthy(tostring(err):find("finite logit"), tostring(err))
    end
  end)

  it("still samples when one token is left", function()
    local chain = lumen.sampler.chain{ function(c) for i = 0, c.n - 2 do c.logits[i] = -math.huge end end,
                                       lumen.sampler.dist(), seed = 3 }
    local t = chain:sample(logits, 8)
    assert.is_number(t)
  end)
end)
