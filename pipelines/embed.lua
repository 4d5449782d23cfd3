--- `lumen embed`: embeddings of texts (one per line on stdin, or -p TEXT) as
-- JSON lines {"index": i, "embedding": [...]}; speed on stderr with --stats.
local M = {}

local util = require "lumen.util"

local function json_line(i, t, row, dim)
  local p = t:data() + (row - 1) * dim
  return string.format('{"index":%d,"embedding":%s}\n', i, util.f32_json(p, dim))
end

function M.run(o)
  local lumen = require "lumen"
  local chat = require "lumen.chat"
  local model = lumen.model.load(o.model, { threads = o.threads })
  local info = model:info()
  if not info.encoder then
    error(string.format("'%s' is a %s model, not an embedding model (try -m minilm)", o.model or "the default model", info.arch), 0)
  end
  local texts = o.prompts
  if #texts == 0 then
    texts = {}
    for line in io.stdin:lines() do texts[#texts + 1] = line end
  end
  local opts = { pooling = o.pooling, normalize = o.normalize, max_tokens = o.max_tokens, truncate = o.truncate }
  local t0, n_tokens, index = chat.now(), 0, 0
  for first = 1, #texts, o.batch do
    local part = {}
    for k = first, math.min(first + o.batch - 1, #texts) do part[#part + 1] = texts[k] end
    local e, counts = model:embed(part, opts)
    local out = {}
    for r = 1, #part do
      out[r] = json_line(index, e, r, info.n_embd)
      index = index + 1
      n_tokens = n_tokens + counts[r]
    end
    io.write(table.concat(out))
  end
  io.flush()
  if o.stats then
    local dt = chat.now() - t0
    io.stderr:write(string.format("embedded %d texts (%d tokens) in %.3f s: %.1f texts/s, %.0f tokens/s\n",
      #texts, n_tokens, dt, #texts / math.max(dt, 1e-9), n_tokens / math.max(dt, 1e-9)))
  end
  return 0
end

return M
