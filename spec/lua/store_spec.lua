-- The retrieval store's parts that need no embedding model: chunking, FTS5
-- search, reciprocal rank fusion, the SQLite binding's errors.
local chunker = require "lumen.chunker"
local store = require "lumen.store"
local sqlite = require "lumen.sqlite"
local ffi = require "ffi"

local function words(s) local n = 0 for _ in s:gmatch("%S+") do n = n + 1 end return n end

describe("lumen.chunker", function()
  local text = "First sentence here. Second one follows! A third? Yes.\n\nA new paragraph starts. It ends."

  it("cuts only between sentences and keeps byte offsets", function()
    local chunks = chunker.split(text, words, { max_tokens = 8, overlap = 0 })
    assert.is_true(#chunks >= 2)
    for _, c in ipairs(chunks) do
      assert.equal(c.text, text:sub(c.byte_start, c.byte_end))
      assert.is_true(words(c.text) <= 8)
      assert.truthy(c.text:match("[%.!?]$"), c.text)
    end
  end)

  it("repeats whole sentences of the previous chunk as overlap", function()
    local chunks = chunker.split(text, words, { max_tokens = 8, overlap = 4 })
    local overlapped = 0
    for i = 2, #chunks do
      if chunks[i].byte_start <= chunks[i - 1].byte_end then overlapped = overlapped + 1 end
      assert.is_true(chunks[i].byte_end > chunks[i - 1].byte_end, "every chunk brings new text")
    end
    assert.is_true(overlapped > 0)
  end)

  it("cuts a sentence longer than a chunk between words", function()
    local long = ("word "):rep(50) .. "end."
    local chunks = chunker.split(long, words, { max_tokens = 10, overlap = 0 })
    assert.is_true(#chunks >= 5)
    for _, c in ipairs(chunks) do assert.is_true(words(c.text) <= 10) end
    assert.equal(51, words(table.concat((function() local t = {} for i, c in ipairs(chunks) do t[i] = c.text end return t end)(), " ")))
  end)

  it("handles empty text and CJK sentences", function()
    assert.same({}, chunker.split("", words, { max_tokens = 8 }))
    local cjk = chunker.split("今天天气很好。我们去公园散步吧。", function(s) return #s end, { max_tokens = 30, overlap = 0 })
    assert.equal(2, #cjk)
  end)
end)

describe("lumen.store", function()
  local path = os.tmpname()
  os.remove(path)
  local st = store.open(path, { embed_model = "test", vectors = "f32" })
  local vec = ffi.new("float[2][4]", { { 1, 0, 0, 0 }, { 0, 1, 0, 0 } })
  st:put_document("a.txt", "h1", 10, nil, { { text = "kestrels hunt voles in fields" }, { text = "crows build nests" } }, ffi.cast("float*", vec), 4)
  st:put_document("b.txt", "h2", 10, nil, { { text = "voles eat grass" } }, ffi.cast("float*", vec), 4)

  it("finds chunks by keywords (BM25) and survives operator words", function()
    local hits = st:search("kestrels voles", { mode = "bm25", k = 2 })
    assert.equal(2, #hits)
    assert.equal("a.txt", hits[1].path)
    assert.same({}, st:search_bm25("\"", 5))
    assert.is_table(st:search_bm25("NOT AND OR ( ) * kestrels", 5))
  end)

  it("replaces a document whole and drops its chunks from FTS", function()
    st:put_document("a.txt", "h3", 10, nil, { { text = "nothing about birds" } }, ffi.cast("float*", vec), 4)
    assert.same({}, st:search_bm25("kestrels", 5))
    local d, c = st:counts()
    assert.equal(2, d)
    assert.equal(2, c)
    st:remove_document("b.txt")
    assert.same({}, st:search_bm25("grass", 5))
  end)

  it("refuses vectors of another width", function()
    assert.has_error(function() st:put_document("c.txt", "h", 1, nil, { { text = "x" } }, ffi.new("float[8]"), 8) end)
  end)

  it("fuses rankings by reciprocal rank", function()
    local fused = store.fuse({ { { id = 1 }, { id = 2 } }, { { id = 2 }, { id = 3 } } }, { 1, 1 })
    assert.equal(2, fused[1].id) -- in both lists
    local only_bm25 = store.fuse({ { { id = 1 } }, { { id = 3 } } }, { 0, 1 })
    assert.equal(3, only_bm25[1].id)
  end)

  it("names the file of a database that is not one", function()
    local bad = os.tmpname()
    local f = io.open(bad, "w") f:write(("not a database "):rep(100)) f:close()
    local ok, err = pcall(store.open, bad, { readonly = true })
    assert.is_false(ok)
    assert.truthy(tostring(err):find(bad, 1, true))
    os.remove(bad)
  end)

  it("errors from SQLite name the database", function()
    local db = sqlite.open(os.tmpname())
    local ok, err = pcall(db.exec, db, "SELEKT 1")
    assert.is_false(ok)
    assert.truthy(tostring(err):find("syntax error"))
  end)
end)
