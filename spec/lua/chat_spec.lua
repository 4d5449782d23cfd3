local lumen = require "lumen"
local helper = require "helper"

describe("lumen.chat", function()
  local model = helper.model()

  it("renders the model's own chat template", function()
    local text = lumen.chat.render(model, { { role = "user", content = "Hi" } })
    assert.equal("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
      .. "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", text)
  end)

  it("answers and keeps the conversation in the KV cache", function()
    local conv = lumen.chat.conversation(model, { ctx = 1024, max_tokens = 24,
      sampler = lumen.sampler.chain{ lumen.sampler.greedy() } })
    local pieces = {}
    local reply, st = conv:say("What is 2 + 2?", function(p) pieces[#pieces + 1] = p end)
    assert.equal(reply, table.concat(pieces))
    assert.truthy(reply:find("4", 1, true))
    local _, st2 = conv:say("And 3 + 3?")
    assert.is_true(st2.cached_tokens > st.prompt_tokens, "the second turn reuses the first turn's tokens")
    assert.equal(4, #conv.messages)
    conv:reset()
    assert.equal(0, #conv.messages)
  end)
end)

describe("lumen.config", function()
  it("resolves the default model and checks its pin", function()
    local r = lumen.config.resolve()
    assert.equal("smollm2", r.alias)
    assert.truthy(r.path:find("SmolLM2%-135M%-Instruct%.Q4_1%.gguf$"))
  end)

  it("refuses a file whose hash does not match its pin", function()
    local tmp = os.tmpname()
    local f = io.open(tmp, "wb") f:write("not the model") f:close()
    assert.error_matches(function() lumen.config.verify(tmp, string.rep("0", 64)) end,
      "refusing to load '.*': its sha256 is %x+ but configs/models.yaml pins 0+")
    os.remove(tmp)
    os.remove(tmp .. ".sha256")
  end)
end)
