--- A retrieval store in one SQLite file: documents (path, content hash, metadata),
-- their chunks (text, token span, byte offsets in the document's text), one
-- vector per chunk (f32, or int8 with a scale) and an FTS5 index for BM25.
--   local st = store.open("docs.db", { embed_model = "minilm" })
--   st:put_document(path, hash, meta, chunks, vectors)   -- one transaction
--   local hits = st:search("how do I ...", { k = 5 })    -- hybrid: vectors + BM25, fused
-- Search is exact: the vectors are read into memory once (and again after a
-- change) and scanned by the C kernel (lm_vec_topk); BM25 is SQLite's FTS5. The
-- two rankings are fused by reciprocal rank fusion, each with its weight.
local ffi = require "ffi"
local C = require "lumen.ffi"
local sqlite = require "lumen.sqlite"
local util = require "lumen.util"

local M = {}
local Store = {}
Store.__index = Store

local SCHEMA = [[
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents(
  id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, hash TEXT NOT NULL, size INTEGER NOT NULL,
  meta TEXT, indexed_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS chunks(
  id INTEGER PRIMARY KEY, doc_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
  seq INTEGER NOT NULL, text TEXT NOT NULL, tok_start INTEGER, tok_end INTEGER,
  byte_start INTEGER, byte_end INTEGER, vec BLOB NOT NULL, scale REAL);
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks(doc_id);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(text, content='chunks', content_rowid='id',
  tokenize='unicode61 remove_diacritics 2');
CREATE TRIGGER IF NOT EXISTS chunks_ai AFTER INSERT ON chunks BEGIN
  INSERT INTO chunks_fts(rowid, text) VALUES (new.id, new.text); END;
CREATE TRIGGER IF NOT EXISTS chunks_ad AFTER DELETE ON chunks BEGIN
  INSERT INTO chunks_fts(chunks_fts, rowid, text) VALUES ('delete', old.id, old.text); END;
]]

--- Opens or creates a store. opts: embed_model (recorded on creation; an
-- existing store keeps its own), dim, vectors ("f32" | "i8"), readonly.
function M.open(path, opts)
  opts = opts or {}
  if opts.readonly and not util.file_exists(path) then
    error(string.format("no index at '%s' (create one with: lumen rag index DIR --db %s)", path, path), 2)
  end
  local db = sqlite.open(path, { readonly = opts.readonly })
  local self = setmetatable({ db = db, path = path }, Store)
  if not opts.readonly then db:exec(SCHEMA) end
  local ok, err = pcall(function()
    for row in db:rows("SELECT key, value FROM meta") do self[row.key] = row.value end
  end)
  if not ok then error(string.format("'%s' is not a lumen index: %s", path, tostring(err)), 2) end
  if not self.embed_model then
    if opts.readonly then error(string.format("'%s' is not a lumen index (no meta)", path), 2) end
    self.embed_model = opts.embed_model or "minilm"
    self.vectors = opts.vectors or "f32"
    if self.vectors ~= "f32" and self.vectors ~= "i8" then error("store: vectors must be \"f32\" or \"i8\"", 2) end
    db:tx(function()
      db:run("INSERT INTO meta(key, value) VALUES ('embed_model', ?), ('vectors', ?), ('schema', '1')",
             self.embed_model, self.vectors)
    end)
  end
  self.dim = tonumber(self.dim)
  return self
end

--- Closes the database.
function Store:close() self.db:close() end

--- The indexed documents: path -> {id, hash, size}.
function Store:documents()
  local out = {}
  for r in self.db:rows("SELECT id, path, hash, size FROM documents") do out[r.path] = r end
  return out
end

--- How many documents and chunks the store holds.
function Store:counts()
  local d = self.db:one("SELECT count(*) AS n FROM documents").n
  local c = self.db:one("SELECT count(*) AS n FROM chunks").n
  return d, c
end

-- a vector row as stored: f32 bytes, or int8 bytes + scale
local function pack(self, vec, dim, i)
  local row = vec + (i - 1) * dim
  if self.vectors == "i8" then
    local q, sc = ffi.new("int8_t[?]", dim), ffi.new("float[1]")
    if C.lm_vec_quantize_i8(row, 1, dim, q, sc) ~= 0 then util.c_error("store") end
    return { blob = q, len = dim }, sc[0]
  end
  return { blob = row, len = dim * 4 }, nil
end

--- Replaces a document and its chunks in one transaction. chunks: {text,
-- tok_start, tok_end, byte_start, byte_end}...; vectors: a float* (or an [n, dim]
-- f32 tensor) with one row per chunk.
function Store:put_document(path, hash, size, meta, chunks, vectors, dim)
  local vec = type(vectors) == "cdata" and vectors or vectors:data()
  if self.dim and dim ~= self.dim then
    error(string.format("%s: vectors of %d dims, but the index holds %d (another embedding model?)", self.path, dim, self.dim), 2)
  end
  local db = self.db
  db:tx(function()
    db:run("DELETE FROM documents WHERE path = ?", path)
    local _, doc_id = db:run("INSERT INTO documents(path, hash, size, meta, indexed_at) VALUES (?, ?, ?, ?, ?)",
                             path, hash, size, meta, os.time())
    for i, c in ipairs(chunks) do
      local blob, scale = pack(self, vec, dim, i)
      db:run("INSERT INTO chunks(doc_id, seq, text, tok_start, tok_end, byte_start, byte_end, vec, scale) " ..
             "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", doc_id, i, c.text, c.tok_start, c.tok_end, c.byte_start, c.byte_end,
             blob, scale)
    end
    if not self.dim then
      db:run("INSERT OR REPLACE INTO meta(key, value) VALUES ('dim', ?)", tostring(dim))
    end
  end)
  self.dim = dim
  self.matrix = nil
end

--- Drops a document with its chunks, vectors and FTS entries (one transaction).
function Store:remove_document(path)
  self.db:tx(function() self.db:run("DELETE FROM documents WHERE path = ?", path) end)
  self.matrix = nil
end

--- Every chunk's vector in one contiguous C matrix (rows in chunk id order).
function Store:load_matrix()
  if self.matrix then return self.matrix end
  local _, n = self:counts()
  local dim = self.dim or 0
  local i8 = self.vectors == "i8"
  local m = { n = n, dim = dim, ids = ffi.new("int64_t[?]", math.max(n, 1)),
              rows = ffi.new(i8 and "int8_t[?]" or "float[?]", math.max(n * dim, 1)),
              scales = i8 and ffi.new("float[?]", math.max(n, 1)) or nil }
  local k = 0
  local row_bytes = dim * (i8 and 1 or 4)
  for r in self.db:rows("SELECT id, vec, scale FROM chunks ORDER BY id") do
    if #r.vec ~= row_bytes then error(string.format("%s: chunk %d has a vector of %d bytes, not %d", self.path, r.id, #r.vec, row_bytes), 2) end
    ffi.copy(ffi.cast("char*", m.rows) + k * row_bytes, r.vec, row_bytes)
    m.ids[k] = r.id
    if i8 then m.scales[k] = r.scale end
    k = k + 1
  end
  m.n = k
  self.matrix = m
  return m
end

--- Chunk ids and scores of the k nearest vectors (inner product).
function Store:search_vectors(query, k)
  local m = self:load_matrix()
  if m.n == 0 then return {} end
  local q = type(query) == "cdata" and query or query:data()
  local ids, scores = ffi.new("int64_t[?]", k), ffi.new("float[?]", k)
  local got = C.lm_vec_topk(m.rows, self.vectors == "i8" and C.LM_I8 or C.LM_F32, m.scales, m.n, m.dim, q, k, 0, ids, scores)
  if got < 0 then util.c_error("store") end
  local out = {}
  for i = 0, tonumber(got) - 1 do out[#out + 1] = { id = tonumber(m.ids[ids[i]]), score = scores[i] } end
  return out
end

--- FTS5's query language from plain words: each word quoted, any may match
-- (so a question's punctuation or an operator word never breaks the query).
local function fts_query(text)
  local words = {}
  for w in text:gmatch("[%w\128-\255]+") do words[#words + 1] = '"' .. w:gsub('"', '""') .. '"' end
  return table.concat(words, " OR ")
end

--- Chunk ids and BM25 scores (higher is better) of the k best keyword matches.
function Store:search_bm25(text, k)
  local q = fts_query(text)
  if q == "" then return {} end
  local out = {}
  for r in self.db:rows("SELECT rowid AS id, -bm25(chunks_fts) AS score FROM chunks_fts WHERE chunks_fts MATCH ? " ..
                        "ORDER BY bm25(chunks_fts) LIMIT ?", q, k) do
    out[#out + 1] = r
  end
  return out
end

--- Reciprocal rank fusion: score = sum over lists of weight / (rrf_k + rank).
function M.fuse(lists, weights, rrf_k)
  rrf_k = rrf_k or 60
  local score = {}
  for li, list in ipairs(lists) do
    for rank, hit in ipairs(list) do
      score[hit.id] = (score[hit.id] or 0) + (weights[li] or 1) / (rrf_k + rank)
    end
  end
  local out = {}
  for id, s in pairs(score) do out[#out + 1] = { id = id, score = s } end
  table.sort(out, function(a, b) if a.score ~= b.score then return a.score > b.score end return a.id < b.id end)
  return out
end

--- The chunks of ids with their document's path, in the order given.
function Store:chunks(hits)
  local out = {}
  for _, h in ipairs(hits) do
    local r = self.db:one("SELECT c.id, c.text, c.seq, c.byte_start, c.byte_end, d.path FROM chunks c " ..
                          "JOIN documents d ON d.id = c.doc_id WHERE c.id = ?", h.id)
    if r then r.score = h.score; out[#out + 1] = r end
  end
  return out
end

--- Hybrid search. opts: k (5), mode ("hybrid" | "vector" | "bm25"),
-- vector_weight / bm25_weight (1, 1), candidates (k * 4 from each side),
-- embed: function(text) -> query vector (float*), needed unless mode = "bm25".
function Store:search(text, opts)
  opts = opts or {}
  local k = opts.k or 5
  local mode = opts.mode or "hybrid"
  local cand = opts.candidates or math.max(k * 4, 20)
  local lists, weights = {}, {}
  if mode ~= "bm25" then
    lists[#lists + 1] = self:search_vectors(opts.embed(text), mode == "vector" and k or cand)
    weights[#weights + 1] = opts.vector_weight or 1
  end
  if mode ~= "vector" then
    lists[#lists + 1] = self:search_bm25(text, mode == "bm25" and k or cand)
    weights[#weights + 1] = opts.bm25_weight or 1
  end
  local hits = #lists == 1 and lists[1] or M.fuse(lists, weights, opts.rrf_k)
  local top = {}
  for i = 1, math.min(k, #hits) do top[i] = hits[i] end
  return self:chunks(top)
end

return M
