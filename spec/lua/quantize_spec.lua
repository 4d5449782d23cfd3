local lumen = require "lumen"
local C = require "lumen.ffi"
local util = require "lumen.util"
local helper = require "helper"

describe("lumen quantize", function()
  local src = helper.model().path

  it("requantizes the weights and keeps the model working", function()
    local out = os.tmpname() .. ".gguf"
    assert.equal(0, C.lm_quantize_file(src, out, C.lm_dtype_from_name("q8_0"), 2))
    local m = lumen.model.load(out)
    assert.equal("q8_0", m:weight("blk.0.ffn_up.weight"):dtype())
    assert.equal("f32", m:weight("blk.0.attn_norm.weight"):dtype())
    assert.same(helper.model():tokenize("Hello there"), m:tokenize("Hello there"))
    local s = m:session{ ctx = 64 }
    s:eval(m:tokenize("The capital of France is"))
    assert.equal(" Paris", m:piece(s:logits():argmax() - 1))
    s:close()
    m = nil
    collectgarbage("collect")
    os.remove(out)
  end)

  it("refuses unknown types, missing inputs and leaves no partial file", function()
    local out = os.tmpname() .. ".gguf"
    assert.equal(-1, C.lm_quantize_file(src, out, C.lm_dtype_from_name("q8_k"), 1))
    assert.truthy(util.last_error():find("cannot quantize to q8_k", 1, true))
    assert.equal(-1, C.lm_quantize_file("/nonexistent.gguf", out, C.lm_dtype_from_name("q8_0"), 1))
    assert.truthy(util.last_error():find("/nonexistent.gguf", 1, true))
    assert.is_false(util.file_exists(out))
    assert.is_false(util.file_exists(out .. ".part"))
  end)
end)
