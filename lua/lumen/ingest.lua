--- `lumen rag index`: a folder of documents into a store. Each file is read
-- (lumen.readers), cut into token chunks (lumen.chunker), embedded in batches
-- and written with its chunks and vectors in ONE transaction, so a killed run
-- leaves every file either whole or absent and the next run finishes the job.
-- A file whose content hash is already in the store is skipped; files gone
-- from the folder are dropped; a file that cannot be read is reported and
-- skipped.
local ffi = require "ffi"
local config = require "lumen.config"
local readers = require "lumen.readers"
local chunker = require "lumen.chunker"
local store_mod = require "lumen.store"
local chat = require "lumen.chat"

pcall(ffi.cdef, "int isatty(int fd);")

local M = {}

local function progress(tty, st, final)
  local elapsed = chat.now() - st.t0
  local rate = elapsed > 0 and st.chunks / elapsed or 0
  local done = st.done + st.skipped + st.failed
  local eta = done > 0 and (st.total - done) * elapsed / done or 0
  if tty then
    local w = 30
    local fill = st.total > 0 and math.floor(w * done / st.total) or w
    io.stderr:write(string.format("\r[%s%s] %d/%d files  %d chunks  %.1f chunks/s  ETA %ds  %s",
      string.rep("#", fill), string.rep(".", w - fill), done, st.total, st.chunks, rate, math.floor(eta),
      final and "\n" or ""))
  else
    io.stderr:write(string.format('{"files_done":%d,"files_total":%d,"chunks":%d,"chunks_per_s":%.1f,"failed":%d,"eta_s":%d}\n',
      done, st.total, st.chunks, rate, st.failed, math.floor(eta)))
  end
end

--- Indexes dir into the store at db. opts: embed_model, vectors, max_tokens,
-- overlap, batch (texts per embedding call), quiet.
-- Returns a summary {files, indexed, unchanged, removed, failed, chunks, seconds}.
function M.index(dir, db, opts)
  opts = opts or {}
  dir = dir:gsub("/+$", "")
  if dir == "" then dir = "/" end
  local files = readers.list_files(dir)
  local st = store_mod.open(db, { embed_model = opts.embed_model, vectors = opts.vectors })
  local enc = require("lumen.model").load(st.embed_model, { threads = opts.threads })
  local info = enc:info()
  if not info.encoder then error(st.embed_model .. " is not an embedding model", 0) end
  local max = opts.max_tokens or math.min(200, (info.max_tokens or 256) - 2)
  local count = function(s) local _, n = enc:_encode(s, false, false) return n end
  local have = st:documents()
  local prefix = dir .. "/"
  local on_disk = {}
  local s = { total = 0, done = 0, skipped = 0, failed = 0, removed = 0, chunks = 0, t0 = chat.now() }
  local todo = {}
  for _, rel in ipairs(files) do
    if readers.kind(rel) then todo[#todo + 1] = prefix .. rel; on_disk[prefix .. rel] = true end
  end
  s.total = #todo
  for path in pairs(have) do
    if path:sub(1, #prefix) == prefix and not on_disk[path] then st:remove_document(path); s.removed = s.removed + 1 end
  end
  local tty = not opts.quiet and ffi.C.isatty(2) == 1
  local last = 0
  for _, path in ipairs(todo) do
    local hash = config.sha256(path)
    if have[path] and have[path].hash == hash then
      s.skipped = s.skipped + 1
    else
      local ok, err = pcall(function()
        local text = readers.read(path)
        local chunks = chunker.split(text, count, { max_tokens = max, overlap = opts.overlap or 32 })
        local texts = {}
        for i, c in ipairs(chunks) do texts[i] = c.text end
        local dim = info.n_embd
        local vec = ffi.new("float[?]", math.max(#texts, 1) * dim)
        local batch = opts.batch or 64
        for i = 1, #texts, batch do
          local part = {}
          for j = i, math.min(i + batch - 1, #texts) do part[#part + 1] = texts[j] end
          local e = enc:embed(part)
          ffi.copy(vec + (i - 1) * dim, e:data(), #part * dim * 4)
        end
        st:put_document(path, hash, #text, nil, chunks, vec, dim)
        s.chunks = s.chunks + #chunks
      end)
      if ok then s.done = s.done + 1
      else
        s.failed = s.failed + 1
        if tty then io.stderr:write("\n") end
        io.stderr:write("lumen: skipped ", tostring(err), "\n")
      end
    end
    if not opts.quiet and (tty or chat.now() - last > 5) then
      last = chat.now()
      progress(tty, s, false)
    end
  end
  if not opts.quiet then progress(tty, s, true) end
  local docs, chunks = st:counts()
  st:close()
  return { files = s.total, indexed = s.done, unchanged = s.skipped, removed = s.removed, failed = s.failed,
           chunks = s.chunks, documents = docs, total_chunks = chunks, seconds = chat.now() - s.t0 }
end

return M
