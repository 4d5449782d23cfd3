-- Retrieval quality of `lumen rag` on a real corpus that every Debian machine
-- has: the license texts of /usr/share/common-licenses and libffi's HTML manual
-- (/usr/share/doc/libffi8/html). The questions are ours, each with the file(s)
-- that answer it; recall@k is the share of questions with an answering file
-- among the top k chunks, for vector-only, BM25-only and hybrid retrieval.
--   build/lumen run bench/rag_recall.lua [-k 5] [--db /tmp/rag_recall.db] [--vectors f32|i8]
local ingest = require "lumen.ingest"
local rag = require "rag"
local chat = require "lumen.chat"

local QUESTIONS = {
  { "If I start a patent lawsuit over the work, do I lose my patent license?", { "Apache-2.0" } },
  { "What must a redistribution in binary form reproduce?", { "BSD" } },
  { "How do I waive all my copyright and dedicate a work to the public domain?", { "CC0-1.0" } },
  { "What are Invariant Sections and Cover Texts of a manual?", { "GFDL-1.2", "GFDL-1.3" } },
  { "Which license keeps the Copyright Holder's artistic control while letting a Package be copied?", { "Artistic" } },
  { "Does the license protect users from anti-circumvention laws like DRM rules?", { "GPL-3" } },
  { "Must I give installation information when I ship the software in a consumer product?", { "GPL-3", "LGPL-3" } },
  { "Can a proprietary program be linked with the library?", { "LGPL-2", "LGPL-2.1", "LGPL-3" } },
  { "What is a Larger Work that combines Covered Software with other material?", { "MPL-2.0" } },
  { "What is Commercial Use, Original Code and a Modification in Netscape's license?", { "MPL-1.1" } },
  { "Why is it called the Lesser license and when should a library use it?", { "LGPL-2.1" } },
  { "the GNU Library General Public License of June 1991", { "LGPL-2" } },
  { "the first version of the GNU General Public License from February 1989", { "GPL-1" } },
  { "If I stop violating the license, are my rights reinstated?", { "GPL-3", "MPL-2.0", "LGPL-3" } },
  { "How do I describe the signature of the function to call with an ffi_cif?", { "The-Basics" } },
  { "How do I pass a struct by value and describe its members?", { "Structures" } },
  { "How do I create a closure with ffi_closure_alloc and ffi_prep_closure_loc?", { "The-Closure-API", "Closure-Example" } },
  { "Can libffi pass complex numbers?", { "Complex", "Complex-Type-Example" } },
  { "Is libffi safe to use from several threads?", { "Thread-Safety" } },
  { "How are unions, arrays and enums handled?", { "Arrays-Unions-Enums" } },
  { "What does libffi not support yet?", { "Missing-Features" } },
  { "How do I find the size and alignment of a type at run time?", { "Size-and-Alignment" } },
  { "How do I select another calling convention or ABI?", { "Multiple-ABIs" } },
  { "Does closure memory come from malloc?", { "Memory-Usage" } },
  { "Show a simple example that calls puts through libffi", { "Simple-Example" } },
  { "Which primitive ffi_type values exist, like ffi_type_uint8?", { "Primitive-Types" } },
}

local args = { ... }
local k, db, vectors = 5, "/tmp/lumen_rag_recall.db", "f32"
for i = 1, #args do
  if args[i] == "-k" then k = tonumber(args[i + 1]) end
  if args[i] == "--db" then db = args[i + 1] end
  if args[i] == "--vectors" then vectors = args[i + 1] end
end

-- the corpus: both folders, copied under one root so one index holds them
local root = os.tmpname()
os.remove(root)
assert(os.execute(string.format("mkdir -p %s && cp -rL /usr/share/common-licenses %s/licenses && cp -r /usr/share/doc/libffi8/html %s/libffi", root, root, root)) == 0)
for _, ext in ipairs{ "", "-wal", "-shm" } do os.remove(db .. ext) end
local r = ingest.index(root, db, { vectors = vectors, quiet = true })
io.stderr:write(string.format("indexed %d files, %d chunks in %.1f s\n", r.indexed, r.chunks, r.seconds))

local function answers(path, want)
  local base = path:match("([^/]+)$"):gsub("%.html$", "")
  for _, w in ipairs(want) do if base == w then return true end end
  return false
end

local st, embed = rag.open(db)
local out = {}
for _, mode in ipairs{ "vector", "bm25", "hybrid" } do
  local hit, t0 = 0, chat.now()
  for _, q in ipairs(QUESTIONS) do
    local found = false
    for _, h in ipairs(st:search(q[1], { k = k, mode = mode, embed = embed })) do
      if answers(h.path, q[2]) then found = true end
    end
    if found then hit = hit + 1 end
  end
  out[#out + 1] = string.format('"%s": {"recall_at_%d": %.3f, "found": %d, "questions": %d, "ms_per_query": %.1f}',
                                mode, k, hit / #QUESTIONS, hit, #QUESTIONS, (chat.now() - t0) * 1000 / #QUESTIONS)
end
io.write("{", table.concat(out, ", "), string.format(', "chunks": %d, "vectors": "%s"}\n', r.chunks, vectors))
os.execute("rm -rf " .. root)
