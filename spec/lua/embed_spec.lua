local lumen = require "lumen"
local ffi = require "ffi"

-- all-MiniLM-L6-v2 (scripts/test.sh fetches it: scripts/fetch_model.py minilm minilm-gguf)
local model
local function minilm()
  model = model or lumen.model.load("minilm")
  return model
end

local function norm(t, row)
  local s = 0
  for j = 1, t:dim(2) do s = s + t:get(row, j) ^ 2 end
  return math.sqrt(s)
end

describe("embeddings", function()
  it("describe the encoder: family, limit, pooling", function()
    local info = minilm():info()
    assert.equal("bert", info.arch)
    assert.equal("bert", info.family)
    assert.is_true(info.encoder)
    assert.equal(384, info.n_embd)
    assert.equal(256, info.max_tokens)
    assert.equal("mean", info.pooling)
    assert.is_true(info.normalize)
  end)

  it("embed a batch of texts into an [n, dim] tensor in C memory, with token counts", function()
    local e, counts = minilm():embed({ "A man is eating food.", "Hello world", "" })
    assert.same({ 3, 384 }, e:shape())
    assert.same({ 8, 4, 2 }, counts)
    for r = 1, 3 do assert.near(1, norm(e, r), 1e-5) end
    -- the same text alone gives the same vector as in the batch
    local one = minilm():embed("Hello world")
    assert.near(1, one:slice(1, 1, 1):cosine(e:slice(1, 2, 2)), 1e-6)
  end)

  it("take token ids (with [CLS] and [SEP]) as well as text", function()
    local ids = minilm():tokenize("Hello world", { add_special = true })
    assert.same({ 101, 7592, 2088, 102 }, ids)
    local a = minilm():embed({ ids })
    local b = minilm():embed({ "Hello world" })
    assert.near(1, a:cosine(b), 1e-6)
  end)

  it("refuse a text over the limit when asked not to cut, naming the limit", function()
    local long = string.rep("word ", 400)
    local ok, err = pcall(function() return minilm():embed({ "short", long }, { truncate = false }) end)
    assert.is_false(ok)
    assert.truthy(tostring(err):find("text 1 has 402 tokens; the model takes at most 256", 1, true))
    local _, counts = minilm():embed({ long })
    assert.same({ 256 }, counts)
  end)

  it("pool by [CLS] and skip the normalization on request", function()
    local e = minilm():embed({ "Hello world" }, { pooling = "cls", normalize = false })
    assert.is_true(math.abs(norm(e, 1) - 1) > 1e-3)
    assert.has_error(function() minilm():embed({ "x" }, { pooling = "max" }) end)
  end)

  it("give the same vectors from the GGUF as from the directory", function()
    local g = lumen.model.load("minilm-gguf")
    local a = g:embed({ "Tokyo 東京 café 🙂" })
    local b = minilm():embed({ "Tokyo 東京 café 🙂" })
    assert.near(1, a:cosine(b), 1e-6)
  end)

  it("are refused by a decoder model and a decoder session by an encoder", function()
    local ok, err = pcall(function() return require("helper").model():embed({ "x" }) end)
    assert.is_false(ok)
    assert.truthy(tostring(err):find("not an embedding model", 1, true))
    ok, err = pcall(function() return minilm():session() end)
    assert.is_false(ok)
    assert.truthy(tostring(err):find("encoder", 1, true))
  end)
end)

describe("lumen embed", function()
  local bin = os.getenv("LUMEN_BIN") or "build/lumen"

  local function run(cmd)
    local p = io.popen(cmd .. " 2>/tmp/lumen_embed_spec.err; echo \"rc=$?\"")
    local out = p:read("*a")
    p:close()
    local rc = tonumber(out:match("rc=(%d+)%s*$"))
    local f = io.open("/tmp/lumen_embed_spec.err")
    local err = f:read("*a")
    f:close()
    return out:gsub("rc=%d+%s*$", ""), rc, err
  end

  it("writes one JSON line per text of stdin, in order", function()
    local out, rc = run("printf 'first text\\nsecond text\\n' | " .. bin .. " embed -m minilm")
    assert.equal(0, rc)
    local cjson = require "cjson"
    local n = 0
    for line in out:gmatch("[^\n]+") do
      local obj = cjson.decode(line)
      assert.equal(n, obj.index)
      assert.equal(384, #obj.embedding)
      n = n + 1
    end
    assert.equal(2, n)
  end)

  it("takes -p and prints --help", function()
    local out, rc = run(bin .. " embed -m minilm-gguf -p 'one' -p 'two'")
    assert.equal(0, rc)
    assert.equal(2, select(2, out:gsub("\n", "")))
    out, rc = run(bin .. " embed --help")
    assert.equal(0, rc)
    assert.truthy(out:find("usage: lumen embed", 1, true))
  end)

  it("fails with one line naming the problem on a missing or broken model", function()
    local _, rc, err = run(bin .. " embed -m /nonexistent/model-dir -p x")
    assert.equal(2, rc)
    assert.truthy(err:find("/nonexistent/model-dir", 1, true))
    os.execute("mkdir -p /tmp/lumen_embed_spec_dir && printf '{\"model_type\": \"bert\"}' > /tmp/lumen_embed_spec_dir/config.json"
      .. " && printf 'garbage' > /tmp/lumen_embed_spec_dir/model.safetensors")
    _, rc, err = run(bin .. " embed -m /tmp/lumen_embed_spec_dir -p x")
    assert.equal(2, rc)
    assert.truthy(err:find("model.safetensors", 1, true))
    os.execute("rm -rf /tmp/lumen_embed_spec_dir")
    _, rc, err = run(bin .. " embed -m minilm --no-truncate -p '" .. string.rep("word ", 300) .. "'")
    assert.equal(2, rc)
    assert.truthy(err:find("at most 256", 1, true))
  end)
end)
