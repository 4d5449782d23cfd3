-- lm_vec_topk / lm_vec_quantize_i8 through the FFI: the calls a RAG store makes.
local ffi = require "ffi"
local C = require "lumen.ffi"

-- n rows of dim floats: row i is all zeros but a 1 at column i % dim, scaled by (i + 1) / n
local function store(n, dim)
  local x = ffi.new("float[?]", n * dim)
  for i = 0, n - 1 do x[i * dim + i % dim] = (i + 1) / n end
  return x
end

describe("lm_vec_topk", function()
  it("returns the k best rows, best first, as 0-based row numbers", function()
    local n, dim, k = 40, 8, 3
    local x, q = store(n, dim), ffi.new("float[?]", dim)
    q[5] = 1
    local ids, scores = ffi.new("int64_t[?]", k), ffi.new("float[?]", k)
    local got = C.lm_vec_topk(x, C.LM_F32, nil, n, dim, q, k, 1, ids, scores)
    assert.equal(3, tonumber(got))
    assert.same({37, 29, 21}, {tonumber(ids[0]), tonumber(ids[1]), tonumber(ids[2])})
    assert.is_true(math.abs(scores[0] - 38 / 40) < 1e-6)
  end)

  it("ranks an int8 store the same way after lm_vec_quantize_i8", function()
    local n, dim, k = 40, 8, 3
    local x, q = store(n, dim), ffi.new("float[?]", dim)
    q[5] = 1
    local x8, sc = ffi.new("int8_t[?]", n * dim), ffi.new("float[?]", n)
    assert.equal(C.LM_OK, C.lm_vec_quantize_i8(x, n, dim, x8, sc))
    local ids, scores = ffi.new("int64_t[?]", k), ffi.new("float[?]", k)
    assert.equal(3, tonumber(C.lm_vec_topk(x8, C.LM_I8, sc, n, dim, q, k, 0, ids, scores)))
    assert.same({37, 29, 21}, {tonumber(ids[0]), tonumber(ids[1]), tonumber(ids[2])})
  end)

  it("returns -1 and a message for bad arguments", function()
    local q = ffi.new("float[4]")
    local ids, scores = ffi.new("int64_t[1]"), ffi.new("float[1]")
    assert.equal(-1, tonumber(C.lm_vec_topk(q, C.LM_F32, nil, 1, 0, q, 1, 1, ids, scores)))
    assert.is_truthy(ffi.string(C.lm_last_error()):find("dim = 0", 1, true))
  end)
end)
