--- `lumen generate`: continue a prompt, streaming text to stdout and speed to stderr.
local M = {}

function M.run(o)
  local lumen = require "lumen"
  local chat = require "lumen.chat"
  local model = lumen.model.load(o.model, { threads = o.threads, kv_type = o.kv_type })
  local info = model:info()
  local buf, n = model:_encode(o.prompt, true, false)
  if n == 0 then error("the prompt is empty after tokenization", 0) end
  local ctx = o.ctx or math.min(n + o.n_predict, info.n_ctx_train)
  if n >= ctx then error(string.format("the prompt has %d tokens; it does not fit a context of %d", n, ctx), 0) end
  local session = model:session{ ctx = ctx }
  local sampler = lumen.sampler.for_model(model, o.sampling)

  io.write(o.prompt)
  io.flush()
  local t0 = chat.now()
  session:eval_raw(buf, n)
  for i = 0, n - 1 do sampler:accept(buf[i]) end
  local t1 = chat.now()
  local opts = { sampler = sampler, max_tokens = math.min(o.n_predict, ctx - n) }
  local t_first
  for piece in session:generate(opts) do
    t_first = t_first or chat.now()
    io.write(piece)
    io.flush()
  end
  io.write("\n")
  local t2 = chat.now()
  if o.stats then
    local st = { prompt_tokens = n, prompt_s = t1 - t0, tokens = opts.result.tokens,
                 decode_s = t2 - (t_first or t2), ttft_s = (t_first or t2) - t0 }
    io.stderr:write("\n", chat.format_stats(st, o.threads), "\n")
  end
  return 0
end

return M
