local lumen = require "lumen"
local helper = require "helper"

describe("lumen.model", function()
  local model = helper.model()

  it("describes itself", function()
    local info = model:info()
    assert.equal("llama", info.arch)
    assert.equal(49152, info.n_vocab)
    assert.equal(30, info.n_layer)
    assert.equal(576, info.n_embd)
    assert.truthy(info.chat_template:find("im_start", 1, true))
    assert.equal("<|im_end|>", info.eos_text)
    -- Q4_1/Q8_0 have integer tiles from AVX2 up; the scalar reference has none
    local isa = os.getenv("LUMEN_ISA")
    assert.equal(isa ~= "scalar", info.tiled)
    -- every token through the panels: Q4_1 with AVX-512 VNNI only
    if isa == "scalar" or isa == "avx2" then assert.is_false(info.panels) end
    -- AMX's tiles (a session's prompts from info.amx_prompt tokens) only where LUMEN_ISA does not cap them
    if isa == "scalar" or isa == "avx2" or isa == "avx512" then assert.equal(0, info.amx_prompt) end
  end)

  it("tokenizes and detokenizes back to the same text", function()
    local text = "Hello, world! ünïcödé 你好 🙂\n\tcode(x) = 42"
    local ids = model:tokenize(text)
    assert.is_true(#ids > 5)
    assert.equal(text, model:detokenize(ids))
  end)

  it("parses special tokens only when asked", function()
    assert.same({ 1 }, model:tokenize("<|im_start|>"))
    assert.is_true(#model:tokenize("<|im_start|>", { parse_special = false }) > 1)
    assert.equal(2, model:token("<|im_end|>"))
    assert.is_nil(model:token("no such token text"))
    assert.is_true(model:is_eog(2))
  end)

  it("refuses bad arguments with clear errors", function()
    assert.has_error(function() model:tokenize(42) end, "tokenize: text must be a string, got number")
    assert.error_matches(function() lumen.model.load("/nonexistent/file.gguf") end, "does not exist")
    assert.error_matches(function() lumen.model.load("no-such-alias") end, "unknown model 'no%-such%-alias'")
    assert.error_matches(function() model:piece(10 ^ 7) end, "piece")
  end)

  it("gives a weight as a tensor that outlives the model", function()
    local m = lumen.model.load()
    local w = m:weight("blk.0.attn_norm.weight")
    assert.same({ 576 }, w:shape())
    local v = w:get(1)
    m = nil
    collectgarbage("collect")
    collectgarbage("collect")
    assert.equal(v, w:get(1))
    assert.error_matches(function() helper.model():weight("nope") end, "no tensor 'nope'")
  end)
end)

describe("the interleaved layer matrices", function()
  local ffi = require "ffi"
  pcall(ffi.cdef, "int setenv(const char *name, const char *value, int overwrite); int unsetenv(const char *name);")
  local function load(interleave)
    if interleave then ffi.C.unsetenv("LUMEN_INTERLEAVE") else ffi.C.setenv("LUMEN_INTERLEAVE", "0", 1) end
    local ok, m = pcall(lumen.model.load)
    ffi.C.unsetenv("LUMEN_INTERLEAVE")
    assert(ok, m)
    return m:wait_layout()
  end
  -- the logits of a prompt (the repacked panels from 16 tokens) and of decode steps
  local function run(m)
    local s = m:session{ ctx = 128 }
    local out = {}
    local ids = m:tokenize("Interleaved rows give the same numbers as the file's rows, bit for bit, on every path.")
    assert.is_true(#ids >= 16)
    out[1] = ffi.string(s:eval(ids):data(), m.n_vocab * 4)
    local tok = 42
    for i = 2, 6 do
      out[i] = ffi.string(s:eval(tok):data(), m.n_vocab * 4)
      tok = s:logits():argmax() - 1
    end
    return out
  end

  it("give the bits of the file's layout, and the file's weights stay readable", function()
    local a, b = load(true), load(false)
    -- SmolLM2's 30 layers x 7 matrices (Q4_1) and its output (the token embeddings, Q8_0), where the CPU has the kernels
    local ia, ib = a:info(), b:info()
    assert.equal(0, ia.interleaving)
    assert.equal(0, ib.interleaved)
    if ia.panels and ia.interleaved == 0 then pending("no interleaved layout on this CPU") end
    assert.equal(211, ia.interleaved)
    local la, lb = run(a), run(b)
    for i = 1, #lb do assert.is_true(la[i] == lb[i], "step " .. i .. " differs") end
    -- the interleaving model dropped the file's pages it copied: a weight view reads them back from the file
    local wa, wb = a:weight("blk.3.ffn_down.weight"), b:weight("blk.3.ffn_down.weight")
    local n = 576 * 1536 / 32 * 20 -- Q4_1: 20 bytes a block of 32
    assert.equal(ffi.string(wb:data(), n), ffi.string(wa:data(), n))
  end)

  it("are swapped in while a session decodes, and a model freed mid-way stops its thread", function()
    for _ = 1, 3 do
      local m = load(true)
      assert.is_true(m:info().interleaved <= 211)
      m = nil
      collectgarbage("collect")
    end
    -- decoding while the thread works: the same tokens as after it is done
    local function greedy(m)
      local s = m:session{ ctx = 64 }
      local out, tok = {}, s:eval(m:tokenize("Once upon a time")):argmax() - 1
      for i = 1, 12 do out[i] = tok; tok = s:eval(tok):argmax() - 1 end
      return table.concat(out, " ")
    end
    ffi.C.unsetenv("LUMEN_INTERLEAVE")
    local early = greedy(lumen.model.load())
    assert.equal(greedy(load(true)), early)
  end)
end)

describe("a session", function()
  local model = helper.model()

  it("evaluates tokens and returns a zero-copy logits view", function()
    local s = model:session{ ctx = 256 }
    local logits = s:eval(model:tokenize("The capital of France is"))
    assert.same({ 49152 }, logits:shape())
    assert.equal(s:pos(), #model:tokenize("The capital of France is"))
    local best = logits:argmax() - 1
    assert.equal(" Paris", model:piece(best))
    -- the same object sees the next eval's logits: it views the session's buffer
    local before = logits:get(best + 1)
    s:eval(best)
    assert.are_not.equal(before, logits:get(best + 1))
  end)

  it("gives the same logits after rewind and re-eval", function()
    local s = model:session{ ctx = 256 }
    local toks = model:tokenize("One two three four five")
    s:eval(toks)
    local first = s:logits():to_table()
    s:eval(model:tokenize(" six seven"))
    -- two tokens again: prompt tokens, as they were (a lone token would go
    -- through the decode kernels)
    s:rewind(#toks - 2)
    s:eval({ toks[#toks - 1], toks[#toks] })
    local again = s:logits():to_table()
    for i = 1, #first, 997 do assert.equal(first[i], again[i]) end
    assert.equal(#toks, s:pos())
    assert.same(toks, s:tokens())
  end)

  it("evaluates a prompt at once as one token at a time: bit for bit on the panels, else to float rounding", function()
    -- Where every layer matrix takes every token through the integer panels
    -- (info.panels: Q4_1 with AVX-512 VNNI), both ways run the same
    -- arithmetic: the same bits at every position, up to info.amx_prompt
    -- tokens where the CPU has AMX (a longer prompt takes its bf16 tiles). Elsewhere a prompt goes
    -- through a GEMM (or tiles), a lone token through the decode kernels: the
    -- same products summed in another order. A rounding change to one activation byte travels
    -- through 30 layers, so the logits differ by tenths, not 1e-5, and by how
    -- much varies with the position: three positions, each within llama.cpp's
    -- own spread between those two ways on this model (spec/fixtures: up to
    -- 1.68; its median over positions 0.28), the top token the same at most.
    local text = string.rep("Quantization maps each weight to a few bits and a shared scale. ", 20)
    local toks = model:tokenize(text)
    local lens = { 120, 160, 200 }
    assert.truthy(#toks >= lens[#lens])
    local single = model:session{ ctx = 256 }
    local medians, same_top, differs, k = {}, 0, 0, 1
    for i = 1, lens[#lens] do
      single:eval(toks[i])
      if i == lens[k] then
        local once = model:session{ ctx = 256 }
        local p = {}
        for j = 1, i do p[j] = toks[j] end
        once:eval(p)
        local a, b = once:logits_ptr(), single:logits_ptr()
        local d = {}
        for v = 0, model:info().n_vocab - 1 do d[#d + 1] = math.abs(a[v] - b[v]) end
        table.sort(d)
        medians[k] = d[math.floor(#d / 2)]
        print(string.format("prompt of %d at once vs one at a time: |logit diff| median %.5f max %.5f", i, medians[k], d[#d]))
        assert.truthy(d[#d] < 1.68, "max |logit diff| " .. d[#d])
        local amx = model:info().amx_prompt
        if model:info().panels and (amx == 0 or i < amx) then assert.equal(0, d[#d], "panels: max |logit diff|") end
        if d[#d] > 0 then differs = differs + 1 end
        if once:logits():argmax() == single:logits():argmax() then same_top = same_top + 1 end
        assert.same(single:tokens(), once:tokens())
        once:close()
        k = k + 1
      end
    end
    table.sort(medians)
    assert.truthy(medians[2] < 0.28 * 1.5, "median |logit diff| over the positions " .. medians[2])
    assert.truthy(same_top >= 2, "top token the same at " .. same_top .. " of 3 positions")
    -- off the panels the two ways differ somewhere (the GEMM from 160 tokens;
    -- AMX's bf16 tiles from info.amx_prompt)
    if not model:info().panels or model:info().amx_prompt > 0 then
      assert.truthy(differs > 0, "no prompt took another path than its tokens one at a time")
    end
  end)

  it("advances sessions in one batch exactly as one at a time", function()
    local prompts = { "The capital of France is", "1, 2, 3, 4,", "def fib(n):", "Once upon a time, in a" }
    local batched, alone = {}, {}
    for i, p in ipairs(prompts) do
      -- different contexts and positions: the workspace is the largest session
      batched[i] = model:session{ ctx = 64 * i, batch = 8 }
      alone[i] = model:session{ ctx = 64 * i, batch = 8 }
      batched[i]:eval(model:tokenize(p))
      alone[i]:eval(model:tokenize(p))
    end
    for step = 1, 3 do
      local toks = {}
      for i = 1, #prompts do toks[i] = alone[i]:logits():argmax() - 1 + step end
      lumen.model.eval_batch(batched, toks)
      for i = 1, #prompts do
        alone[i]:eval(toks[i])
        local a, b = alone[i]:logits_ptr(), batched[i]:logits_ptr()
        for v = 0, model:info().n_vocab - 1 do
          if a[v] ~= b[v] then error(string.format("session %d step %d: logit %d %g ~= %g", i, step, v, a[v], b[v])) end
        end
        assert.equal(alone[i]:pos(), batched[i]:pos())
      end
    end
    assert.same(alone[2]:tokens(), batched[2]:tokens())
  end)

  it("rides a prompt chunk along with decode tokens, exactly as the prompt evaluated whole", function()
    local V = model:info().n_vocab
    local function same(a, b, what)
      local pa, pb = a:logits_ptr(), b:logits_ptr()
      for v = 0, V - 1 do
        if pa[v] ~= pb[v] then error(string.format("%s: logit %d %.9g ~= %.9g", what, v, pa[v], pb[v])) end
      end
      assert.equal(a:pos(), b:pos(), what)
      assert.same(a:tokens(), b:tokens(), what)
    end
    local prompt = model:tokenize("The printing press changed Europe because books became cheap")
    assert.is_true(#prompt >= 9)
    -- batch = 8 on the largest session: the pass is cut in the middle of the prompt's entries
    local opts = { ctx = 96, batch = 8 }
    local a, b, c = model:session(opts), model:session{ ctx = 64 }, model:session{ ctx = 64 }
    local a1, b1, c1 = model:session(opts), model:session{ ctx = 64 }, model:session{ ctx = 64 }
    local a2 = model:session(opts)
    for _, s in ipairs({ b, c, b1, c1 }) do s:eval(model:tokenize("Once upon a time")) end
    a:eval(7) a1:eval(7) a2:eval(7)
    local sessions, toks = { b }, { b:logits():argmax() }
    for i = 1, #prompt do sessions[#sessions + 1], toks[#toks + 1] = a, prompt[i] end
    sessions[#sessions + 1], toks[#toks + 1] = c, c:logits():argmax()
    lumen.model.eval_batch(sessions, toks)
    b1:eval(toks[1])
    for i = 1, #prompt do a1:eval(prompt[i]) end
    c1:eval(toks[#toks])
    a2:eval(prompt) -- as `lumen generate` evaluates a prompt
    same(a2, a, "prompt chunk")
    same(b1, b, "decode before the chunk")
    same(c1, c, "decode after the chunk")
    -- fed one token at a time: the same bits where every token takes the
    -- panels (info.panels) or none does (the tiles are the decode kernel's
    -- bits), else the same to float rounding
    local pa, p1 = a:logits_ptr(), a1:logits_ptr()
    local worst = 0
    for v = 0, V - 1 do worst = math.max(worst, math.abs(pa[v] - p1[v])) end
    if model:info().panels then assert.equal(0, worst, "panels: one token at a time") end
    assert.truthy(worst < 1, "prompt one token at a time: max |logit diff| " .. worst)
    assert.equal(a1:logits():argmax(), a:logits():argmax())
    -- and the next step is a plain decode batch
    lumen.model.eval_batch({ a, b, c }, { 13, 14, 15 })
    a2:eval(13) b1:eval(14) c1:eval(15)
    same(a2, a, "next step a") same(b1, b, "next step b") same(c1, c, "next step c")
  end)

  it("gives a prompt the same bits in pieces of two or more as evaluated whole", function()
    local V = model:info().n_vocab
    local prompt = model:tokenize("Bread rises because yeast turns sugar into gas and alcohol while it proves")
    assert.is_true(#prompt >= 12)
    local whole, pieces, other = model:session{ ctx = 64 }, model:session{ ctx = 64 }, model:session{ ctx = 64 }
    whole:eval(prompt)
    other:eval(model:tokenize("Hello"))
    local at = 0
    for _, n in ipairs{ 3, 2, 5, #prompt - 10 } do
      local sessions, toks = { other }, { other:logits():argmax() - 1 }
      for i = at + 1, at + n do sessions[#sessions + 1], toks[#toks + 1] = pieces, prompt[i] end
      lumen.model.eval_batch(sessions, toks)
      at = at + n
    end
    local a, b = whole:logits_ptr(), pieces:logits_ptr()
    for v = 0, V - 1 do
      if a[v] ~= b[v] then error(string.format("logit %d %.9g ~= %.9g", v, a[v], b[v])) end
    end
    assert.same(whole:tokens(), pieces:tokens())
  end)

  it("refuses a bad batch with a clear error", function()
    local a, b = model:session{ ctx = 16 }, model:session{ ctx = 16 }
    assert.error_matches(function() lumen.model.eval_batch({ a, b, a }, { 1, 2, 3 }) end, "must be adjacent")
    local before = a:pos()
    local ss, ts = { b }, { 1 }
    for i = 1, 17 do ss[i + 1], ts[i + 1] = a, 2 end -- 17 tokens for a 16-token context
    assert.error_matches(function() lumen.model.eval_batch(ss, ts) end, "context full")
    assert.equal(before, a:pos()) -- nothing evaluated
    assert.equal(0, b:pos())
    assert.error_matches(function() lumen.model.eval_batch({ a, b }, { 1 }) end, "2 sessions but 1 tokens")
    assert.error_matches(function() lumen.model.eval_batch({ a }, { -1 }) end, "outside the vocabulary")
    for _ = 1, 16 do a:eval(28) end
    assert.error_matches(function() lumen.model.eval_batch({ a }, { 1 }) end, "context full")
    b:close()
    assert.error_matches(function() lumen.model.eval_batch({ b }, { 1 }) end, "closed")
  end)

  it("forks an independent copy", function()
    local s = model:session{ ctx = 128 }
    s:eval(model:tokenize("Once upon a time"))
    local f = s:fork()
    assert.equal(s:pos(), f:pos())
    f:eval(model:tokenize(" there"))
    assert.equal(s:pos() + 1, f:pos())
    assert.same(s:logits():argmax(), s:fork():logits():argmax())
  end)

  it("saves and restores its state", function()
    local path = os.tmpname()
    local s = model:session{ ctx = 128 }
    s:eval(model:tokenize("Saving state works"))
    s:save(path)
    local r = model:session{ ctx = 128 }
    r:load(path)
    assert.same(s:tokens(), r:tokens())
    s:eval(13)
    r:eval(13)
    assert.equal(s:logits():argmax(), r:logits():argmax())
    assert.equal(s:logits():get(100), r:logits():get(100))
    local f = io.open(path, "wb") f:write("garbage") f:close()
    assert.error_matches(function() r:load(path) end, "not a lumen session state")
    assert.equal(s:pos(), r:pos()) -- a failed load changes nothing
    os.remove(path)
  end)

  it("keeps K and V as q8_0 when asked: logits near the f16 cache's, forks and states of its own type", function()
    local ids = model:tokenize("The lighthouse keeper climbed the stairs and counted the steps one by one")
    local a, b = model:session{ ctx = 128 }, model:session{ ctx = 128, kv_type = "q8_0" }
    assert.equal("f16", a:kv_type())
    assert.equal("q8_0", b:kv_type())
    a:eval(ids) b:eval(ids)
    for _, t in ipairs({ 13, 260, 1345 }) do a:eval(t) b:eval(t) end -- decode steps over the cache
    -- close, but not the same computation: int8 K and V move the logits a little (SmolLM2 against
    -- llama.cpp with its own q8_0 cache: cosine 0.993-1.0 per position, as f16 against f16)
    local la, lb = a:logits(), b:logits()
    local dot, na, nb, diff = 0, 0, 0, 0
    for i = 1, model.n_vocab do
      local x, y = la:get(i), lb:get(i)
      dot, na, nb, diff = dot + x * y, na + x * x, nb + y * y, math.max(diff, math.abs(x - y))
    end
    assert.is_true(dot / math.sqrt(na * nb) > 0.98, "cosine " .. dot / math.sqrt(na * nb))
    assert.is_true(diff > 0, "a q8_0 cache that gives the f16 cache's very bits is not q8_0")
    assert.equal("q8_0", b:fork():kv_type())
    local path = os.tmpname()
    b:save(path)
    local r = model:session{ ctx = 128, kv_type = "q8_0" }
    r:load(path)
    b:eval(13) r:eval(13)
    assert.equal(b:logits():get(100), r:logits():get(100))
    assert.error_matches(function() a:load(path) end, "holds a q8_0 KV cache; this session's is f16")
    os.remove(path)
    local m8 = lumen.model.load(model.path, { kv_type = "q8_0" })
    assert.equal("q8_0", m8:session{ ctx = 16 }:kv_type())
    assert.equal("f16", m8:session{ ctx = 16, kv_type = "f16" }:kv_type())
    assert.error_matches(function() model:session{ kv_type = "q4_0" } end, 'kv_type must be "f16" or "q8_0", got q4_0')
  end)

  it("refuses a context overflow, bad tokens and closed sessions", function()
    local s = model:session{ ctx = 8 }
    assert.error_matches(function() s:eval(model:tokenize("one two three four five six seven eight nine ten")) end, "context full")
    assert.error_matches(function() s:eval({ 49152 }) end, "outside the vocabulary")
    assert.error_matches(function() s:eval({ "x" }) end, "token 1 is a string")
    assert.error_matches(function() s:rewind(5) end, "outside")
    s:close()
    assert.error_matches(function() s:eval(1) end, "closed")
  end)

  it("keeps the model alive while a session lives", function()
    local m = lumen.model.load()
    local s = m:session{ ctx = 64 }
    m = nil
    collectgarbage("collect")
    collectgarbage("collect")
    assert.equal(49152, s:eval(1):numel())
  end)

  it("creates and drops many sessions and tensors without growing", function()
    for _ = 1, 50 do model:session{ ctx = 64 } end
    collectgarbage("collect")
    local before = helper.rss_kb()
    for _ = 1, 10000 do
      local s = model:session{ ctx = 16 }
      s:logits()
      lumen.tensor.zeros({ 8, 8 })
    end
    collectgarbage("collect")
    collectgarbage("collect")
    local after = helper.rss_kb()
    assert.is_true(after - before < 20 * 1024, ("RSS grew by %d KiB"):format(after - before))
  end)
end)

describe("generation", function()
  local model = helper.model()

  it("streams text pieces and stops at a stop string", function()
    local s = model:session{ ctx = 256 }
    local opts = { prompt = "1, 2, 3, 4,", max_tokens = 30, sampler = lumen.sampler.chain{ lumen.sampler.greedy() }, stop = { " 8" } }
    local text = {}
    for piece in s:generate(opts) do text[#text + 1] = piece end
    local out = table.concat(text)
    assert.equal(" 5, 6, 7,", out)
    assert.equal("stop", opts.result.reason)
  end)

  it("gives the same text for the same seed", function()
    local function run(seed)
      local s = model:session{ ctx = 256 }
      local chain = lumen.sampler.from_config{ temperature = 1.0, top_k = 50, seed = seed }
      local out = {}
      for p in s:generate{ prompt = "Write a story:", max_tokens = 24, sampler = chain } do out[#out + 1] = p end
      return table.concat(out)
    end
    assert.equal(run(5), run(5))
    assert.are_not.equal(run(5), run(6))
  end)

  it("ends at max_tokens with reason 'length'", function()
    local s = model:session{ ctx = 256 }
    local opts = { prompt = "Hello", max_tokens = 3, sampler = lumen.sampler.chain{ lumen.sampler.greedy() } }
    for _ in s:generate(opts) do end
    assert.equal(3, opts.result.tokens)
    assert.equal("length", opts.result.reason)
  end)
end)

describe("lumen.util.utf8_sanitize", function()
  local util = require "lumen.util"
  it("replaces each ill-formed part with one U+FFFD, as Python's errors='replace' does", function()
    local R = "\xef\xbf\xbd"
    local cases = {
      { "plain ascii", "plain ascii" }, { "ok \xe2\x82\xac \xf0\x9f\x98\x80", "ok \xe2\x82\xac \xf0\x9f\x98\x80" },
      { "a\x8eb", "a" .. R .. "b" },          -- a stray continuation byte
      { "\xe2\x82", R },                      -- a character cut short at the end
      { "\xe2\x82a", R .. "a" },              -- ... or in the middle
      { "\xc0\x80", R .. R },                 -- an overlong NUL
      { "\xed\xa0\x80", R .. R .. R },        -- a UTF-16 surrogate
      { "\xf0\x9f\x98", R }, { "\xf5\x80", R .. R }, { "", "" },
    }
    for _, c in ipairs(cases) do assert.equal(c[2], util.utf8_sanitize(c[1])) end
    local long = string.rep("\x8e", 5000)
    assert.equal(string.rep(R, 5000), util.utf8_sanitize(long))
  end)
end)
