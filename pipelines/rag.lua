--- `lumen rag`: questions answered from your documents, with their sources.
--   retrieve: the question's embedding and its keywords against the store
--             (hybrid: vectors + BM25, fused by reciprocal rank);
--   assemble: numbered sources into the prompt while they fit the context;
--   generate: the chat model answers, citing [n];
--   return:   the answer and the sources, each marked cited or not.
local lumen = require "lumen"
local store_mod = require "lumen.store"
local chat = require "lumen.chat"

local M = {}

local SYSTEM = "Answer the question using only the numbered sources below. Cite the sources you use " ..
  "like [1] or [2][3]. If the sources do not contain the answer, say that you do not know."

--- Opens the store and its embedding model; returns the store and an embed
-- function (text -> float* of the query's vector).
function M.open(db, opts)
  local st = store_mod.open(db, { readonly = true })
  local enc = lumen.model.load(st.embed_model, { threads = opts and opts.threads })
  local keep -- the last query tensor stays alive while its pointer is used
  return st, function(text)
    keep = enc:embed({ text })
    return keep:data()
  end
end

--- The k best chunks for a query: {path, text, score, id}...
-- opts: k, mode ("hybrid" | "vector" | "bm25"), vector_weight, bm25_weight.
function M.search(db, query, opts)
  opts = opts or {}
  local st, embed = M.open(db, opts)
  local hits = st:search(query, { k = opts.k or 5, mode = opts.mode, embed = embed,
                                  vector_weight = opts.vector_weight, bm25_weight = opts.bm25_weight })
  st:close()
  return hits
end

--- The prompt's messages: as many sources as fit in budget tokens, best first.
function M.prompt(model, question, hits, budget)
  local used = {}
  local function messages()
    local parts = {}
    for i, h in ipairs(used) do parts[i] = string.format("[%d] (%s)\n%s", i, h.path, h.text) end
    return { { role = "system", content = SYSTEM },
             { role = "user", content = "Sources:\n\n" .. table.concat(parts, "\n\n") .. "\n\nQuestion: " .. question } }
  end
  for _, h in ipairs(hits) do
    used[#used + 1] = h
    local _, n = model:_encode(chat.render(model, messages(), true), false, true)
    if n > budget then used[#used] = nil break end
  end
  return messages(), used
end

--- Answers a question from the store at db. opts: model (chat model alias or
-- path), k, ctx, max_tokens, sampler, on_piece(text) for streaming.
-- Returns the answer and its sources {n, path, text, score, cited}.
function M.ask(db, question, opts)
  opts = opts or {}
  local hits = M.search(db, question, opts)
  local model = lumen.model.load(opts.model, { threads = opts.threads })
  local ctx = opts.ctx or math.min(4096, model:info().n_ctx_train)
  local max_tokens = opts.max_tokens or 512
  local messages, used = M.prompt(model, question, hits, ctx - max_tokens)
  local conv = chat.conversation(model, { ctx = ctx, max_tokens = max_tokens, sampler = opts.sampler,
                                          system = messages[1].content })
  local answer, stats = conv:say(messages[2].content, opts.on_piece)
  local sources = {}
  for i, h in ipairs(used) do
    sources[i] = { n = i, path = h.path, text = h.text, score = h.score,
                   cited = answer:find("%[" .. i .. "%]") ~= nil }
  end
  return answer, sources, stats
end

return M
